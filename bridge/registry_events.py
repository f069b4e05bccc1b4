"""Registry webhooks (distribution `{"events": [...]}` and Harbor artifact events) as image events.

Only tagged manifest pushes and manifest/tag deletes become `ImagePushed` / `ImageDeleted`;
pulls, blob events and other Harbor types are ignored; `UnpackFilter` picks what we unpack.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from fnmatch import fnmatchcase
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from bridge.errors import RejectedMessage

MANIFEST_MEDIA_TYPES = frozenset(
    {
        "application/vnd.oci.image.manifest.v1+json",
        "application/vnd.oci.image.index.v1+json",
        "application/vnd.docker.distribution.manifest.v2+json",
        "application/vnd.docker.distribution.manifest.list.v2+json",
        "application/vnd.docker.distribution.manifest.v1+json",
        "application/vnd.docker.distribution.manifest.v1+prettyjws",
    }
)
DIGEST_PATTERN = r"^sha256:[0-9a-f]{64}$"
# distribution's repository name grammar (lower-case path components), no '..' possible.
REPOSITORY_PATTERN = (
    r"^[a-z0-9]+(?:(?:[._]|__|-+)[a-z0-9]+)*(?:/[a-z0-9]+(?:(?:[._]|__|-+)[a-z0-9]+)*)*$"
)
TAG_PATTERN = r"^[A-Za-z0-9_][A-Za-z0-9_.-]{0,127}$"
HOST_PATTERN = r"^[A-Za-z0-9.-]+(?::[0-9]{1,5})?$"


class _ImageEvent(BaseModel):
    model_config = ConfigDict(frozen=True)

    registry: str = Field(pattern=HOST_PATTERN)
    repository: str = Field(pattern=REPOSITORY_PATTERN, max_length=255)
    tag: str | None = Field(default=None, pattern=TAG_PATTERN)
    digest: str | None = Field(default=None, pattern=DIGEST_PATTERN)
    media_type: str | None = None
    occurred_at: datetime | None = None
    source: Literal["distribution", "harbor"]

    @property
    def project(self) -> str:
        """The first path component, what Harbor calls the project (`unpacked` in `unpacked/x`)."""
        return self.repository.split("/", 1)[0]

    @property
    def reference(self) -> str:
        """`<registry>/<repository>:<tag>` (or `@<digest>`), the DUCC name of the image."""
        suffix = f":{self.tag}" if self.tag else f"@{self.digest}"
        return f"{self.registry}/{self.repository}{suffix}"

    def message_id(self) -> str:
        """Stable id of this event: the same push notified twice gets the same id.

        The time is part of it so that moving a tag back to an earlier digest is a new event.
        """
        identity = json.dumps(
            self.model_dump(
                mode="json",
                include={"kind", "registry", "repository", "tag", "digest", "occurred_at"},
            ),
            sort_keys=True,
        )
        return hashlib.sha256(identity.encode()).hexdigest()[:32]


class ImagePushed(_ImageEvent):
    kind: Literal["image-pushed"] = "image-pushed"
    tag: str = Field(pattern=TAG_PATTERN)
    digest: str = Field(pattern=DIGEST_PATTERN)


class ImageDeleted(_ImageEvent):
    """A tag (tag set) or a whole manifest (digest only) was deleted."""

    kind: Literal["image-deleted"] = "image-deleted"

    @model_validator(mode="after")
    def _names_something(self) -> ImageDeleted:
        if self.tag is None and self.digest is None:
            raise ValueError("a delete event needs a tag or a digest")
        return self


ImageEvent = Annotated[ImagePushed | ImageDeleted, Field(discriminator="kind")]


class _ImageEventMessage(BaseModel):
    event: ImageEvent


def parse_image_event_message(body: bytes | str) -> ImagePushed | ImageDeleted:
    """Parse the bus form the webhook publishes (`{"event": {...}}`); RejectedMessage if bad."""
    try:
        return _ImageEventMessage.model_validate_json(body).event
    except ValidationError as error:
        raise RejectedMessage(_reason("image event message", error)) from error


def image_event_message(event: ImagePushed | ImageDeleted) -> bytes:
    return _ImageEventMessage(event=event).model_dump_json().encode()


@dataclass(frozen=True)
class ParsedWebhook:
    events: list[ImagePushed | ImageDeleted]
    ignored: int = 0
    ignored_reasons: list[str] = field(default_factory=list)


# --- distribution registry ---------------------------------------------------------------------


class _Loose(BaseModel):
    model_config = ConfigDict(extra="ignore")


class _DistTarget(_Loose):
    mediaType: str = ""
    digest: str = ""
    repository: str
    tag: str = ""
    url: str = ""


class _DistRequest(_Loose):
    host: str = ""


class _DistSource(_Loose):
    addr: str = ""


class _DistEvent(_Loose):
    id: str = ""
    timestamp: datetime | None = None
    action: str
    target: _DistTarget
    request: _DistRequest = Field(default_factory=_DistRequest)
    source: _DistSource = Field(default_factory=_DistSource)


class _DistEnvelope(_Loose):
    events: list[_DistEvent]


def _dist_event(event: _DistEvent, registry_host: str | None) -> ImagePushed | ImageDeleted | str:
    """The image event, or the reason it is ignored."""
    target = event.target
    host = registry_host or event.request.host or event.source.addr
    if event.action == "pull":
        return "pull"
    if event.action not in ("push", "delete"):
        return f"action {event.action!r}"
    if target.mediaType and target.mediaType not in MANIFEST_MEDIA_TYPES:
        return f"{event.action} of a {target.mediaType} (not a manifest)"
    if "/blobs/" in target.url:
        return f"{event.action} of a blob"
    if not host:
        raise RejectedMessage(
            f"{event.action} event {event.id!r} names no registry host (request.host, source.addr)"
        )
    common: dict[str, Any] = {
        "registry": host,
        "repository": target.repository,
        "digest": target.digest or None,
        "media_type": target.mediaType or None,
        "occurred_at": event.timestamp,
        "source": "distribution",
    }
    if event.action == "push":
        if not target.mediaType:
            return "push without a media type"
        if not target.tag:
            # Children of an index are pushed by digest before the tagged index itself.
            return "untagged manifest push"
        return ImagePushed(tag=target.tag, **common)
    return ImageDeleted(tag=target.tag or None, **common)


# --- Harbor ------------------------------------------------------------------------------------


class _HarborResource(_Loose):
    digest: str = ""
    tag: str = ""
    resource_url: str


class _HarborRepository(_Loose):
    repo_full_name: str


class _HarborData(_Loose):
    resources: list[_HarborResource]
    repository: _HarborRepository


class _HarborPayload(_Loose):
    type: str
    occur_at: int
    event_data: _HarborData


def _harbor_events(payload: _HarborPayload, registry_host: str | None) -> ParsedWebhook:
    if payload.type not in ("PUSH_ARTIFACT", "DELETE_ARTIFACT"):
        return ParsedWebhook(events=[], ignored=1, ignored_reasons=[f"Harbor {payload.type}"])
    occurred = datetime.fromtimestamp(payload.occur_at, tz=UTC)
    events: list[ImagePushed | ImageDeleted] = []
    reasons: list[str] = []
    for resource in payload.event_data.resources:
        host = registry_host or resource.resource_url.split("/", 1)[0]
        common: dict[str, Any] = {
            "registry": host,
            "repository": payload.event_data.repository.repo_full_name,
            "digest": resource.digest or None,
            "occurred_at": occurred,
            "source": "harbor",
        }
        if payload.type == "PUSH_ARTIFACT":
            if not resource.tag:
                reasons.append("untagged artifact push")
                continue
            events.append(ImagePushed(tag=resource.tag, **common))
        else:
            events.append(ImageDeleted(tag=resource.tag or None, **common))
    return ParsedWebhook(events=events, ignored=len(reasons), ignored_reasons=reasons)


def _reason(what: str, error: ValidationError) -> str:
    first = error.errors()[0]
    where = ".".join(str(part) for part in first["loc"]) or "body"
    return f"invalid {what} at {where}: {first['msg']} ({error.error_count()} error(s))"


def parse_registry_webhook(body: bytes | str, registry_host: str | None = None) -> ParsedWebhook:
    """Normalise a distribution or Harbor webhook body; RejectedMessage when it is malformed.

    `registry_host` overrides the host named in the payload (the public name of the registry,
    used in the DUCC layout), for registries that see themselves under an internal name.
    """
    try:
        document: Any = json.loads(body)
    except (ValueError, UnicodeDecodeError) as error:
        raise RejectedMessage(f"registry webhook is not valid JSON: {error}") from error
    if not isinstance(document, dict):
        raise RejectedMessage("registry webhook is not a JSON object")
    try:
        if "events" in document:
            envelope = _DistEnvelope.model_validate(document)
            events: list[ImagePushed | ImageDeleted] = []
            reasons: list[str] = []
            for event in envelope.events:
                result = _dist_event(event, registry_host)
                if isinstance(result, str):
                    reasons.append(result)
                else:
                    events.append(result)
            return ParsedWebhook(events=events, ignored=len(reasons), ignored_reasons=reasons)
        if "type" in document and "event_data" in document:
            return _harbor_events(_HarborPayload.model_validate(document), registry_host)
    except ValidationError as error:
        raise RejectedMessage(_reason("registry webhook", error)) from error
    raise RejectedMessage(
        "registry webhook is neither a distribution envelope ({'events': [...]}) "
        "nor a Harbor payload ({'type': ..., 'event_data': ...})"
    )


@dataclass(frozen=True)
class UnpackFilter:
    """Which images are unpacked: whole projects, plus wishlist patterns.

    A wishlist pattern is matched (shell-style, `*` and `?`) against `<registry>/<repo>:<tag>`
    and against `<repo>:<tag>`; a pattern without `:` matches every tag of the repository.
    """

    projects: frozenset[str] = frozenset()
    wishlist: tuple[str, ...] = ()

    @classmethod
    def of(cls, projects: Iterable[str], wishlist: Iterable[str] = ()) -> UnpackFilter:
        return cls(projects=frozenset(projects), wishlist=tuple(wishlist))

    def accepts(self, event: ImagePushed | ImageDeleted) -> bool:
        if event.project in self.projects:
            return True
        tag = event.tag or "*"
        candidates = (
            f"{event.registry}/{event.repository}:{tag}",
            f"{event.repository}:{tag}",
        )
        for pattern in self.wishlist:
            full = pattern if ":" in pattern.rsplit("/", 1)[-1] else f"{pattern}:*"
            if any(fnmatchcase(candidate, full) for candidate in candidates):
                return True
        return False
