"""Make a repository equal to its bucket's `cvmfs/` area: read the bucket's truth, plan, apply.

Events only say which keys changed; they arrive duplicated, late and out of order, so nothing
here replays them. For each affected key the bucket is asked what is there *now* (HEAD, or a
listing for a backfill), that state is compared with the provenance of the published path
(ETag and size), and only the difference is applied to one transaction.

Mapping: `cvmfs/<path>` → `/<path>`. Tarball convention: an object named
`cvmfs/<dir>.cvmfs.tar` (or `.cvmfs.tar.gz`, `.cvmfs.tgz`, `.cvmfs.tar.xz`, `.cvmfs.tar.zst`)
is unpacked into `/<dir>/`, replacing that tree whenever the object changes; deleting the
object removes the tree.
"""

from __future__ import annotations

import collections
import io
import itertools
from collections.abc import Iterable, Iterator, Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Literal

from botocore.exceptions import ClientError

from bridge.errors import RejectedMessage
from bridge.s3_events import KEY_PREFIX, repository_path_for_key
from cvmfs.errors import NotFoundError
from cvmfs.tarball import ImportStats, TarballError, TarPolicy, import_tarball
from cvmfs.transaction import Transaction
from service.object_metadata import SNIFF_BYTES, attributes_from_metadata
from service.repositories import FileProvenance

if TYPE_CHECKING:
    from mypy_boto3_s3 import S3Client

TARBALL_SUFFIXES = (".cvmfs.tar", ".cvmfs.tar.gz", ".cvmfs.tgz", ".cvmfs.tar.xz", ".cvmfs.tar.zst")
PART_BYTES = 8 * 1024 * 1024  # ranged GETs: one part in memory per stream
HEAD_WORKERS = 10  # botocore keeps 10 connections per client; more threads only reconnect


class SyncError(Exception):
    """A change that cannot be applied as uploaded; the reason says what the user can fix."""


@dataclass(frozen=True)
class BucketObject:
    key: str
    etag: str
    size: int
    last_modified: int
    version_id: str | None = None
    metadata: Mapping[str, str] = field(default_factory=dict)  # None of it when listed

    @property
    def is_directory_marker(self) -> bool:
        return self.key.endswith("/") and self.size == 0


@dataclass(frozen=True)
class Put:
    key: str
    path: str
    tarball: bool
    obj: BucketObject
    kind: Literal["put"] = "put"


@dataclass(frozen=True)
class Remove:
    key: str
    path: str
    tarball: bool
    kind: Literal["remove"] = "remove"


Change = Put | Remove


@dataclass(frozen=True)
class Refused:
    key: str
    reason: str


@dataclass
class Plan:
    changes: list[Change] = field(default_factory=list)
    refused: list[Refused] = field(default_factory=list)
    unchanged: int = 0

    def refusing(self, key: str, reason: str) -> Plan:
        """This plan without the change of `key`, which is refused with `reason` instead."""
        return Plan(
            changes=[c for c in self.changes if c.key != key],
            refused=[*self.refused, Refused(key, reason)],
            unchanged=self.unchanged,
        )


class TarballRefused(Exception):
    """An uploaded tarball breaks the import rules; the transaction it was applied to is
    spoiled (entries before the refused one are in it) and must be discarded."""

    def __init__(self, key: str, reason: str) -> None:
        super().__init__(f"{key}: {reason}")
        self.key = key
        self.reason = reason


def tarball_directory(path: str) -> str | None:
    """`/sw/gcc.cvmfs.tar.gz` → `/sw/gcc`; None when `path` is not a tarball by convention."""
    for suffix in TARBALL_SUFFIXES:
        if path.endswith(suffix) and len(path) > len(suffix) + 1:
            return path[: -len(suffix)]
    return None


def target_of(key: str) -> tuple[str, bool]:
    """Repository path of a key and whether it is an unpacked tarball; RejectedMessage if unsafe."""
    path = repository_path_for_key(key)
    directory = tarball_directory(path)
    return (directory, True) if directory is not None else (path, False)


def _etag(raw: str) -> str:
    return raw.strip('"')


def head_object(s3: S3Client, bucket: str, key: str) -> BucketObject | None:
    try:
        head = s3.head_object(Bucket=bucket, Key=key)
    except ClientError as error:
        if error.response.get("Error", {}).get("Code") in ("404", "NoSuchKey", "NotFound"):
            return None
        raise
    return BucketObject(
        key=key,
        etag=_etag(head["ETag"]),
        size=head["ContentLength"],
        last_modified=int(head["LastModified"].timestamp()),
        version_id=head.get("VersionId"),
        metadata=dict(head.get("Metadata", {})),
    )


def head_objects(s3: S3Client, bucket: str, keys: Iterable[str]) -> dict[str, BucketObject | None]:
    """The current state of each key (None = absent), asked in parallel."""
    unique = sorted(set(keys))
    with ThreadPoolExecutor(HEAD_WORKERS) as pool:
        states = pool.map(lambda key: head_object(s3, bucket, key), unique)
        return dict(zip(unique, states, strict=True))


def list_objects(s3: S3Client, bucket: str, prefix: str = KEY_PREFIX) -> Iterator[BucketObject]:
    paginator = s3.get_paginator("list_objects_v2")
    for page in paginator.paginate(Bucket=bucket, Prefix=prefix):
        for item in page.get("Contents", []):
            yield BucketObject(
                key=item["Key"],
                etag=_etag(item["ETag"]),
                size=item["Size"],
                last_modified=int(item["LastModified"].timestamp()),
            )


def plan_changes(
    truth: Mapping[str, BucketObject | None],
    published: Mapping[str, FileProvenance],
    max_object_bytes: int | None = None,
) -> Plan:
    """What to do so the repository shows `truth` for these keys.

    `published` maps repository paths to their provenance. A key whose object is absent is
    removed (even without provenance: the path may come from an earlier, lost record); a key
    whose ETag and size match its provenance is left alone; an object larger than
    `max_object_bytes` is refused (what the repository has at its path stays).
    """
    plan = Plan()
    for key in sorted(truth):
        obj = truth[key]
        try:
            path, tarball = target_of(key)
        except RejectedMessage as refusal:
            plan.refused.append(Refused(key, str(refusal)))
            continue
        if obj is None:
            plan.changes.append(Remove(key=key, path=path, tarball=tarball))
            continue
        if obj.is_directory_marker:
            plan.unchanged += 1
            continue
        if max_object_bytes is not None and obj.size > max_object_bytes:
            reason = (
                f"object is {obj.size} bytes, above the limit of {max_object_bytes} "
                "(settings sync.max_object_bytes): split it or ask the operators"
            )
            plan.refused.append(Refused(key, reason))
            continue
        record = published.get(path)
        if record is not None and (record.s3_key, record.etag, record.size_bytes) == (
            key,
            obj.etag,
            obj.size,
        ):
            plan.unchanged += 1
            continue
        plan.changes.append(Put(key=key, path=path, tarball=tarball, obj=obj))
    return plan


class S3ObjectStream(io.RawIOBase):
    """One object version read front to back in ranged parts (bounded memory, any size).

    Every part is fetched with If-Match on the planned ETag, so an object replaced mid-read
    fails loudly instead of mixing two versions.
    """

    def __init__(self, s3: S3Client, bucket: str, obj: BucketObject, first: bytes = b"") -> None:
        self._s3, self._bucket, self._obj = s3, bucket, obj
        self._buffer = first
        self._offset = len(first)

    def readable(self) -> bool:
        return True

    def _fetch(self) -> bytes:
        end = min(self._offset + PART_BYTES, self._obj.size) - 1
        response = self._s3.get_object(
            Bucket=self._bucket,
            Key=self._obj.key,
            Range=f"bytes={self._offset}-{end}",
            IfMatch=f'"{self._obj.etag}"',
        )
        data = response["Body"].read()
        self._offset += len(data)
        if not data:
            raise SyncError(f"{self._obj.key} ended at {self._offset} B, expected {self._obj.size}")
        return data

    def readinto(self, target: memoryview) -> int:  # type: ignore[override]
        if not self._buffer:
            if self._offset >= self._obj.size:
                return 0
            self._buffer = self._fetch()
        size = min(len(target), len(self._buffer))
        target[:size] = self._buffer[:size]
        self._buffer = self._buffer[size:]
        return size


def with_metadata(s3: S3Client, bucket: str, plan: Plan) -> Plan:
    """Listings carry no user metadata (modes, mtimes): HEAD the objects about to be added."""
    puts = [c for c in plan.changes if isinstance(c, Put)]
    heads = head_objects(s3, bucket, [put.key for put in puts])
    changes: list[Change] = [c for c in plan.changes if isinstance(c, Remove)]
    for put in puts:
        current = heads[put.key]
        if current is None:  # deleted since the listing
            changes.append(Remove(key=put.key, path=put.path, tarball=put.tarball))
        else:
            changes.append(Put(key=put.key, path=put.path, tarball=put.tarball, obj=current))
    return Plan(changes=changes, refused=plan.refused, unchanged=plan.unchanged)


def first_part(s3: S3Client, bucket: str, obj: BucketObject) -> bytes:
    """Prefetched in parallel: the whole of a small object, the first part of a large one."""
    if obj.size == 0:
        return b""
    return S3ObjectStream(s3, bucket, obj)._fetch()


@dataclass
class ApplyReport:
    added: list[Put] = field(default_factory=list)
    removed: list[Remove] = field(default_factory=list)
    refused: list[Refused] = field(default_factory=list)
    # What each published tarball's import changed or left out (special files skipped by
    # policy, setuid/setgid stripped), for the run's artifact.
    tarball_stats: dict[str, ImportStats] = field(default_factory=dict)


def _prune_empty_parents(txn: Transaction, path: str) -> None:
    """Directories left empty by a removal disappear (S3 has no directories of its own)."""
    parent = path.rsplit("/", 1)[0]
    while parent:
        try:
            if txn.listdir(parent):
                return
        except NotFoundError:
            return
        txn.remove(parent, missing_ok=True)
        parent = parent.rsplit("/", 1)[0]


def apply_changes(
    txn: Transaction,
    s3: S3Client,
    bucket: str,
    plan: Plan,
    prefetch: int = 8,
    tar_policy: TarPolicy | None = None,
) -> ApplyReport:
    """Removals first, then additions; downloads are prefetched `prefetch` objects ahead."""
    report = ApplyReport(refused=list(plan.refused))
    for change in plan.changes:
        if isinstance(change, Remove):
            txn.remove(change.path, missing_ok=True)
            _prune_empty_parents(txn, change.path)
            report.removed.append(change)
    puts = [c for c in plan.changes if isinstance(c, Put)]
    with ThreadPoolExecutor(prefetch) as pool:
        # At most `prefetch` first parts in memory: submit the next as each one is consumed.
        upcoming = iter(puts)
        window = collections.deque(
            pool.submit(first_part, s3, bucket, put.obj)
            for put in itertools.islice(upcoming, prefetch)
        )
        for put in puts:
            first = window.popleft().result()
            following = next(upcoming, None)
            if following is not None:
                window.append(pool.submit(first_part, s3, bucket, following.obj))
            stream = io.BufferedReader(S3ObjectStream(s3, bucket, put.obj, first), PART_BYTES)
            if put.tarball:
                txn.remove(put.path, missing_ok=True)
                try:
                    stats = import_tarball(txn, stream, put.path, policy=tar_policy)
                except TarballError as error:
                    raise TarballRefused(put.key, str(error)) from error
                report.tarball_stats[put.key] = stats
            else:
                attributes = attributes_from_metadata(put.obj.metadata, first[:SNIFF_BYTES])
                mtime = attributes.mtime if attributes.mtime is not None else put.obj.last_modified
                txn.add_file(put.path, stream, mode=attributes.mode, mtime=mtime)
            report.added.append(put)
    return report
