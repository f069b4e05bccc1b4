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
from bridge.s3_events import KEY_PREFIX
from buckets.bucket_rules import (
    Refused,
    Target,
    directories_of,
    key_verdict,
    resolve_collisions,
    target_of,
)
from buckets.object_metadata import SNIFF_BYTES, attributes_from_metadata
from cvmfs.errors import InvalidPathError, NotFoundError
from cvmfs.paths import ancestors, is_within
from cvmfs.tarball import ImportStats, TarballError, TarPolicy, import_tarball
from cvmfs.transaction import Transaction, TransactionError
from service.repositories import FileProvenance

if TYPE_CHECKING:
    from mypy_boto3_s3 import S3Client

PART_BYTES = 8 * 1024 * 1024  # ranged GETs: one part in memory per stream
HEAD_WORKERS = 10  # botocore keeps 10 connections per client; more threads only reconnect


class SyncError(Exception):
    """A change that cannot be applied as uploaded; the reason says what the user can fix."""


class ObjectChanged(SyncError):
    """The object was replaced or deleted after it was read for the plan (GET answered 404
    or 412 to If-Match): read it again and decide again; its own event follows anyway."""

    def __init__(self, key: str) -> None:
        super().__init__(f"{key} changed while it was being published")
        self.key = key


@dataclass(frozen=True)
class BucketObject:
    key: str
    etag: str
    size: int
    last_modified: int
    version_id: str | None = None
    metadata: Mapping[str, str] = field(default_factory=dict)  # None of it when listed
    headed: bool = False  # read with HEAD (metadata complete), not from a listing

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


@dataclass
class PlanInputs:
    """Everything a plan is decided from, kept so that it can be decided again mid-publish.

    `truth`: keys read from the bucket in this run (None: absent). `published`: provenance of
    the repository's paths. `stored`: refusals recorded by earlier runs, by key; with the
    provenance they are what the service knows the bucket holds beyond `truth`.
    """

    fqrn: str
    truth: dict[str, BucketObject | None]
    published: dict[str, FileProvenance]
    stored: dict[str, Refused] = field(default_factory=dict)
    max_object_bytes: int | None = None
    refused_now: dict[str, Refused] = field(default_factory=dict)  # while applying
    # Published paths left out of `published` because the batch cannot change them
    # (buckets/plan_scope.py): counted as unchanged.
    unchanged_elsewhere: int = 0


@dataclass
class Plan:
    changes: list[Change] = field(default_factory=list)
    refused: list[Refused] = field(default_factory=list)
    unchanged: int = 0
    ignored: list[str] = field(default_factory=list)  # folder objects (`cvmfs/dir/`)
    needs_head: list[str] = field(default_factory=list)  # known keys to read before publishing
    inputs: PlanInputs | None = None

    def refusing(self, refusal: Refused) -> Plan:
        """The plan decided again with `refusal` (found while applying) added."""
        assert self.inputs is not None
        self.inputs.refused_now[refusal.key] = refusal
        return plan_changes(self.inputs)


class ChangeRefused(Exception):
    """One change cannot be applied as uploaded (a tarball that escapes, a tree operation that
    does not fit); the transaction it was applied to is spoiled (part of the change may be in
    it) and must be discarded, then the plan decided again without that key."""

    def __init__(self, key: str, reason: str, etag: str | None = None) -> None:
        super().__init__(f"{key}: {reason}")
        self.key = key
        self.reason = reason
        self.etag = etag


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
        headed=True,
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


def _known_targets(inputs: PlanInputs) -> dict[str, Target | Refused | None]:
    """Every key believed in the bucket, judged alone: fresh ones from `truth`, the rest from
    the provenance (published, so they passed) and the stored refusals."""
    verdicts: dict[str, Target | Refused | None] = {}
    for key, obj in inputs.truth.items():
        if obj is None:
            continue
        stored = inputs.stored.get(key)
        if stored is not None and stored.kind == "content" and stored.etag == obj.etag:
            verdicts[key] = stored  # the same object was judged by its content already
            continue
        verdicts[key] = key_verdict(
            key, obj.size, fqrn=inputs.fqrn, max_object_bytes=inputs.max_object_bytes
        )
    for record in inputs.published.values():
        if record.s3_key not in inputs.truth:
            verdicts[record.s3_key] = key_verdict(
                record.s3_key, record.size_bytes, fqrn=inputs.fqrn
            )
    for key, stored in inputs.stored.items():
        if key in inputs.truth or key in verdicts:
            continue
        if stored.kind == "pair":  # decided again against the keys present now
            verdicts[key] = key_verdict(key, 1, fqrn=inputs.fqrn)
        else:
            verdicts[key] = stored
    for key, refusal in inputs.refused_now.items():
        verdicts[key] = refusal
    return verdicts


def _path_of(key: str) -> str | None:
    try:
        return target_of(key)[0]
    except RejectedMessage:
        return None


def plan_changes(inputs: PlanInputs) -> Plan:
    """What to do so the repository shows the bucket minus its refusals (`bucket_rules`).

    A key present and kept is put unless its provenance matches (ETag and size; for a key
    known only from the registry, its key); a refused key whose content the repository shows
    is removed (the key that wins its path, if any, is put again); an absent key's path is removed
    when its provenance names it, or when it has none and no kept key needs the path (the
    record may have been lost). Kept keys known only from the registry and without provenance
    are listed in `needs_head`: read them and decide again.
    """
    plan = Plan(inputs=inputs, unchanged=inputs.unchanged_elsewhere)
    verdicts = _known_targets(inputs)
    kept, collisions = resolve_collisions(v for v in verdicts.values() if isinstance(v, Target))
    refused = {v.key: v for v in verdicts.values() if isinstance(v, Refused)}
    refused.update((r.key, r) for r in collisions)
    plan.ignored = sorted(k for k, v in verdicts.items() if v is None)
    owners = {t.path: t for t in kept}
    tarball_dirs = [t.path for t in kept if t.tarball]
    needed_dirs = directories_of(t.path for t in kept)
    published = inputs.published

    for target in kept:
        record = published.get(target.path)
        obj = inputs.truth.get(target.key)
        if obj is None:  # known from the registry only
            if record is not None and record.s3_key == target.key:
                plan.unchanged += 1
            else:
                plan.needs_head.append(target.key)
            continue
        if record is not None and (record.s3_key, record.etag, record.size_bytes) == (
            target.key,
            obj.etag,
            obj.size,
        ):
            plan.unchanged += 1
            continue
        plan.changes.append(Put(key=target.key, path=target.path, tarball=target.tarball, obj=obj))

    # The repository shows a key it must not (refused now, or gone from the bucket): remove
    # its path first; a kept key that owns the path now puts it again afterwards.
    for refusal in refused.values():
        path = _path_of(refusal.key)
        record = published.get(path) if path is not None else None
        if path is not None and record is not None and record.s3_key == refusal.key:
            plan.changes.append(_removal(refusal.key, path))
    for key, obj in sorted(inputs.truth.items()):
        if obj is not None or key in verdicts:
            continue
        path = _path_of(key)
        if path is None:
            continue
        record = published.get(path)
        if record is not None:
            if record.s3_key == key:
                plan.changes.append(_removal(key, path))
            continue
        # No provenance (a lost record?): remove unless a kept key needs the path, or the
        # key could never have been published.
        if not isinstance(key_verdict(key, 1, fqrn=inputs.fqrn), Target):
            continue
        kept_here = path in owners or path in needed_dirs
        if not kept_here and not any(is_within(path, d) for d in tarball_dirs):
            plan.changes.append(_removal(key, path))

    plan.refused = sorted(refused.values(), key=lambda r: r.key)
    plan.changes.sort(key=lambda c: (c.kind, c.key))
    return plan


def _removal(key: str, path: str) -> Remove:
    try:
        tarball = target_of(key)[1]
    except RejectedMessage:
        tarball = False
    return Remove(key=key, path=path, tarball=tarball)


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
        try:
            response = self._s3.get_object(
                Bucket=self._bucket,
                Key=self._obj.key,
                Range=f"bytes={self._offset}-{end}",
                IfMatch=f'"{self._obj.etag}"',
            )
        except ClientError as error:
            status = error.response.get("ResponseMetadata", {}).get("HTTPStatusCode")
            if status in (404, 412):
                raise ObjectChanged(self._obj.key) from error
            raise
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


def read_what_the_plan_needs(s3: S3Client, bucket: str, plan: Plan) -> Plan:
    """HEAD what the plan cannot decide or apply without, then decide again: keys known from
    the registry only that are to be published, and listed objects about to be added
    (listings carry no user metadata: modes, mtimes). Bounded: each key is read once."""
    for _ in range(3):
        assert plan.inputs is not None
        wanted = [*plan.needs_head]
        wanted += [c.key for c in plan.changes if isinstance(c, Put) and not c.obj.headed]
        if not wanted:
            return plan
        plan.inputs.truth.update(head_objects(s3, bucket, wanted))
        plan = plan_changes(plan.inputs)
    return plan


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


def _make_room(txn: Transaction, puts: list[Put]) -> None:
    """Whatever the repository holds where a put needs a directory (a file on the way) or a
    file (a directory) is stale: no kept key needs it (`bucket_rules`), so it goes first."""
    checked: set[str] = set()
    for put in puts:
        for directory in ancestors(put.path)[1:]:
            if directory in checked:
                continue
            checked.add(directory)
            row = txn.stat(directory)
            if row is not None and not row.is_dir:
                txn.remove(directory)
        if not put.tarball:
            row = txn.stat(put.path)
            if row is not None and row.is_dir:
                txn.remove(put.path)


def apply_changes(
    txn: Transaction,
    s3: S3Client,
    bucket: str,
    plan: Plan,
    prefetch: int = 8,
    tar_policy: TarPolicy | None = None,
) -> ApplyReport:
    """Removals first, then additions; downloads are prefetched `prefetch` objects ahead.

    Raises ChangeRefused for a change that cannot be applied as uploaded (the transaction is
    then spoiled) and ObjectChanged for an object replaced since the plan read it.
    """
    report = ApplyReport(refused=list(plan.refused))
    for change in plan.changes:
        if isinstance(change, Remove):
            txn.remove(change.path, missing_ok=True)
            _prune_empty_parents(txn, change.path)
            report.removed.append(change)
    puts = [c for c in plan.changes if isinstance(c, Put)]
    _make_room(txn, puts)
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
            try:
                if put.tarball:
                    txn.remove(put.path, missing_ok=True)
                    stats = import_tarball(txn, stream, put.path, policy=tar_policy)
                    report.tarball_stats[put.key] = stats
                else:
                    attributes = attributes_from_metadata(put.obj.metadata, first[:SNIFF_BYTES])
                    mtime = (
                        attributes.mtime if attributes.mtime is not None else put.obj.last_modified
                    )
                    txn.add_file(put.path, stream, mode=attributes.mode, mtime=mtime)
            except TarballError as error:
                raise ChangeRefused(put.key, f"tarball refused: {error}", put.obj.etag) from error
            except (InvalidPathError, TransactionError, NotFoundError) as error:
                raise ChangeRefused(
                    put.key, f"cannot be published: {error}", put.obj.etag
                ) from error
            report.added.append(put)
    return report
