"""Repository check: re-hash every object reachable from a revision and check every reference.

`fsck(reader)` never stops at the first problem; it returns them all in a report.
"""

from __future__ import annotations

import os
import tempfile
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

from cvmfs.catalog import (
    SCHEMA_REVISION_SPECIAL_FILES,
    SPECIAL_FILE_FLAGS,
    STATISTICS_FIELDS,
    Catalog,
    DirectoryEntry,
    NestedCatalogRef,
)
from cvmfs.errors import CvmfsError, IntegrityError
from cvmfs.objects import ContentHash, ObjectSuffix
from cvmfs.reader import RepositoryReader
from cvmfs.reflog import REFLOG_KEY, Ref, ReflogDb, RefType


@dataclass(frozen=True)
class Problem:
    where: str  # object key, path or file name
    message: str

    def __str__(self) -> str:
        return f"{self.where}: {self.message}"


@dataclass
class FsckReport:
    problems: list[Problem] = field(default_factory=list)
    revisions_checked: list[str] = field(default_factory=list)  # root catalog hashes
    signatures_verified: bool = False  # whether the reader checked whitelist and manifest
    catalogs_checked: int = 0
    entries_checked: int = 0
    objects_checked: int = 0

    @property
    def ok(self) -> bool:
        return not self.problems

    def add(self, where: str, message: str) -> None:
        self.problems.append(Problem(where, message))


class _Checker:
    def __init__(
        self, reader: RepositoryReader, report: FsckReport, check_content: bool, workers: int
    ) -> None:
        self.reader = reader
        self.report = report
        self.check_content = check_content
        self.workers = workers
        self.objects: dict[str, int | None] = {}  # key -> inflated size (None = bad)
        # Objects are re-hashed after the catalog walk, on `workers` threads (zlib and hashlib
        # release the GIL); what each reference expects is kept until then.
        self.pending: dict[str, tuple[ContentHash, str, bool, str]] = {}
        self.expected_sizes: list[tuple[str, int, str]] = []
        self.catalogs_seen: set[tuple[ContentHash, str]] = set()

    def check_object(
        self,
        content_hash: ContentHash,
        suffix: str,
        *,
        compressed: bool = True,
        expected_size: int | None = None,
        where: str | None = None,
    ) -> None:
        key = content_hash.object_key(suffix)
        if key not in self.objects and key not in self.pending:
            self.pending[key] = (content_hash, suffix, compressed, where or key)
        if expected_size is not None:
            self.expected_sizes.append((key, expected_size, where or key))

    def _inflated_size(self, content_hash: ContentHash, suffix: str, compressed: bool) -> int:
        inflated = 0
        for piece in self.reader.iter_object(content_hash, suffix, compressed=compressed):
            inflated += len(piece)
        return inflated

    def run_pending(self) -> None:
        """Re-hash and inflate every queued object, then compare the sizes references expect."""
        jobs = list(self.pending.items())
        self.pending.clear()
        with ThreadPoolExecutor(max_workers=self.workers) as pool:
            futures = [
                (key, where, pool.submit(self._inflated_size, h, suffix, compressed))
                for key, (h, suffix, compressed, where) in jobs
            ]
            for key, where, future in futures:
                try:
                    self.objects[key] = future.result()
                except CvmfsError as exc:
                    self.report.add(where, str(exc))
                    self.objects[key] = None
                self.report.objects_checked += 1
        for key, expected_size, where in self.expected_sizes:
            size = self.objects.get(key)
            if size is not None and size != expected_size:
                self.report.add(
                    where,
                    f"object {key} inflates to {size} bytes, the catalog records {expected_size}",
                )
        self.expected_sizes.clear()

    def check_revision(self, view: RepositoryReader, *, is_head: bool) -> None:
        self.report.revisions_checked.append(view.root_hash.hex)
        self.check_catalog(view, view.root_hash, "", view.root_size, None, is_head=is_head)

    def check_catalog(
        self,
        view: RepositoryReader,
        content_hash: ContentHash,
        mountpoint: str,
        recorded_size: int | None,
        parent: Catalog | None,
        *,
        is_head: bool = False,
    ) -> dict[str, int] | None:
        """Check one catalog and its subtree; returns its self+subtree counters if readable."""
        where = f"catalog {content_hash.hex} ({mountpoint or '/'})"
        try:
            loaded = view._load(content_hash, mountpoint)
        except CvmfsError as exc:
            self.report.add(where, str(exc))
            return None
        catalog = loaded.catalog
        first_visit = (content_hash, mountpoint) not in self.catalogs_seen
        self.catalogs_seen.add((content_hash, mountpoint))
        if first_visit:
            self.report.catalogs_checked += 1
        self.objects[content_hash.object_key(ObjectSuffix.CATALOG)] = loaded.uncompressed_size
        if recorded_size is not None and recorded_size != loaded.uncompressed_size:
            self.report.add(
                where,
                f"uncompressed size {loaded.uncompressed_size} differs from the "
                f"{recorded_size} recorded by its parent/manifest",
            )
        if is_head:
            manifest = view.manifest
            if catalog.revision != manifest.revision:
                self.report.add(
                    where,
                    f"revision {catalog.revision} differs from manifest S {manifest.revision}",
                )
            if manifest.publish_timestamp and catalog.last_modified > manifest.publish_timestamp:
                self.report.add(where, "last_modified is later than the manifest timestamp T")
        if "schema_revision" not in catalog.properties or "revision" not in catalog.properties:
            self.report.add(where, "schema_revision or revision property missing (spec §2.3)")
        statistics = catalog.statistics()
        if not first_visit:  # shared with a revision checked before
            return statistics
        entries = self.read_entries(catalog, where)
        counted = self.check_rows(entries)
        if counted["special"] and catalog.schema_revision < SCHEMA_REVISION_SPECIAL_FILES:
            self.report.add(
                where,
                f"holds special files but declares schema revision {catalog.schema_revision}; "
                f"they need revision {SCHEMA_REVISION_SPECIAL_FILES} or later (spec §2.2)",
            )
        nested = catalog.nested_catalogs()
        counted["nested"] = len(nested)
        self.check_structure(catalog, entries, nested, where, mountpoint, parent)
        subtree = dict.fromkeys(STATISTICS_FIELDS, 0)
        subtree_known = True  # false once a child catalog cannot be read
        for ref in nested:
            child = self.check_catalog(view, ref.content_hash, ref.path, ref.size, catalog)
            if child is None:
                subtree_known = False
            else:
                for name in STATISTICS_FIELDS:
                    subtree[name] += child.get(f"self_{name}", 0)
                    subtree[name] += child.get(f"subtree_{name}", 0)
        for name in STATISTICS_FIELDS:
            for scope, value in (("self", counted[name]), ("subtree", subtree[name])):
                recorded = statistics.get(f"{scope}_{name}")
                if recorded is None:
                    self.report.add(where, f"statistics counter {scope}_{name} missing")
                elif recorded != value and (scope == "self" or subtree_known):
                    self.report.add(
                        where, f"statistics {scope}_{name} is {recorded}, counted {value}"
                    )
        return statistics

    def read_entries(self, catalog: Catalog, where: str) -> list[DirectoryEntry]:
        def report(message: str) -> None:
            self.report.add(where, message)

        try:
            return [row.entry for row in catalog.rows(on_problem=report)]
        except CvmfsError as exc:
            report(str(exc))
            return []

    def check_structure(
        self,
        catalog: Catalog,
        entries: list[DirectoryEntry],
        nested: list[NestedCatalogRef],
        where: str,
        mountpoint: str,
        parent: Catalog | None,
    ) -> None:
        """Nested-catalog links, directory link counts and hard-link groups (spec §2.4-§2.9)."""
        if mountpoint:
            root = catalog.lookup(mountpoint)
            if root is None or not root.is_nested_root:
                self.report.add(where, "no nested-root row (flag 32) at its mount point")
            transition = parent.lookup(mountpoint) if parent is not None else None
            if transition is None or not transition.is_nested_mountpoint:
                self.report.add(where, "parent has no transition-point row (flag 2)")
            elif root is not None and transition.linkcount != root.linkcount:
                self.report.add(
                    where,
                    f"transition point link count {transition.linkcount} differs from the "
                    f"nested root's {root.linkcount}",
                )
        elif catalog.root_prefix is not None:
            self.report.add(where, "the root catalog must not have a root_prefix (spec §2.3)")
        transitions = {e.path for e in entries if e.is_nested_mountpoint}
        refs = {ref.path for ref in nested}
        for path in sorted(transitions - refs):
            self.report.add(path, "transition point (flag 2) without a nested_catalogs row")
        for path in sorted(refs - transitions):
            self.report.add(path, "nested_catalogs row without a transition point (flag 2)")
        subdirs: dict[str, int] = {}
        for entry in entries:
            if entry.is_dir and entry.path != mountpoint and entry.path:
                parent_path = entry.path.rsplit("/", 1)[0]
                subdirs[parent_path] = subdirs.get(parent_path, 0) + 1
        groups: dict[int, list[DirectoryEntry]] = {}
        for entry in entries:
            if entry.is_dir and not entry.is_nested_mountpoint:
                wanted = 2 + subdirs.get(entry.path, 0)
                if entry.linkcount != wanted:
                    self.report.add(
                        entry.path or "/",
                        f"directory link count {entry.linkcount}, expected {wanted} "
                        "(2 + subdirectories, spec §2.4)",
                    )
            elif entry.linkcount == 0:
                self.report.add(entry.path, "link count 0 (spec §2.4: never 0)")
            if entry.hardlink_group:
                groups.setdefault(entry.hardlink_group, []).append(entry)
        for group, members in sorted(groups.items()):
            first = members[0]
            for member in members:
                if (member.content_hash, member.size, member.linkcount) != (
                    first.content_hash,
                    first.size,
                    len(members),
                ):
                    self.report.add(
                        member.path,
                        f"hard-link group {group}: members must share hash and size, "
                        f"link count {len(members)}",
                    )

    def check_rows(self, entries: list[DirectoryEntry]) -> dict[str, int]:
        counted = dict.fromkeys(STATISTICS_FIELDS, 0)
        for entry in entries:
            self.report.entries_checked += 1
            counted["xattr"] += bool(entry.xattrs)
            if entry.is_dir:
                counted["dir"] += 1
            elif entry.is_symlink:
                counted["symlink"] += 1
            elif entry.is_regular:
                counted["regular"] += 1
                counted["file_size"] += entry.size
                if entry.is_chunked:
                    counted["chunked"] += 1
                    counted["chunked_size"] += entry.size
                    counted["chunks"] += len(entry.chunks)
                if entry.is_external:
                    counted["external"] += 1
                    counted["external_file_size"] += entry.size
                else:
                    self.check_file(entry)
            elif entry.is_special:
                counted["special"] += 1
                self.check_special(entry)
            else:
                self.report.add(entry.path, f"unknown file type in mode {entry.mode:#o}")
        return counted

    def check_special(self, entry: DirectoryEntry) -> None:
        """A device, FIFO or socket row as the stock publisher writes it (spec §2.4, §2.6)."""
        if entry.flags != SPECIAL_FILE_FLAGS:
            self.report.add(
                entry.path,
                f"{entry.special_kind} with flags {entry.flags}, expected {SPECIAL_FILE_FLAGS}",
            )
        if entry.content_hash is not None:
            self.report.add(entry.path, f"{entry.special_kind} with a content hash")
        if not entry.is_device and entry.size != 0:
            self.report.add(entry.path, f"{entry.special_kind} with size {entry.size}, expected 0")

    def check_file(self, entry: DirectoryEntry) -> None:
        where = entry.path
        if entry.is_chunked:
            offset = 0
            for chunk in entry.chunks:
                if chunk.offset != offset:
                    self.report.add(where, f"chunk at offset {chunk.offset}, expected {offset}")
                offset = chunk.offset + chunk.size
                if self.check_content:
                    self.check_object(
                        chunk.content_hash,
                        ObjectSuffix.PARTIAL,
                        compressed=entry.is_compressed,
                        expected_size=chunk.size,
                        where=where,
                    )
            if offset != entry.size:
                self.report.add(where, f"chunks cover {offset} bytes, the file has {entry.size}")
        elif entry.content_hash is None:
            self.report.add(where, "regular file with neither a content hash nor chunks")
        elif self.check_content:
            self.check_object(
                entry.content_hash,
                ObjectSuffix.FILE,
                compressed=entry.is_compressed,
                expected_size=entry.size,
                where=where,
            )


def _reflog_ahead_of_manifest(
    reader: RepositoryReader, mismatch: IntegrityError, report: FsckReport
) -> list[Ref]:
    """A reflog whose hash is not the manifest's `Y` but that lists every object the manifest
    names is what a publish interrupted between its reflog write and its manifest write leaves
    (the reflog only grows; the two files cannot be replaced atomically together). It is
    accepted; any other mismatch is a problem. (Added by the writer engineer, see writer.py.)"""
    manifest = reader.manifest
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "reflog.db"
        path.write_bytes(reader.storage.get(REFLOG_KEY))
        with ReflogDb(path) as db:
            refs = db.refs()
    listed = {ref.content_hash for ref in refs}
    named = (
        manifest.root_catalog_hash,
        manifest.history_hash,
        manifest.certificate_hash,
        manifest.metainfo_hash,
    )
    if any(h is not None and h not in listed for h in named):
        report.add(REFLOG_KEY, str(mismatch))
    return refs


def fsck(
    reader: RepositoryReader,
    *,
    all_revisions: bool = False,
    check_content: bool = True,
    workers: int | None = None,
) -> FsckReport:
    """Check the reader's revision; with `all_revisions`, also every revision named by a tag or
    listed in the reflog, and every other object the reflog lists.

    Objects are re-hashed on `workers` threads (default: one per CPU).
    """
    report = FsckReport(signatures_verified=reader.signatures_verified)
    checker = _Checker(reader, report, check_content, workers or os.cpu_count() or 1)
    manifest = reader.manifest
    for content_hash, suffix in (
        (manifest.certificate_hash, ObjectSuffix.CERTIFICATE),
        (manifest.history_hash, ObjectSuffix.HISTORY),
        (manifest.metainfo_hash, ObjectSuffix.METAINFO),
    ):
        if content_hash is not None:
            checker.check_object(content_hash, suffix)
    refs: list[Ref] = []
    if manifest.reflog_hash is not None:
        try:
            try:
                refs = reader.reflog()
            except IntegrityError as exc:
                refs = _reflog_ahead_of_manifest(reader, exc, report)
            for ref in refs:
                if not reader.storage.exists(ref.object_key):
                    report.add(ref.object_key, "listed in the reflog but missing")
        except CvmfsError as exc:
            report.add(".cvmfsreflog", str(exc))
    head = reader.root_hash == manifest.root_catalog_hash
    checker.check_revision(reader, is_head=head)
    if all_revisions:
        try:
            tags = reader.tags()
        except CvmfsError as exc:
            report.add("history", str(exc))
            tags = []
        seen = {reader.root_hash}
        for tag in tags:
            if tag.root_hash in seen:
                continue
            seen.add(tag.root_hash)
            try:
                view = reader.at_root_hash(tag.root_hash, tag.size or None)
            except CvmfsError as exc:
                report.add(f"tag {tag.name}", str(exc))
                continue
            checker.check_revision(view, is_head=False)
        check_reflog_objects(reader, checker, refs, seen)
    checker.run_pending()
    return report


def check_reflog_objects(
    reader: RepositoryReader, checker: _Checker, refs: list[Ref], seen: set[ContentHash]
) -> None:
    """Re-hash every object the reflog lists; root catalogs no tag names are checked as
    revisions too (nested catalogs, recognised by their root_prefix, as objects only)."""
    for ref in refs:
        if ref.type is not RefType.CATALOG:
            checker.check_object(
                ref.content_hash, ref.type.suffix, where=f"reflog {ref.type.label}"
            )
            continue
        if ref.content_hash in seen:
            continue
        seen.add(ref.content_hash)
        try:
            view = reader.at_root_hash(ref.content_hash)
        except CvmfsError as exc:
            checker.report.add(f"reflog catalog {ref.content_hash.hex}", str(exc))
            continue
        if view.root_catalog.root_prefix is None:
            checker.check_revision(view, is_head=False)
