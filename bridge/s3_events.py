"""S3 bucket notifications (Ceph RGW over AMQP, AWS-style servers over SNS/HTTP) as ObjectEvents.

Parsing refuses, with a reason, anything malformed or forged; `repository_path_for_key` is
the one place that maps a bucket key `cvmfs/<path>` to the repository path `/<path>`.
"""

from __future__ import annotations

import json
from datetime import datetime
from enum import StrEnum
from typing import Any, Literal
from urllib.parse import unquote_plus

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from bridge.errors import RejectedMessage

KEY_PREFIX = "cvmfs/"
# POSIX NAME_MAX / PATH_MAX: a longer name could never be created in the repository.
NAME_MAX_BYTES = 255
PATH_MAX_BYTES = 4096


class ObjectEventKind(StrEnum):
    CREATED = "created"
    REMOVED = "removed"


class ObjectEvent(BaseModel):
    """One object change in a bucket, whatever server reported it. Keys are decoded."""

    model_config = ConfigDict(frozen=True)

    source: Literal["ceph:s3", "aws:s3"]
    bucket: str
    key: str
    kind: ObjectEventKind
    event_name: str
    event_time: datetime
    size: int | None = None
    etag: str | None = None
    version_id: str | None = None
    sequencer: str | None = None
    principal_id: str | None = None  # who made the change (userIdentity)
    owner_id: str | None = None  # who owns the bucket (ownerIdentity)
    metadata: dict[str, str] = Field(default_factory=dict)
    # Why this key under cvmfs/ can never be a repository path ('..', an empty component, too
    # long); None for a usable key. Such an event still goes to the sync, whose bucket rules
    # refuse the key where its owner sees it (the repository's refusals, the dashboard).
    unsafe_reason: str | None = None

    @property
    def repository_path(self) -> str:
        return repository_path_for_key(self.key)

    @property
    def is_directory_marker(self) -> bool:
        """A zero-length `cvmfs/dir/` object that S3 consoles create to show a folder."""
        return self.key.endswith("/")


def repository_path_for_key(key: str) -> str:
    """Map `cvmfs/<path>` to `/<path>`; raise RejectedMessage for any key that could escape.

    One trailing slash (a directory marker object) is allowed and dropped.
    """
    try:
        return _repository_path_for_key(key)
    except RejectedMessage as error:
        raise RejectedMessage(error.reason, kind="unsafe_key") from None


def _repository_path_for_key(key: str) -> str:
    if "\x00" in key:
        raise RejectedMessage(f"object key {key!r} contains a NUL byte")
    if not key.startswith(KEY_PREFIX):
        raise RejectedMessage(f"object key {key!r} is not under {KEY_PREFIX!r}")
    relative = key[len(KEY_PREFIX) :]
    if relative.startswith("/"):
        raise RejectedMessage(f"object key {key!r} has a leading '/' after {KEY_PREFIX!r}")
    if relative.endswith("/"):
        relative = relative[:-1]
    if not relative:
        raise RejectedMessage(f"object key {key!r} names no path below {KEY_PREFIX!r}")
    components = relative.split("/")
    for component in components:
        if component in ("", ".", ".."):
            raise RejectedMessage(
                f"object key {key!r} has an empty, '.' or '..' path component; "
                "rename the object to a plain relative path"
            )
        if len(component.encode()) > NAME_MAX_BYTES:
            raise RejectedMessage(f"object key {key!r} has a name longer than {NAME_MAX_BYTES} B")
    path = "/" + relative
    if len(path.encode()) > PATH_MAX_BYTES:
        raise RejectedMessage(f"object key {key[:80]!r}… is longer than {PATH_MAX_BYTES} B")
    return path


# --- wire formats: strict, so a forged event with wrong types is refused, not coerced ----------


class _Wire(BaseModel):
    model_config = ConfigDict(strict=True, extra="ignore")


class _Identity(_Wire):
    principalId: str


class _MetadataEntry(_Wire):
    key: str
    val: str


class _Bucket(_Wire):
    name: str = Field(min_length=3, max_length=255)
    ownerIdentity: _Identity | None = None


class _Object(_Wire):
    key: str = Field(min_length=1)
    size: int | None = Field(default=None, ge=0)
    eTag: str | None = None
    versionId: str | None = None
    sequencer: str | None = None
    metadata: list[_MetadataEntry] | None = None


class _S3Entity(_Wire):
    bucket: _Bucket
    object: _Object


class _Record(_Wire):
    eventVersion: str
    eventSource: Literal["ceph:s3", "aws:s3"]
    eventTime: datetime
    eventName: str
    userIdentity: _Identity | None = None
    s3: _S3Entity


class _Notification(_Wire):
    Records: list[_Record] = Field(min_length=1)


class _SnsEnvelope(_Wire):
    Type: str
    Message: str


def _kind_of(event_name: str) -> ObjectEventKind:
    # RGW sends "ObjectCreated:Put", AWS may prefix "s3:"; both name the same families.
    name = event_name.removeprefix("s3:")
    if name.startswith("ObjectCreated:"):
        return ObjectEventKind.CREATED
    if name.startswith("ObjectRemoved:"):
        return ObjectEventKind.REMOVED
    raise RejectedMessage(
        f"event name {event_name!r} is neither ObjectCreated:* nor ObjectRemoved:*"
    )


def _decode_key(source: str, raw_key: str) -> str:
    # RGW puts the key as is; AWS (and moto) URL-encode it with '+' for spaces.
    return raw_key if source == "ceph:s3" else unquote_plus(raw_key)


def _names_nothing_of_ours(key: str) -> bool:
    """A key no notification of a wired bucket carries (the notification filters `cvmfs/`,
    S3 keys hold no NUL): the message is forged or misrouted, and refused whole."""
    return "\x00" in key or not key.startswith(KEY_PREFIX) or not key[len(KEY_PREFIX) :].strip("/")


def _event_from_record(record: _Record) -> ObjectEvent:
    key = _decode_key(record.eventSource, record.s3.object.key)
    unsafe_reason: str | None = None
    try:
        repository_path_for_key(key)
    except RejectedMessage as refused:
        if _names_nothing_of_ours(key):
            raise
        # A user's key that can never be a path: refused by the sync (tasks/sync.py through
        # buckets/bucket_rules.py), which records why for the dashboard; a dead letter here
        # would tell the operators and leave the user waiting for the next reconcile.
        unsafe_reason = refused.reason
    obj = record.s3.object
    metadata = {entry.key.lower(): entry.val for entry in obj.metadata or []}
    return ObjectEvent(
        source=record.eventSource,
        bucket=record.s3.bucket.name,
        key=key,
        kind=_kind_of(record.eventName),
        event_name=record.eventName,
        event_time=record.eventTime,
        size=obj.size,
        etag=obj.eTag or None,
        version_id=obj.versionId or None,
        sequencer=obj.sequencer or None,
        principal_id=record.userIdentity.principalId if record.userIdentity else None,
        owner_id=(
            record.s3.bucket.ownerIdentity.principalId if record.s3.bucket.ownerIdentity else None
        ),
        metadata=metadata,
        unsafe_reason=unsafe_reason,
    )


def _reason(error: ValidationError) -> str:
    first = error.errors()[0]
    where = ".".join(str(part) for part in first["loc"]) or "message"
    return f"invalid S3 notification at {where}: {first['msg']} ({error.error_count()} error(s))"


def parse_s3_notification(body: bytes | str) -> list[ObjectEvent]:
    """Parse an AMQP body or HTTP POST body into ObjectEvents; RejectedMessage if unusable.

    Accepts the plain `{"Records": [...]}` form and the SNS envelope (`Type: Notification`,
    `Message` = the JSON string). AWS's `s3:TestEvent` yields an empty list.
    """
    try:
        document: Any = json.loads(body)
    except (ValueError, UnicodeDecodeError) as error:
        raise RejectedMessage(f"S3 notification is not valid JSON: {error}") from error
    if not isinstance(document, dict):
        raise RejectedMessage("S3 notification is not a JSON object")
    if "Type" in document and "Message" in document:
        try:
            envelope = _SnsEnvelope.model_validate(document)
        except ValidationError as error:
            raise RejectedMessage(_reason(error)) from error
        if envelope.Type != "Notification":
            raise RejectedMessage(f"SNS message of type {envelope.Type!r} carries no S3 event")
        return parse_s3_notification(envelope.Message)
    if document.get("Event") == "s3:TestEvent":
        return []
    try:
        notification = _Notification.model_validate_json(json.dumps(document))
    except ValidationError as error:
        raise RejectedMessage(_reason(error)) from error
    events = []
    for index, record in enumerate(notification.Records):
        try:
            events.append(_event_from_record(record))
        except RejectedMessage as error:
            raise RejectedMessage(f"record {index}: {error.reason}", error.kind) from error
    return events
