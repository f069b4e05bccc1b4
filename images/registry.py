"""Read images from an OCI registry with oras-py: resolve a tag, pick a platform, stream blobs.

Nothing is written to local disk: manifests and configs are small and kept in memory, layer
blobs are streamed and verified against their digest and size as they are read.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import re
from collections.abc import Iterator
from typing import Any

import requests
from oras.provider import Registry as OrasRegistry
from pydantic import BaseModel, ConfigDict, Field, SecretStr

from images.errors import (
    ImageError,
    ImageNotFoundError,
    IntegrityError,
    PlatformNotFoundError,
    RegistryError,
    UnsupportedImageError,
)

OCI_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
OCI_INDEX = "application/vnd.oci.image.index.v1+json"
DOCKER_MANIFEST = "application/vnd.docker.distribution.manifest.v2+json"
DOCKER_LIST = "application/vnd.docker.distribution.manifest.list.v2+json"
MANIFEST_TYPES = (OCI_MANIFEST, DOCKER_MANIFEST)
INDEX_TYPES = (OCI_INDEX, DOCKER_LIST)
MAX_MANIFEST_BYTES = 4 << 20  # distribution's own limit for manifests
MAX_CONFIG_BYTES = 16 << 20
DIGEST_RE = re.compile(r"sha256:[0-9a-f]{64}")
LOOPBACK_HOSTS = ("127.0.0.1", "localhost", "[::1]")
_READ = 1 << 20


_ORAS_REQUEST: Any = getattr(OrasRegistry.do_request, "__wrapped__", OrasRegistry.do_request)


class RegistryCredentials(BaseModel):
    """A robot account; the password is a SecretStr and never printed or logged."""

    model_config = ConfigDict(frozen=True)

    username: str
    password: SecretStr


class RegistryAccess(BaseModel):
    """How to talk to registries: credentials per registry host, plain-HTTP hosts."""

    model_config = ConfigDict(frozen=True)

    credentials: dict[str, RegistryCredentials] = Field(default_factory=dict)
    # Hosts spoken to over plain HTTP; loopback hosts always are (the local stack).
    insecure_hosts: list[str] = Field(default_factory=list)

    def is_insecure(self, registry: str) -> bool:
        host = registry.rsplit(":", 1)[0] if not registry.startswith("[") else registry
        return registry in self.insecure_hosts or host in LOOPBACK_HOSTS


class Platform(BaseModel):
    """`os/architecture[/variant]`, as in `linux/amd64` or `linux/arm64/v8`."""

    model_config = ConfigDict(frozen=True)

    os: str
    architecture: str
    variant: str | None = None

    @classmethod
    def parse(cls, text: str) -> Platform:
        parts = text.split("/")
        if len(parts) not in (2, 3) or not all(parts):
            raise ImageError(
                f"platform {text!r} is not os/architecture[/variant], e.g. linux/amd64"
            )
        return cls(
            os=parts[0], architecture=parts[1], variant=parts[2] if len(parts) == 3 else None
        )

    def matches(self, other: dict[str, Any]) -> bool:
        if other.get("os") != self.os or other.get("architecture") != self.architecture:
            return False
        return self.variant is None or other.get("variant") == self.variant

    def __str__(self) -> str:
        return "/".join(p for p in (self.os, self.architecture, self.variant) if p)


DEFAULT_PLATFORMS = (Platform(os="linux", architecture="amd64"),)


class Descriptor(BaseModel):
    """An OCI content descriptor (the fields we use)."""

    model_config = ConfigDict(frozen=True, populate_by_name=True)

    media_type: str = Field(alias="mediaType")
    digest: str = Field(pattern=DIGEST_RE.pattern)
    size: int = Field(ge=0)

    @property
    def hex(self) -> str:
        return self.digest.split(":", 1)[1]


class ImageManifest(BaseModel):
    """A single-platform image manifest, as fetched (digest of the exact bytes)."""

    model_config = ConfigDict(frozen=True)

    digest: str
    media_type: str
    schema_version: int
    config: Descriptor
    layers: tuple[Descriptor, ...]


class ResolvedImage(BaseModel):
    """What a reference resolved to at one moment: the manifest to unpack and where it came from."""

    model_config = ConfigDict(frozen=True)

    registry: str
    repository: str
    tag: str | None
    # The digest the reference named (an index digest for a multi-architecture image).
    reference_digest: str
    manifest: ImageManifest
    platform: str | None = None  # the platform picked from an index

    @property
    def config_digest(self) -> str:
        return self.manifest.config.digest


class ImageReference(BaseModel):
    """`REGISTRY/REPOSITORY[:TAG][@DIGEST]` (the DUCC image syntax without the scheme)."""

    model_config = ConfigDict(frozen=True)

    registry: str
    repository: str
    tag: str | None = None
    digest: str | None = None

    @classmethod
    def parse(cls, text: str) -> ImageReference:
        rest = text.split("://", 1)[1] if "://" in text else text
        digest = None
        if "@" in rest:
            rest, digest = rest.split("@", 1)
        registry, _, path = rest.partition("/")
        if not registry or not path:
            raise ImageError(f"image {text!r} is not REGISTRY/REPOSITORY[:TAG][@DIGEST]")
        tag = None
        if ":" in path:
            path, tag = path.rsplit(":", 1)
        if tag is None and digest is None:
            tag = "latest"
        return cls(registry=registry, repository=path, tag=tag, digest=digest)

    @property
    def ref(self) -> str:
        """What to ask the registry for: the digest if known, else the tag."""
        ref = self.digest or self.tag
        assert ref is not None
        return ref

    def __str__(self) -> str:
        text = f"{self.registry}/{self.repository}"
        if self.tag:
            text += f":{self.tag}"
        if self.digest:
            text += f"@{self.digest}"
        return text


class RegistryClient:
    """One registry host, spoken to through oras-py's session (token and basic auth)."""

    def __init__(self, registry: str, access: RegistryAccess | None = None) -> None:
        access = access or RegistryAccess()
        self.registry = registry
        insecure = access.is_insecure(registry)
        self._scheme = "http" if insecure else "https"
        self._oras = OrasRegistry(hostname=registry, insecure=insecure)
        credentials = access.credentials.get(registry)
        if credentials is not None:
            self._oras.auth.set_basic_auth(
                credentials.username, credentials.password.get_secret_value()
            )

    def __repr__(self) -> str:
        return f"RegistryClient({self.registry!r})"

    def close(self) -> None:
        self._oras.session.close()

    def __enter__(self) -> RegistryClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # ------------------------------------------------------------------------ transport
    def _url(self, repository: str, kind: str, ref: str) -> str:
        return f"{self._scheme}://{self.registry}/v2/{repository}/{kind}/{ref}"

    def _request(
        self, url: str, *, headers: dict[str, str] | None = None, stream: bool = False
    ) -> requests.Response:
        try:
            # oras-py's own retry loop sleeps up to ~2 minutes on a refused connection; the
            # Prefect task retries instead, visibly, so call the undecorated request.
            response = _ORAS_REQUEST(
                self._oras, url, "GET", headers=dict(headers or {}), stream=stream
            )
        except (requests.RequestException, ValueError) as error:
            raise RegistryError(
                f"GET {url} failed: {error}; check the registry and retry"
            ) from error
        if response.status_code == 404:
            response.close()
            raise ImageNotFoundError(f"{url} does not exist (404): check the image name and tag")
        if response.status_code != 200:
            response.close()
            raise RegistryError(
                f"GET {url} answered {response.status_code} {response.reason}: retry later, "
                "or check the registry credentials"
            )
        return response

    # ------------------------------------------------------------------------- manifests
    def fetch_manifest(self, repository: str, ref: str) -> tuple[str, str, dict[str, Any]]:
        """(media type, digest of the bytes, parsed JSON) of a manifest or index."""
        url = self._url(repository, "manifests", ref)
        accept = ", ".join((*MANIFEST_TYPES, *INDEX_TYPES))
        response = self._request(url, headers={"Accept": accept})
        body = response.content
        if len(body) > MAX_MANIFEST_BYTES:
            raise UnsupportedImageError(f"{url}: manifest of {len(body)} bytes is too large")
        digest = "sha256:" + hashlib.sha256(body).hexdigest()
        if DIGEST_RE.fullmatch(ref) and ref != digest:
            raise IntegrityError(f"{url}: the manifest bytes hash to {digest}, not {ref}")
        try:
            parsed = json.loads(body)
        except ValueError as error:
            raise UnsupportedImageError(f"{url}: the manifest is not JSON ({error})") from error
        media_type = parsed.get("mediaType") or response.headers.get("Content-Type", "")
        media_type = media_type.split(";", 1)[0].strip()
        return media_type, digest, parsed

    def resolve(
        self, image: ImageReference, platforms: tuple[Platform, ...] = DEFAULT_PLATFORMS
    ) -> ResolvedImage:
        """The single-platform manifest `image` names now (an index: first wanted platform)."""
        media_type, digest, parsed = self.fetch_manifest(image.repository, image.ref)
        picked: str | None = None
        if media_type in INDEX_TYPES or "manifests" in parsed:
            entry = pick_platform(parsed, platforms, str(image))
            picked = _platform_text(entry.get("platform"))
            media_type_m, manifest_digest, parsed_m = self.fetch_manifest(
                image.repository, entry["digest"]
            )
            manifest = _parse_manifest(media_type_m, manifest_digest, parsed_m, str(image))
        else:
            manifest = _parse_manifest(media_type, digest, parsed, str(image))
        return ResolvedImage(
            registry=image.registry,
            repository=image.repository,
            tag=image.tag,
            reference_digest=digest,
            manifest=manifest,
            platform=picked,
        )

    def fetch_config(self, repository: str, config: Descriptor) -> dict[str, Any]:
        """The image configuration blob (Env, Entrypoint, Cmd, rootfs.diff_ids...)."""
        if config.size > MAX_CONFIG_BYTES:
            raise UnsupportedImageError(
                f"config {config.digest} has {config.size} bytes: too large"
            )
        with self.open_blob(repository, config) as blob:
            data = blob.read_all()
        try:
            parsed: dict[str, Any] = json.loads(data)
        except ValueError as error:
            raise UnsupportedImageError(f"config {config.digest} is not JSON") from error
        return parsed

    @contextlib.contextmanager
    def open_blob(self, repository: str, descriptor: Descriptor) -> Iterator[VerifiedBlob]:
        """A stream of the blob's bytes; `finish()` checks the digest and size at the end."""
        response = self._request(self._url(repository, "blobs", descriptor.digest), stream=True)
        try:
            yield VerifiedBlob(response, descriptor)
        finally:
            response.close()

    def list_tags(self, repository: str) -> list[str]:
        """Every tag of a repository (follows the registry's pagination)."""
        tags: list[str] = []
        url: str | None = f"{self._scheme}://{self.registry}/v2/{repository}/tags/list?n=1000"
        while url:
            response = self._request(url)
            tags.extend(response.json().get("tags") or [])
            link = response.links.get("next", {}).get("url")
            url = f"{self._scheme}://{self.registry}{link}" if link else None
        return tags


class VerifiedBlob:
    """Reads a blob from an HTTP response, counting and hashing; refuses more than declared."""

    def __init__(self, response: requests.Response, descriptor: Descriptor) -> None:
        self._raw = response.raw
        self._descriptor = descriptor
        self._hash = hashlib.sha256()
        self.bytes_read = 0

    def read(self, size: int = -1, /) -> bytes:
        want = _READ if size is None or size < 0 else size
        remaining = self._descriptor.size - self.bytes_read
        try:
            data = self._raw.read(
                min(want, remaining) if remaining > 0 else 1, decode_content=False
            )
        except Exception as error:  # urllib3 raises its own hierarchy; say which blob failed
            raise RegistryError(
                f"reading blob {self._descriptor.digest} failed: {error}; retry"
            ) from error
        if remaining <= 0 and data:
            raise IntegrityError(
                f"blob {self._descriptor.digest} is longer than the {self._descriptor.size} "
                "bytes its descriptor declares: refused"
            )
        self._hash.update(data)
        self.bytes_read += len(data)
        return data

    def read_all(self) -> bytes:
        pieces = []
        while data := self.read(_READ):
            pieces.append(data)
        self.finish()
        return b"".join(pieces)

    def finish(self) -> None:
        """Read what the consumer left (tar padding), then check the size and digest."""
        while self.read(_READ):
            pass
        digest = "sha256:" + self._hash.hexdigest()
        if self.bytes_read != self._descriptor.size or digest != self._descriptor.digest:
            raise IntegrityError(
                f"blob {self._descriptor.digest}: got {self.bytes_read} bytes hashing to "
                f"{digest}, the descriptor says {self._descriptor.size} bytes: refused"
            )


def pick_platform(
    index: dict[str, Any], platforms: tuple[Platform, ...], image: str
) -> dict[str, Any]:
    """The index entry of the first wanted platform (an index of one entry: that entry)."""
    entries = [
        m
        for m in index.get("manifests") or []
        if m.get("mediaType", OCI_MANIFEST) in MANIFEST_TYPES
    ]
    for platform in platforms:
        for entry in entries:
            if platform.matches(entry.get("platform") or {}):
                return entry
    if len(entries) == 1 and not entries[0].get("platform"):
        return entries[0]
    offered = sorted({_platform_text(e.get("platform")) or "?" for e in entries})
    wanted = ", ".join(str(p) for p in platforms)
    raise PlatformNotFoundError(
        f"{image} offers platforms {', '.join(offered) or 'none'}, none of {wanted}: "
        "configure the platforms to unpack"
    )


def _platform_text(platform: dict[str, Any] | None) -> str | None:
    if not platform:
        return None
    parts = [platform.get("os"), platform.get("architecture"), platform.get("variant")]
    return "/".join(p for p in parts if p)


def _parse_manifest(
    media_type: str, digest: str, parsed: dict[str, Any], image: str
) -> ImageManifest:
    if media_type not in MANIFEST_TYPES:
        raise UnsupportedImageError(
            f"{image}: manifest media type {media_type!r} is not an image manifest "
            f"({', '.join(MANIFEST_TYPES)}): schema 1 and artifacts are not unpacked"
        )
    try:
        return ImageManifest(
            digest=digest,
            media_type=media_type,
            schema_version=int(parsed.get("schemaVersion", 2)),
            config=Descriptor.model_validate(parsed["config"]),
            layers=tuple(Descriptor.model_validate(layer) for layer in parsed.get("layers", [])),
        )
    except (KeyError, ValueError) as error:
        raise UnsupportedImageError(f"{image}: malformed manifest ({error})") from error
