"""Commit = merge: what a publisher changed under its leased path, applied to the current revision.

Upstream: cvmfs/receiver/commit_processor.cc and catalog_merge_tool_impl.h. With C_O the
publisher's old root catalog, C_N its new one and C_G the repository's current root, the
differences C_O → C_N under the leased path are applied to C_G (which may have moved on
through other leases or the bucket sync) and the result is signed with the service's keys.
Changes outside the leased path are not applied (the lease does not cover them).

The diff walks both trees directory by directory, skipping nested catalogs whose hash did not
change; the apply step goes through `cvmfs.transaction`, so nested catalogs (`.cvmfscatalog`),
chunked files, symlinks, hard links, xattrs and catalog statistics follow the writer's rules.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from typing import Literal

from cvmfs.catalog import DirectoryEntry
from cvmfs.errors import CvmfsError, NotFoundError
from cvmfs.objects import ContentHash, ObjectSuffix, object_path
from cvmfs.reader import RepositoryReader
from cvmfs.storage import Storage
from cvmfs.transaction import Transaction
from gateway.errors import GatewayError
from gateway.paths import LeasePath

ChangeKind = Literal["add", "replace", "remove", "metadata"]
MAX_LISTED_CHANGES = 200  # in the run's artifact; counts are always complete


@dataclass(frozen=True)
class Change:
    kind: ChangeKind
    path: str  # catalog form: '' is the root, '/a/b'
    entry: DirectoryEntry | None  # the new entry; None for a removal


@dataclass
class MergePlan:
    lease_path: LeasePath
    changes: list[Change] = field(default_factory=list)

    def counts(self) -> dict[str, int]:
        return dict(Counter(change.kind for change in self.changes))


def _catalog_form(lease_path: LeasePath) -> str:
    return "" if lease_path.path == "/" else lease_path.path


def _parent(path: str) -> str:
    return path.rsplit("/", 1)[0] if path else ""


def _stat(view: RepositoryReader, path: str) -> DirectoryEntry | None:
    try:
        return view.stat(path)
    except NotFoundError:
        return None


def _nested_hash(view: RepositoryReader, path: str) -> ContentHash | None:
    """The hash of the nested catalog mounted exactly at `path`, if one is."""
    if not path:
        return view.root_hash
    ref = view.catalog_for(_parent(path)).find_nested_for(path)
    return ref.content_hash if ref is not None and ref.path == path else None


def _dir_metadata(entry: DirectoryEntry) -> tuple[object, ...]:
    return (entry.mode, entry.mtime, entry.uid, entry.gid, dict(entry.xattrs))


def _leaf_identity(entry: DirectoryEntry) -> tuple[object, ...]:
    return (
        entry.mode,
        entry.size,
        entry.mtime,
        entry.mtimens,
        entry.uid,
        entry.gid,
        entry.flags,
        entry.content_hash,
        entry.symlink,
        entry.linkcount,
        bool(entry.hardlink_group),
        dict(entry.xattrs),
        entry.chunks,
    )


class _Differ:
    def __init__(self, old: RepositoryReader, new: RepositoryReader, plan: MergePlan) -> None:
        self.old = old
        self.new = new
        self.plan = plan

    def add_tree(self, entry: DirectoryEntry, kind: ChangeKind = "add") -> None:
        self.plan.changes.append(Change(kind, entry.path, entry))
        if entry.is_dir:
            for child in self.new.listdir(entry.path):
                self.add_tree(child)

    def compare(self, old: DirectoryEntry, new: DirectoryEntry) -> None:
        path = new.path
        if old.is_dir and new.is_dir:
            if _dir_metadata(old) != _dir_metadata(new):
                self.plan.changes.append(Change("metadata", path, new))
            old_nested, new_nested = _nested_hash(self.old, path), _nested_hash(self.new, path)
            if old_nested is not None and old_nested == new_nested:
                return  # the same catalog: nothing below changed
            old_children = {child.name: child for child in self.old.listdir(path)}
            new_children = {child.name: child for child in self.new.listdir(path)}
            for name in sorted(old_children.keys() - new_children.keys()):
                self.plan.changes.append(Change("remove", old_children[name].path, None))
            for name in sorted(new_children):
                if name in old_children:
                    self.compare(old_children[name], new_children[name])
                else:
                    self.add_tree(new_children[name])
        elif not old.is_dir and not new.is_dir:
            if _leaf_identity(old) != _leaf_identity(new):
                self.plan.changes.append(Change("replace", path, new))
        else:  # a directory became a file or the other way round
            self.plan.changes.append(Change("remove", path, None))
            self.add_tree(new)


def plan_merge(old: RepositoryReader, new: RepositoryReader, lease_path: LeasePath) -> MergePlan:
    """The changes from `old` to `new` at and below the leased path."""
    plan = MergePlan(lease_path)
    root = _catalog_form(lease_path)
    old_entry, new_entry = _stat(old, root), _stat(new, root)
    differ = _Differ(old, new, plan)
    if new_entry is None:
        if old_entry is not None:
            plan.changes.append(Change("remove", root, None))
    elif old_entry is None:
        differ.add_tree(new_entry)
    else:
        differ.compare(old_entry, new_entry)
    return plan


def required_objects(plan: MergePlan) -> dict[str, str]:
    """Storage key → the path needing it, for every object the new entries reference."""
    needed: dict[str, str] = {}
    for change in plan.changes:
        entry = change.entry
        if entry is None or not entry.is_regular:
            continue
        if entry.is_chunked:
            for chunk in entry.chunks:
                needed.setdefault(chunk.object_key, entry.path)
        elif entry.content_hash is not None:
            needed.setdefault(object_path(entry.content_hash, ObjectSuffix.FILE), entry.path)
    return needed


def check_objects_present(plan: MergePlan, storage: Storage) -> None:
    for key, path in required_objects(plan).items():
        if not storage.exists(key):
            raise GatewayError(
                f"commit refused: object {key} of {path or '/'} is not in the repository (its "
                "payload never arrived): publish again"
            )


def _refuse_unsupported(entry: DirectoryEntry) -> None:
    if entry.is_external or not entry.is_regular:
        raise GatewayError(
            f"commit refused: {entry.path} is an external file (or of an unknown type), which "
            "this gateway does not publish; remove it and publish again"
        )


def apply_plan(txn: Transaction, plan: MergePlan) -> None:
    """Apply the plan to a transaction on the current revision (removals are forgiving: what
    the publisher removed may already be gone)."""
    first_of_group: dict[tuple[str, int], str] = {}
    for change in plan.changes:
        path = change.path
        entry = change.entry
        try:
            if entry is None:
                if path:
                    txn.remove(path, missing_ok=True)
                continue
            current = txn.stat(path) if path else None
            if entry.is_dir:
                if current is not None and not current.is_dir:
                    txn.remove(path)
                txn.mkdir(
                    path,
                    mode=entry.mode & 0o7777,
                    mtime=entry.mtime,
                    uid=entry.uid,
                    gid=entry.gid,
                    xattrs=dict(entry.xattrs),
                )
                continue
            if current is not None and current.is_dir:
                txn.remove(path)
            if entry.is_symlink:
                txn.symlink(
                    path,
                    entry.symlink,
                    mtime=entry.mtime,
                    uid=entry.uid,
                    gid=entry.gid,
                    allow_variables=True,  # the publisher chose it: variant symlinks stay
                )
                continue
            if entry.is_special:
                # FIFOs, sockets, char/block devices as the stock publisher writes them
                # (catalog_sql.cc CreateDatabaseFlags: kFlagFile | kFlagFileSpecial, no
                # content; a device's number in `size`). A hard-linked one becomes a node of
                # its own: the writer links regular files only.
                txn.add_special_file(
                    path,
                    entry.mode,
                    rdev=entry.size if entry.is_device else 0,
                    mtime=entry.mtime,
                    uid=entry.uid,
                    gid=entry.gid,
                )
                continue
            _refuse_unsupported(entry)
            if entry.hardlink_group:
                group = (_parent(path), entry.hardlink_group)
                if group in first_of_group:
                    txn.link(first_of_group[group], path)
                    continue
                first_of_group[group] = path
            txn.add_stored_file(
                path,
                size=entry.size,
                content_hash=None if entry.is_chunked else entry.content_hash,
                chunks=[(c.offset, c.size, c.content_hash) for c in entry.chunks],
                compressed=entry.is_compressed,
                mode=entry.mode & 0o7777,
                mtime=entry.mtime,
                mtimens=entry.mtimens,
                uid=entry.uid,
                gid=entry.gid,
                xattrs=dict(entry.xattrs),
            )
        except CvmfsError as error:
            raise GatewayError(
                f"commit refused: {path or '/'} cannot be applied to the current revision ({error})"
            ) from error
