"""The steps of the unpack flows: resolve an image, unpack it, delete a tag link, collect garbage.

Thin, retried wrappers around `images.unpacker`; every publish happens under the repository's
publish lock, and every step is idempotent (re-running it converges on the same tree).
"""

from __future__ import annotations

from datetime import datetime
from typing import Any, Literal

import hvac
from prefect import get_run_logger
from prefect.artifacts import create_table_artifact
from pydantic import BaseModel, ConfigDict, Field, SecretStr, model_validator
from requests import RequestException

from cvmfs.keys import KeySet, generate_keyset
from cvmfs.writer import MANIFEST_KEY, RepositoryWriter, create_repository
from images.errors import RegistryError
from images.layers import LayerPolicy
from images.registry import (
    ImageReference,
    Platform,
    RegistryAccess,
    RegistryClient,
    RegistryCredentials,
    ResolvedImage,
)
from images.unpacker import (
    GcOutcome,
    TagDeleteOutcome,
    UnpackOutcome,
    collect_garbage,
    delete_tag,
    unpack_image,
)
from images.wishlist import expand, parse_wishlist
from service.keystore import SERVICE_KEY_OWNER, KeyStore, unpacked_fqrn, vault_client
from service.settings import Settings
from tasks.locks import repository_lease
from tasks.steps import step
from tasks.storage import ensure_stratum0_storage, repository_storage

FQRN_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9._-]{0,59}$"
ROBOT_SECRET_PATH = "registry/robot"  # KV v2, below settings.vault.kv_mount


class UnpackRequest(BaseModel):
    """One image to unpack: `registry/repository` at a tag or a digest, into `fqrn`.

    The bridge sends its image events (`bridge.registry_events.ImagePushed`/`ImageDeleted`,
    as JSON) as this model: `kind`, `media_type`, `occurred_at` and `source` are accepted for
    that; `kind: image-deleted` makes the `unpack` flow delete the tag's link.
    """

    model_config = ConfigDict(frozen=True, extra="forbid")

    registry: str = Field(min_length=1, max_length=255, pattern=r"^[A-Za-z0-9.\[\]:-]+$")
    repository: str = Field(min_length=1, max_length=255)
    tag: str | None = Field(default=None, pattern=r"^[A-Za-z0-9_][A-Za-z0-9_.-]{0,127}$")
    digest: str | None = Field(default=None, pattern=r"^sha256:[0-9a-f]{64}$")
    fqrn: str | None = Field(
        default=None,
        pattern=FQRN_PATTERN,
        description="the unpacked repository; None: unpacked.<repository_domain>",
    )
    platforms: list[str] | None = Field(
        default=None, description="os/arch[/variant] in order of preference; None: settings"
    )
    kind: Literal["image-pushed", "image-deleted"] = "image-pushed"
    media_type: str | None = None
    occurred_at: datetime | None = None
    source: str | None = None

    @model_validator(mode="after")
    def _names_an_image(self) -> UnpackRequest:
        if self.tag is None and self.digest is None:
            raise ValueError("an unpack request needs a tag or a digest")
        return self

    def reference(self) -> ImageReference:
        """The tag when there is one (the digest of a push event is informational: resolving
        the tag again makes out-of-order runs converge on the tag's latest image)."""
        return ImageReference(
            registry=self.registry,
            repository=self.repository,
            tag=self.tag,
            digest=None if self.tag else self.digest,
        )


def target_fqrn(settings: Settings, request: UnpackRequest) -> str:
    return request.fqrn or unpacked_fqrn(settings.repository_domain)


# ------------------------------------------------------------------------------ plain helpers


def unpacked_repository_keys(settings: Settings, fqrn: str) -> KeySet:
    """The key set of an unpacked repository: generated once, on first use, kept in Vault."""
    store = KeyStore.from_settings(settings.vault)
    if not store.exists(SERVICE_KEY_OWNER, fqrn):
        store.store_if_absent(SERVICE_KEY_OWNER, fqrn, generate_keyset(fqrn))
    return store.read(SERVICE_KEY_OWNER, fqrn)


def open_unpacked_repository(settings: Settings, fqrn: str) -> RepositoryWriter:
    """The writer of `fqrn`, creating the repository first if it does not exist yet."""
    storage = repository_storage(settings, fqrn)
    keys = unpacked_repository_keys(settings, fqrn)
    if not storage.exists(MANIFEST_KEY):
        ensure_stratum0_storage(settings)
        writer, _ = create_repository(storage, fqrn, keys, meta_info={"kind": "unpacked"})
        return writer
    return RepositoryWriter.open(storage, fqrn, keys)


def robot_credentials(settings: Settings) -> RegistryCredentials | None:
    """The robot account: from settings if set there, else from Vault KV v2 at
    `<kv_mount>/registry/robot` (fields `username`, `password`) when a Vault token is
    configured; None means anonymous pulls. The password is never logged."""
    registry = settings.registry
    if registry.robot_username and registry.robot_password:
        return RegistryCredentials(
            username=registry.robot_username, password=registry.robot_password
        )
    if settings.vault.token is None:
        return None
    client = vault_client(settings.vault)
    try:
        response = client.secrets.kv.v2.read_secret_version(
            path=ROBOT_SECRET_PATH,
            mount_point=settings.vault.kv_mount,
            raise_on_deleted_version=True,
        )
    except hvac.exceptions.InvalidPath:
        return None
    except (hvac.exceptions.VaultError, RequestException) as error:
        raise RegistryError(
            f"cannot read the registry robot account from Vault ({type(error).__name__}): "
            "check Vault and retry"
        ) from error
    fields = response["data"]["data"]
    return RegistryCredentials(
        username=str(fields["username"]), password=SecretStr(str(fields["password"]))
    )


def registry_access(settings: Settings) -> RegistryAccess:
    """Credentials (the robot account, for the configured registry host) and plain-HTTP hosts."""
    host = settings.registry.url.split("://", 1)[1]
    credentials = robot_credentials(settings)
    return RegistryAccess(credentials={host: credentials} if credentials else {})


def wanted_platforms(settings: Settings, request: UnpackRequest) -> tuple[Platform, ...]:
    names = request.platforms or settings.registry.unpack_platforms
    return tuple(Platform.parse(name) for name in names)


# -------------------------------------------------------------------------------------- tasks
@step("resolve image")
def resolve_image(settings: Settings, request: UnpackRequest) -> ResolvedImage:
    """Tag (or digest) -> the single-platform manifest to unpack, as the registry says now."""
    with RegistryClient(request.registry, registry_access(settings)) as client:
        return client.resolve(request.reference(), wanted_platforms(settings, request))


@step("unpack image into repository")
def unpack_into_repository(
    settings: Settings, request: UnpackRequest, image: ResolvedImage
) -> UnpackOutcome:
    """Unpack (or only relink) under the repository lease; publishes at most once."""
    logger = get_run_logger()
    fqrn = target_fqrn(settings, request)
    with (
        repository_lease(fqrn),
        RegistryClient(request.registry, registry_access(settings)) as client,
    ):
        writer = open_unpacked_repository(settings, fqrn)
        policy = LayerPolicy(skip_special=settings.registry.unpack_skip_special)
        outcome = unpack_image(writer, client, image, policy=policy)
    logger.info(
        "image=%s action=%s config=%s revision=%d files=%d special_files=%d bytes=%d "
        "skipped_special=%d setid_stripped=%d",
        outcome.image,
        outcome.action,
        outcome.config_digest,
        outcome.revision,
        outcome.files,
        outcome.special_files,
        outcome.bytes,
        len(outcome.skipped_special),
        len(outcome.stripped_modes),
    )
    if outcome.skipped_special or outcome.stripped_modes:
        report_unpack_notes(outcome)
    return outcome


def report_unpack_notes(outcome: UnpackOutcome) -> None:
    """The run's artifact lists what the unpack left out (special files, by
    `registry.unpack_skip_special`) or changed (setuid/setgid bits stripped)."""
    rows = [{"note": "skipped special file", "path": path} for path in outcome.skipped_special]
    rows += [{"note": "setuid/setgid stripped", "path": path} for path in outcome.stripped_modes]
    create_table_artifact(
        key=f"unpack-notes-{outcome.config_digest.split(':')[-1][:16]}",
        table=rows,
        description=f"{outcome.image}: {outcome.flat_dir}, revision {outcome.revision}",
    )


@step("delete tag link")
def delete_tag_link(settings: Settings, request: UnpackRequest) -> TagDeleteOutcome:
    if request.tag is None:
        raise ValueError("deleting needs the tag whose link goes away")
    fqrn = target_fqrn(settings, request)
    with repository_lease(fqrn):
        writer = open_unpacked_repository(settings, fqrn)
        return delete_tag(writer, request.registry, request.repository, request.tag)


@step("collect unreferenced flat trees")
def collect_flat_trees(settings: Settings, fqrn: str, grace_s: int) -> GcOutcome:
    with repository_lease(fqrn):
        writer = open_unpacked_repository(settings, fqrn)
        return collect_garbage(writer, grace_s=grace_s)


@step("expand wish list")
def expand_wishlist(settings: Settings, wishlist_yaml: str) -> tuple[str, list[ImageReference]]:
    """(target repository, every image it names now: wildcard tags listed at the registry)."""
    wishlist = parse_wishlist(wishlist_yaml)
    access = registry_access(settings)

    def list_tags(entry: Any) -> list[str]:
        with RegistryClient(entry.registry, access) as client:
            return client.list_tags(entry.repository)

    return wishlist.cvmfs_repo, expand(wishlist, list_tags)
