"""Helpers for the writer tests: the golden fixture's trees rebuilt from its README recipe, and
a small catalog walker that lists a published revision in the fixture's `expected*.json` form.

No tests here; imported by tests/test_cvmfs_writer*.py.
"""

from __future__ import annotations

import hashlib
import json
import tempfile
from collections.abc import Iterator
from functools import cache
from pathlib import Path
from typing import Any

from cvmfs.catalog import FLAG_DIR_NESTED_ROOT, Catalog
from cvmfs.keys import KeySet, load_keyset
from cvmfs.objects import ContentHash, ObjectSuffix, decode_verified, object_path
from cvmfs.storage import Storage
from cvmfs.transaction import Transaction
from tests.shared_paths import FIXTURES
from tests.test_cvmfs_chunking import big_chunked_bin, prng

FIXTURE = FIXTURES / "cvmfs"
GOLDEN = FIXTURE / "golden.example.org"
FQRN = "golden.example.org"

# Fixture README "How the repository was produced": mkfs and publish times of the fixture.
MKFS_TIME = 1795837053  # revision 0; revision 1 one second later
PUBLISH_TIMES = (1795837062, 1795837078, 1795837083)
JAN, FEB, MAR = 1704067200, 1706745600, 1709251200


def golden_keys() -> KeySet:
    return load_keyset(GOLDEN / "keys", FQRN)


def expected(name: str) -> dict[str, Any]:
    data: dict[str, Any] = json.loads((GOLDEN / name).read_text())
    return data


class SteppingClock:
    """A clock that returns the given times in order, then keeps the last one."""

    def __init__(self, *times: int) -> None:
        self.times = list(times)

    def __call__(self) -> int:
        return self.times.pop(0) if len(self.times) > 1 else self.times[0]


@cache
def big_chunked() -> bytes:
    data = big_chunked_bin()
    assert hashlib.sha256(data).hexdigest() == (
        "115bc2139707c4586fcf56c16bc2bebb46eea85a50e201f33634c71c3ecb523d"
    )
    return data


SMALL_A: dict[str, bytes] = {
    "/a/b/c/d/deep.txt": b"deep file at a/b/c/d\n",
    "/empty-file": b"",
    "/one-byte": b"x",
    "/hello.txt": b"Hello from golden.example.org!\nThis is revision A.\n",
    "/remove-me.txt": b"This file is deleted in revision B.\n",
    "/hardlinks/original.txt": b"hardlinked content\n",
    "/hardlinks/linked.txt": b"hardlinked content\n",
    "/names/file with spaces.txt": b"a file name with spaces\n",
    "/names/ünïcødé-ファイル.txt": "UTF-8 file name: ünïcødé ファイル\n".encode(),
    "/nested/.cvmfscatalog": b"",
    "/nested/n1.txt": b"nested catalog file n1\n",
    "/nested/n2.txt": b"nested catalog file n2\n",
    "/nested/sub/n3.txt": b"nested catalog, plain subdirectory, file n3\n",
    "/nested/deeper/.cvmfscatalog": b"",
    "/nested/deeper/d1.txt": b"second-level nested catalog file d1\n",
    "/obsolete/old.txt": b"directory obsolete/ is deleted in revision B\n",
}
DIRS_A = (
    "/a",
    "/a/b",
    "/a/b/c",
    "/a/b/c/d",
    "/empty-dir",
    "/bin",
    "/data",
    "/links",
    "/hardlinks",
    "/names",
    "/nested",
    "/nested/sub",
    "/nested/deeper",
    "/obsolete",
)
SYMLINKS_A = {
    "/links/relative": "../hello.txt",
    "/links/absolute": "/cvmfs/golden.example.org/hello.txt",
    "/links/dangling": "does-not-exist",
    "/links/to-dir": "../a/b",
}


def write_revision_a(txn: Transaction) -> None:
    """Revision A as the fixture README describes it (hard links published as copies, as the
    stock publisher broke them up)."""
    txn.remove("/new_repository", missing_ok=True)
    for directory in DIRS_A:
        txn.mkdir(directory, mtime=JAN)
    for path, content in SMALL_A.items():
        txn.add_file(path, content, mtime=JAN)
    txn.add_file(
        "/bin/run.sh", b'#!/bin/sh\necho "golden.example.org says hi"\n', mode=0o755, mtime=JAN
    )
    txn.add_file("/data/random-1MiB.bin", prng(b"golden/random-1MiB", 1048576), mtime=JAN)
    txn.add_file("/data/big-chunked.bin", big_chunked(), mtime=JAN)
    for path, target in SYMLINKS_A.items():
        txn.symlink(path, target, mtime=JAN)


def write_revision_b(txn: Transaction) -> None:
    txn.add_file(
        "/hello.txt",
        b"Hello from golden.example.org!\nThis is revision B (modified).\n",
        mtime=FEB,
    )
    txn.remove("/remove-me.txt")
    txn.remove("/obsolete")
    txn.add_file(
        "/nested/added-b.txt", b"added in revision B inside the nested catalog\n", mtime=FEB
    )
    txn.add_file(
        "/nested/deeper/added-deeper-b.txt",
        b"added in revision B inside the second-level nested catalog\n",
        mtime=FEB,
    )
    txn.mkdir("/nested", mtime=FEB)
    txn.mkdir("/nested/deeper", mtime=FEB)


def write_revision_c(txn: Transaction) -> None:
    txn.add_file("/revC.txt", b"added in revision C (after tag v1)\n", mtime=MAR)


# ------------------------------------------------------------------------------- walking
def fetch_catalog(storage: Storage, content_hash: ContentHash, tmp: Path) -> Path:
    key = object_path(content_hash, ObjectSuffix.CATALOG)
    path = tmp / f"{content_hash.hex}.sqlite"
    path.write_bytes(decode_verified(storage.get(key), content_hash, what=key))
    return path


def iter_catalogs(storage: Storage, root_hash: ContentHash) -> Iterator[tuple[str, Catalog, str]]:
    """(mountpoint, open Catalog, hash hex) for every catalog of a revision, root first."""
    with tempfile.TemporaryDirectory() as tmp:
        queue = [("", root_hash)]
        while queue:
            mountpoint, content_hash = queue.pop(0)
            catalog = Catalog(
                fetch_catalog(storage, content_hash, Path(tmp)), mountpoint=mountpoint
            )
            try:
                yield mountpoint, catalog, content_hash.hex
                queue += [(ref.path, ref.content_hash) for ref in catalog.nested_catalogs()]
            finally:
                catalog.close()


def read_content(storage: Storage, entry: Any) -> bytes:
    if entry.chunks:
        return b"".join(
            decode_verified(storage.get(c.object_key), c.content_hash, expected_size=c.size)
            for c in entry.chunks
        )
    key = entry.object_key
    return decode_verified(storage.get(key), entry.content_hash, expected_size=entry.size)


def listing(
    storage: Storage, root_hash: ContentHash, *, with_content: bool = True
) -> dict[str, dict[str, Any]]:
    """Every entry of a revision, keyed and shaped like the fixture's `entries`."""
    out: dict[str, dict[str, Any]] = {}
    for mountpoint, catalog, _hex in iter_catalogs(storage, root_hash):
        for entry in catalog.entries():
            if entry.flags & FLAG_DIR_NESTED_ROOT:
                continue  # the parent catalog's transition point describes it
            rel = entry.path.lstrip("/")
            item: dict[str, Any] = {
                "path": rel,
                "type": "dir" if entry.is_dir else "symlink" if entry.is_symlink else "file",
                "st_mode": f"{entry.mode:07o}",
                "size": entry.size,
                "mtime": entry.mtime,
                "uid": entry.uid,
                "gid": entry.gid,
                "nlink": entry.linkcount,
                "hardlink_group": entry.hardlink_group,
                "catalog_flags": entry.flags,
                "catalog": mountpoint.lstrip("/"),
            }
            if entry.is_symlink:
                item["symlink"] = entry.symlink
            if entry.is_regular:
                item["content_hash"] = entry.content_hash.hex if entry.content_hash else None
                item["chunks"] = [
                    {"offset": c.offset, "size": c.size, "hash": c.content_hash.hex}
                    for c in entry.chunks
                ]
                if with_content:
                    item["sha256"] = hashlib.sha256(read_content(storage, entry)).hexdigest()
            out[rel] = item
    return out


def expected_listing(name: str) -> dict[str, dict[str, Any]]:
    out: dict[str, dict[str, Any]] = {}
    for e in expected(name)["entries"]:
        item = {
            k: e[k]
            for k in (
                "path",
                "type",
                "st_mode",
                "size",
                "mtime",
                "uid",
                "gid",
                "nlink",
                "hardlink_group",
                "catalog_flags",
                "catalog",
            )
        }
        if e["type"] == "symlink":
            item["symlink"] = e["symlink"]
        if e["type"] == "file":
            item["content_hash"] = e.get("content_hash")
            item["chunks"] = [
                {"offset": c["offset"], "size": c["size"], "hash": c["hash"]}
                for c in e.get("chunks") or []
            ]
            item["sha256"] = e["sha256"]
        out[e["path"]] = item
    return out


# ---------------------------------------------------------------------------- invariants
def check_catalog_invariants(storage: Storage, root_hash: ContentHash) -> int:
    """Assert the writer's catalog invariants for every catalog of a revision (spec §2.4-2.9):
    self_* counters equal the rows, subtree_* = sum of the children's self+subtree, transition
    points mirror the child root rows, directory link counts = 2 + subdirectories, every row's
    parent exists, nested references carry the child's size. Returns the number of catalogs."""
    from cvmfs.catalog import FLAG_DIR_NESTED_MOUNTPOINT, md5path_pair

    totals: dict[str, dict[str, int]] = {}
    infos: list[tuple[str, dict[str, int], list[tuple[str, int]], dict[str, Any]]] = []
    with tempfile.TemporaryDirectory() as tmp:
        queue: list[tuple[str, ContentHash, int | None, Any]] = [("", root_hash, None, None)]
        while queue:
            mountpoint, content_hash, size, parent_row = queue.pop(0)
            db = fetch_catalog(storage, content_hash, Path(tmp))
            if size is not None:
                assert db.stat().st_size == size, f"nested_catalogs size of {mountpoint}"
            catalog = Catalog(db, mountpoint=mountpoint)
            try:
                stats = catalog.statistics()
                assert len(stats) == 24
                entries = list(catalog.entries())
                keys = {md5path_pair(e.path) for e in entries}
                by_path = {e.path: e for e in entries}
                counts = dict.fromkeys(
                    (
                        "regular",
                        "symlink",
                        "special",
                        "dir",
                        "chunked",
                        "chunks",
                        "file_size",
                        "chunked_size",
                        "xattr",
                    ),
                    0,
                )
                for e in entries:
                    if e.path != mountpoint:
                        assert md5path_pair(e.path.rsplit("/", 1)[0]) in keys, e.path
                    if e.is_dir:
                        counts["dir"] += 1
                        subdirs = sum(
                            1
                            for x in entries
                            if x.is_dir and x.path != e.path and x.path.rsplit("/", 1)[0] == e.path
                        )
                        if not e.is_nested_mountpoint:
                            assert e.linkcount == 2 + subdirs, e.path
                    elif e.is_symlink:
                        counts["symlink"] += 1
                    elif e.is_regular:
                        counts["regular"] += 1
                        counts["file_size"] += e.size
                        if e.is_chunked:
                            counts["chunked"] += 1
                            counts["chunked_size"] += e.size
                            counts["chunks"] += len(e.chunks)
                            assert e.content_hash is None
                            assert sum(c.size for c in e.chunks) == e.size
                        else:
                            assert e.content_hash is not None
                    if e.xattrs:
                        counts["xattr"] += 1
                for field, value in counts.items():
                    assert stats[f"self_{field}"] == value, (mountpoint, field)
                nested = catalog.nested_catalogs()
                assert stats["self_nested"] == len(nested)
                root_row = by_path[mountpoint]
                if parent_row is not None:
                    assert root_row.flags & FLAG_DIR_NESTED_ROOT
                    assert catalog.root_prefix == mountpoint
                    for attr in ("mode", "mtime", "uid", "gid", "linkcount", "size"):
                        assert getattr(root_row, attr) == getattr(parent_row, attr), attr
                    assert parent_row.flags == 1 | FLAG_DIR_NESTED_MOUNTPOINT
                else:
                    assert catalog.root_prefix is None and root_row.flags == 1
                for ref in nested:
                    queue.append((ref.path, ref.content_hash, ref.size, by_path[ref.path]))
                mountpoints = {e.path for e in entries if e.is_nested_mountpoint}
                assert mountpoints == {ref.path for ref in nested}
                infos.append((mountpoint, stats, [(r.path, 0) for r in nested], {}))
            finally:
                catalog.close()
    for mountpoint, stats, _nested, _ in reversed(infos):
        fields = {k[len("self_") :] for k in stats if k.startswith("self_")}
        expected_subtree = dict.fromkeys(fields, 0)
        for child, _ in _nested:
            for f in fields:
                expected_subtree[f] += totals[child][f]
        for f in fields:
            assert stats[f"subtree_{f}"] == expected_subtree[f], (mountpoint, f)
        totals[mountpoint] = {f: stats[f"self_{f}"] + stats[f"subtree_{f}"] for f in fields}
    return len(infos)
