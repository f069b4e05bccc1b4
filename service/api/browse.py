"""Read-only views of a published repository for the API: directory listings and history.

History is what the repository itself records (tags, one per publish) plus a diff of the trees of
consecutive revisions and the provenance table; both are bounded so one call stays cheap.
"""

from __future__ import annotations

import datetime as dt
import stat
from collections import defaultdict
from collections.abc import Iterable
from typing import cast

from cvmfs.catalog import DirectoryEntry, normalize_path
from cvmfs.errors import InvalidPathError, NotFoundError
from cvmfs.history import TAG_TRUNK, TAG_TRUNK_PREVIOUS, Tag
from cvmfs.reader import RepositoryReader
from service.api.errors import BadRequest, NotFound
from service.api.models import (
    Change,
    Entry,
    EntryType,
    History,
    Listing,
    Revision,
    Source,
    SpecialKind,
    TagInfo,
)
from service.repositories import FileProvenance

# Trees larger than this are not diffed (a diff walks both revisions' catalogs).
MAX_DIFF_ENTRIES = 20_000
MAX_CHANGES_PER_REVISION = 500
_AUTOMATIC_TAGS = (TAG_TRUNK, TAG_TRUNK_PREVIOUS)

# What decides that a path changed between two revisions.
Fingerprint = tuple[EntryType, int, int, int, str, str]


def _when(seconds: int) -> dt.datetime:
    return dt.datetime.fromtimestamp(seconds, dt.UTC)


def entry_type(entry: DirectoryEntry) -> EntryType:
    if entry.is_dir:
        return "directory"
    if entry.is_symlink:
        return "symlink"
    if entry.is_regular:
        return "file"
    return "special"


def entry_model(entry: DirectoryEntry) -> Entry:
    device = entry.device
    return Entry(
        name=entry.name,
        path=entry.path or "/",
        type=entry_type(entry),
        # a device's `size` column holds its device number; the client shows size 0
        size=0 if device is not None else entry.size,
        mode=entry.mode,
        mode_string=stat.filemode(entry.mode),
        mtime=_when(entry.mtime),
        symlink_target=entry.symlink if entry.is_symlink else None,
        chunked=entry.is_chunked,
        nested_catalog=entry.is_nested_mountpoint,
        special_kind=cast(SpecialKind | None, entry.special_kind),
        device_major=device[0] if device is not None else None,
        device_minor=device[1] if device is not None else None,
    )


def catalog_path(path: str) -> str:
    """A path from a query string in catalog form ('' root, '/a/b'), or BadRequest."""
    try:
        return normalize_path(path)
    except InvalidPathError as error:
        raise BadRequest(str(error)) from None


def list_path(reader: RepositoryReader, path: str, offset: int, limit: int) -> Listing:
    """The entry at `path` and, for a directory, a page of its children (sorted by name)."""
    where = catalog_path(path)
    try:
        entry = reader.stat(where)
        children = reader.listdir(where) if entry.is_dir else None
    except NotFoundError:
        raise NotFound(f"{where or '/'} does not exist in revision {reader.revision}") from None
    page = children[offset : offset + limit] if children is not None else None
    return Listing(
        fqrn=reader.fqrn,
        revision=reader.revision,
        path=where or "/",
        entry=entry_model(entry),
        entries=[entry_model(child) for child in page] if page is not None else None,
        total_entries=len(children) if children is not None else None,
        offset=offset,
        limit=limit,
    )


def _fingerprint(entry: DirectoryEntry) -> Fingerprint:
    content = entry.content_hash.hex if entry.content_hash is not None else ""
    if entry.is_chunked:
        content += "".join(chunk.content_hash.hex for chunk in entry.chunks)
    return (entry_type(entry), entry.size, entry.mode, entry.mtime, content, entry.symlink)


def _snapshot(reader: RepositoryReader) -> dict[str, Fingerprint] | None:
    """path → fingerprint of every entry below the root, or None past MAX_DIFF_ENTRIES."""
    tree: dict[str, Fingerprint] = {}
    for entry in reader.walk(""):
        if not entry.path:
            continue
        tree[entry.path] = _fingerprint(entry)
        if len(tree) > MAX_DIFF_ENTRIES:
            return None
    return tree


def diff_trees(
    old: dict[str, Fingerprint], new: dict[str, Fingerprint]
) -> tuple[list[Change], bool]:
    """Changes from `old` to `new`, sorted by path; True when cut at MAX_CHANGES_PER_REVISION."""
    changes: list[Change] = []
    for path in sorted(old.keys() | new.keys()):
        before, after = old.get(path), new.get(path)
        if before == after:
            continue
        if before is None:
            assert after is not None
            changes.append(Change(path=path, change="added", type=after[0]))
        elif after is None:
            changes.append(Change(path=path, change="removed", type=before[0]))
        elif before[0] != after[0]:
            changes.append(
                Change(path=path, change="type_changed", type=after[0], previous_type=before[0])
            )
        elif after[0] != "directory":  # a directory's own mtime/size moves with its children
            changes.append(Change(path=path, change="modified", type=after[0]))
        if len(changes) >= MAX_CHANGES_PER_REVISION:
            return changes, True
    return changes, False


class _Revision:
    def __init__(self, revision: int, root_hash: str, root_size: int | None) -> None:
        self.revision = revision
        self.root_hash = root_hash
        self.root_size = root_size
        self.tags: list[Tag] = []


def _known_revisions(reader: RepositoryReader, tags: Iterable[Tag]) -> list[_Revision]:
    """Every revision some tag records, plus the current one; oldest first."""
    by_revision: dict[int, _Revision] = {}
    for tag in tags:
        known = by_revision.setdefault(
            tag.revision, _Revision(tag.revision, tag.root_hash.hex, tag.size or None)
        )
        known.tags.append(tag)
    manifest = reader.manifest
    if manifest.revision not in by_revision:
        by_revision[manifest.revision] = _Revision(
            manifest.revision, manifest.root_catalog_hash.hex, manifest.root_catalog_size
        )
    return [by_revision[r] for r in sorted(by_revision)]


def _published_at(known: _Revision, fallback: int) -> dt.datetime:
    named = [t.timestamp for t in known.tags if t.name not in _AUTOMATIC_TAGS]
    stamps = named or [t.timestamp for t in known.tags] or [fallback]
    return _when(min(stamps))


def _description(known: _Revision) -> str:
    for tag in known.tags:
        if tag.name not in _AUTOMATIC_TAGS and tag.description:
            return tag.description
    return ""


def build_history(
    reader: RepositoryReader, provenance: list[FileProvenance], limit: int
) -> History:
    """The newest `limit` revisions, each diffed against the revision before it."""
    tags = reader.tags()
    known = _known_revisions(reader, tags)
    sources: dict[int, list[Source]] = defaultdict(list)
    for record in provenance:
        sources[record.revision].append(
            Source(
                path="/" + record.path.lstrip("/"),
                s3_key=record.s3_key,
                etag=record.etag,
                size_bytes=record.size_bytes,
            )
        )
    snapshots: dict[str, dict[str, Fingerprint] | None] = {}

    def snapshot(revision: _Revision) -> dict[str, Fingerprint] | None:
        if revision.root_hash not in snapshots:
            view = reader.at_root_hash(revision.root_hash, revision.root_size)
            snapshots[revision.root_hash] = _snapshot(view)
        return snapshots[revision.root_hash]

    fallback = reader.manifest.publish_timestamp or 0
    revisions: list[Revision] = []
    newest_first = list(reversed(known))
    for index, current in enumerate(newest_first[:limit]):
        previous = newest_first[index + 1] if index + 1 < len(newest_first) else None
        changes: list[Change] | None = None
        truncated = False
        new_tree = snapshot(current)
        if previous is not None:
            old_tree = snapshot(previous)
        else:  # revision 1 (mkfs) starts from nothing; an older untagged base is unknown
            old_tree = {} if current.revision <= 1 else None
        if new_tree is not None and old_tree is not None:
            changes, truncated = diff_trees(old_tree, new_tree)
        revisions.append(
            Revision(
                revision=current.revision,
                published_at=_published_at(current, fallback),
                tags=sorted(t.name for t in current.tags),
                description=_description(current),
                changes=changes,
                changes_truncated=truncated,
                sources=sorted(sources.get(current.revision, []), key=lambda s: s.path),
            )
        )
    return History(
        fqrn=reader.fqrn,
        current_revision=reader.revision,
        revisions=revisions,
        tags=[
            TagInfo(
                name=tag.name,
                revision=tag.revision,
                published_at=_when(tag.timestamp),
                description=tag.description,
                root_hash=tag.root_hash.hex,
            )
            for tag in sorted(tags, key=lambda t: (-t.revision, t.name))
        ],
        note=(
            "Revisions are those the repository's tag history records (one automatic tag per "
            "publish). 'changes' compares each listed revision's tree with the previous "
            f"recorded revision (none past {MAX_DIFF_ENTRIES} entries; at most "
            f"{MAX_CHANGES_PER_REVISION} listed); directories are listed only when added, "
            "removed or changing type. 'sources' are the provenance records of paths last "
            "published in that revision."
        ),
    )
