"""Helpers to compare a repository read through `cvmfs.reader` with the golden fixture's JSON.

Writer tests can reuse `revision_record()` to compare their own output with expected*.json.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import json
import shutil
import stat
from pathlib import Path
from typing import Any

from cvmfs.catalog import DirectoryEntry
from cvmfs.history import Tag
from cvmfs.manifest import SignedManifest
from cvmfs.objects import ObjectSuffix
from cvmfs.reader import RepositoryReader
from tests.shared_paths import GOLDEN

FIXTURE = GOLDEN
STRATUM0 = FIXTURE / "stratum0"
PUBLIC_KEY = FIXTURE / "keys/golden.example.org.pub"
FQRN = "golden.example.org"
PINNED_NOW = dt.datetime(2026, 12, 1, tzinfo=dt.UTC)  # before the whitelist expiry
WHITELIST_EXPIRY = dt.datetime(2026, 12, 28, 3, 37, 32, tzinfo=dt.UTC)

# Fields of expected*.json that describe how the fixture was made rather than what is in it.
DESCRIPTIVE_FIELDS = ("notes", "label", "description", "chunking", "manifest_file")


def load_expected(name: str = "expected.json") -> dict[str, Any]:
    return json.loads((FIXTURE / name).read_text())


def _relative(path: str) -> str:
    return path.lstrip("/")


def entry_record(reader: RepositoryReader, catalog: str, entry: DirectoryEntry) -> dict[str, Any]:
    """One element of `entries`, computed from the reader (content sha256 included)."""
    kind = "dir" if entry.is_dir else "symlink" if entry.is_symlink else "file"
    record: dict[str, Any] = {
        "path": _relative(entry.path),
        "type": kind,
        "mode": f"{stat.S_IMODE(entry.mode):04o}",
        "st_mode": f"{entry.mode:07o}",
        "size": entry.size,
        "mtime": entry.mtime,
        "uid": entry.uid,
        "gid": entry.gid,
        "nlink": entry.linkcount,
        "hardlink_group": entry.hardlink_group,
        "catalog_flags": entry.flags,
        "catalog": _relative(catalog),
        "nested_catalog_mountpoint": entry.is_nested_mountpoint,
    }
    if kind == "file":
        record["chunked"] = entry.is_chunked
        record["content_hash"] = entry.content_hash.hex if entry.content_hash else None
        if entry.is_chunked:
            record["chunks"] = [
                {
                    "offset": c.offset,
                    "size": c.size,
                    "hash": c.content_hash.hex,
                    "object": c.object_key,
                }
                for c in entry.chunks
            ]
        else:
            record["object"] = entry.object_key
        digest = hashlib.sha256()
        for piece in reader.iter_content(entry):
            digest.update(piece)
        record["sha256"] = digest.hexdigest()
    if kind == "symlink":
        record["symlink"] = entry.symlink
    return record


def catalog_records(reader: RepositoryReader) -> list[dict[str, Any]]:
    records = []
    for info in reader.catalogs():
        props = info.properties
        records.append(
            {
                "mountpoint": _relative(info.mountpoint),
                "hash": info.content_hash.hex,
                "object": info.object_key,
                "uncompressed_size": info.uncompressed_size,
                "stored_size": info.stored_size,
                # the fixture records only a parent's nested_catalogs size, null for the root
                "size_recorded_by_parent": info.size_recorded_by_parent
                if info.mountpoint
                else None,
                "revision": info.revision,
                "schema": props.get("schema"),
                "schema_revision": props.get("schema_revision"),
                "root_prefix": props.get("root_prefix"),
                "previous_revision": props.get("previous_revision"),
                "nested_catalogs": [
                    {"path": _relative(ref.path), "hash": ref.content_hash.hex, "size": ref.size}
                    for ref in info.nested_catalogs
                ],
                "statistics": info.statistics,
            }
        )
    return records


def manifest_record(data: bytes) -> dict[str, Any]:
    signed = SignedManifest.parse(data)
    return {
        "raw_lines": signed.manifest.raw_lines(),
        "fields": signed.manifest.fields(),
        "signed_text_sha1": hashlib.sha1(signed.body).hexdigest(),
        "signature_hash_line": signed.hash_text,
        "signature_bytes": len(signed.signature),
        "manifest_sha256": hashlib.sha256(data).hexdigest(),
    }


def tag_record(tag: Tag) -> dict[str, Any]:
    return {
        "name": tag.name,
        "root_catalog_hash": tag.root_hash.hex,
        "revision": tag.revision,
        "timestamp": tag.timestamp,
        "channel": tag.channel,
        "description": tag.description,
        "size": tag.size,
        "branch": tag.branch,
    }


def revision_record(
    view: RepositoryReader, manifest_data: bytes, all_tags: list[Tag]
) -> dict[str, Any]:
    """The content-derived fields of an expected*.json file for one revision."""
    entries = [entry_record(view, cat, entry) for cat, entry in view.walk_with_catalogs()]
    entries.sort(key=lambda record: record["path"])
    root = view.root_catalog
    first_file = next((e for e in view.walk() if e.is_regular and e.content_hash), None)
    return {
        "repository": view.fqrn,
        "hash_algorithm": first_file.hash_algorithm.value if first_file else "sha1",
        "compression": "zlib" if first_file is None or first_file.is_compressed else "none",
        "revision": root.revision,
        "root_catalog_hash": view.root_hash.hex,
        "manifest": manifest_record(manifest_data),
        "catalogs": catalog_records(view),
        "tags_pointing_here": sorted(t.name for t in all_tags if t.root_hash == view.root_hash),
        "entry_count": len(entries),
        "entries": entries,
    }


def object_key_of(hash_hex: str, suffix: ObjectSuffix) -> str:
    return f"data/{hash_hex[:2]}/{hash_hex[2:]}{suffix}"


def writable_copy(destination: Path) -> Path:
    """A copy of the fixture's stratum0 that tests may damage (the fixture is read-only)."""
    shutil.copytree(STRATUM0, destination)
    for path in [destination, *destination.rglob("*")]:
        path.chmod(0o755 if path.is_dir() else 0o644)
    return destination
