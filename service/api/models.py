"""Request and response bodies of the user API (pydantic, so the OpenAPI schema is exact).

Times are UTC ISO 8601; modes are the POSIX st_mode bits as an integer plus an `ls`-style string.
"""

from __future__ import annotations

import datetime as dt
from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

from service.messages import RequestId

RepositoryKind = Literal["personal", "group"]
EntryType = Literal["file", "directory", "symlink", "special"]
SpecialKind = Literal["char-device", "block-device", "fifo", "socket"]


class CreateRepository(BaseModel):
    """Ask for a personal repository, or one for a group the caller is a member of."""

    model_config = ConfigDict(extra="forbid")

    kind: RepositoryKind
    group: Annotated[str, Field(min_length=1, max_length=256)] | None = None
    short_name: Annotated[str, Field(min_length=1, max_length=63)] | None = None
    bucket: Annotated[str, Field(min_length=3, max_length=63)] | None = None
    # Set it to make a retried POST the same request (the dashboard's double click).
    request_id: RequestId | None = None

    @model_validator(mode="after")
    def _group_iff_group_kind(self) -> CreateRepository:
        if self.kind == "group" and not self.group:
            raise ValueError("a group repository request needs 'group'")
        if self.kind == "personal" and self.group is not None:
            raise ValueError("a personal repository request must not name a 'group'")
        return self


class RequestAccepted(BaseModel):
    request_id: str
    fqrn: str
    bucket: str
    status: Literal["pending"] = "pending"
    status_url: str


class RequestStatus(BaseModel):
    request_id: str
    fqrn: str | None
    status: Literal["pending", "ok", "refused", "failed"]
    reason: str | None
    received_at: dt.datetime
    updated_at: dt.datetime


class BucketStatus(BaseModel):
    """Where the repository's bucket stands, and in `message` what its owner can do about it.

    waiting: it does not exist yet (it is connected within a minute of being created);
    wired: uploads under cvmfs/ are published; foreign: it belongs to another S3 account;
    unreadable: the service may not read it; unchecked: provisioning has not got there yet.
    """

    name: str
    state: Literal["unchecked", "waiting", "wired", "foreign", "unreadable"]
    message: str
    checked_at: dt.datetime | None = Field(description="last check; None if never checked")


class RepositorySummary(BaseModel):
    fqrn: str
    kind: RepositoryKind
    group: str | None
    owner_username: str
    bucket: str  # its name; `bucket_state` says whether it is connected
    bucket_state: BucketStatus
    status: Literal["requested", "ready", "failed", "deprovisioned"]
    created_at: dt.datetime
    current_revision: int | None
    last_publish_at: dt.datetime | None


class PendingEvents(BaseModel):
    """Bucket events not yet taken by the bridge.

    All repositories share one S3 events queue, so `count` is that queue's depth (every
    repository's events), read from the RabbitMQ management API; None when it is unreachable.
    """

    count: int | None
    scope: Literal["all-repositories"] = "all-repositories"
    source: str


class KeyRefusal(BaseModel):
    """A bucket key the repository does not show, and why, as the last sync decided.

    `other_key` names the key it collides with (a refused pair); `kind` says what judged it:
    the key alone, a pair of keys, or the object's content (e.g. a tarball that escapes)."""

    key: str
    reason: str
    other_key: str | None
    kind: Literal["key", "pair", "content"]
    refused_at: dt.datetime | None


class RepositoryDetail(RepositorySummary):
    owner_subject: str
    updated_at: dt.datetime
    last_error: str | None
    pending_events: PendingEvents
    access: list[Literal["read", "keys", "sync", "rollback"]]
    refusals: list[KeyRefusal] = Field(
        default_factory=list,
        description="bucket keys not published, with the reason, until the bucket changes",
    )


class RepositoryList(BaseModel):
    repositories: list[RepositorySummary]


class ClientConfig(BaseModel):
    """Public material only: the master public key and the client configuration file."""

    fqrn: str
    server_url: str
    files: dict[str, str]
    instructions: str


class KeySetResponse(BaseModel):
    """A repository's key set, named as in Vault, for setting up an expert publisher."""

    fqrn: str
    vault_path: str
    # Field names as in Vault, so a publisher set up from either reads the same names.
    publicKey: str
    certificateKey: str
    masterKey: str | None
    repositoryKey: str | None
    gatewayKey: str | None


class PublisherSetup(BaseModel):
    """What a remote publisher (stock `cvmfs_server` through the gateway) needs, and nothing
    more: the public key, certificate and gateway key, never the master or repository key."""

    fqrn: str
    files: dict[str, str]  # /etc/cvmfs/keys/<name> -> content: <fqrn>.pub, .crt, .gw
    stratum0_url: str
    gateway_url: str
    mkfs_command: str


class Entry(BaseModel):
    name: str
    path: str
    type: EntryType
    size: int
    mode: int
    mode_string: str
    mtime: dt.datetime
    symlink_target: str | None = None
    chunked: bool = False
    nested_catalog: bool = False
    special_kind: SpecialKind | None = Field(
        default=None, description="for type 'special': what kind of special file it is"
    )
    device_major: int | None = Field(default=None, description="char/block devices only")
    device_minor: int | None = Field(default=None, description="char/block devices only")


class Listing(BaseModel):
    fqrn: str
    revision: int
    path: str
    entry: Entry
    entries: list[Entry] | None = Field(description="children of a directory; None for others")
    total_entries: int | None
    offset: int
    limit: int


class Change(BaseModel):
    path: str
    change: Literal["added", "removed", "modified", "type_changed"]
    type: EntryType = Field(description="the type after the change; for removed, before it")
    previous_type: EntryType | None = Field(
        default=None, description="for type_changed, the type before it; None otherwise"
    )


class Source(BaseModel):
    """Where a path last published in this revision came from (the provenance table)."""

    path: str
    s3_key: str
    etag: str | None
    size_bytes: int


class Revision(BaseModel):
    revision: int
    published_at: dt.datetime
    tags: list[str]
    description: str
    changes: list[Change] | None = Field(
        description="diff of this revision's tree against the previous listed revision; "
        "None when there is no previous revision to compare or the tree is too large"
    )
    changes_truncated: bool = False
    sources: list[Source] = Field(
        description="files whose latest provenance records this revision (a path published "
        "again later shows only under its latest revision)"
    )


class TagInfo(BaseModel):
    name: str
    revision: int
    published_at: dt.datetime
    description: str
    root_hash: str


class History(BaseModel):
    fqrn: str
    current_revision: int
    revisions: list[Revision]
    tags: list[TagInfo]
    note: str


class SyncRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    prefix: Annotated[str, Field(max_length=1024)] | None = Field(
        default=None,
        description="a path prefix inside the repository to backfill (sync/sync); "
        "none reconciles the whole repository (reconcile/reconcile)",
    )
    dry_run: bool = Field(default=False, description="reconcile only: report the diff")


class RollbackRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    tag: Annotated[str, Field(min_length=1, max_length=255)]


class TagRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    tag: Annotated[str, Field(min_length=1, max_length=255)]
    description: Annotated[str, Field(max_length=1024)] = ""


class RunStarted(BaseModel):
    fqrn: str
    deployment: str
    flow_run_id: str
    idempotency_key: str
    parameters: dict[str, object]
