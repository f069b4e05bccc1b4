"""CatalogWriter on its own: empty root and nested catalogs, keys, counters, clean close."""

from __future__ import annotations

import sqlite3
from pathlib import Path

import pytest

from cvmfs.catalog import Catalog, md5path_pair
from cvmfs.catalog_writer import CatalogWriteError, CatalogWriter, ChunkRow, NestedRef, Row

ROOT = Row(path="", mode=0o040755, mtime=100, flags=1, size=4096, linkcount=2)


def test_empty_root_catalog_has_upstream_properties_and_24_zeroed_counters(
    tmp_path: Path,
) -> None:
    db = tmp_path / "root.sqlite"
    writer = CatalogWriter.create(db, ROOT)
    writer.finalize(revision=0, last_modified=123, previous_revision=None, subtree={})
    assert not (tmp_path / "root.sqlite-journal").exists()
    conn = sqlite3.connect(db)
    props = dict(conn.execute("SELECT key, value FROM properties"))
    stats = dict(conn.execute("SELECT counter, value FROM statistics"))
    rows = conn.execute(
        "SELECT md5path_1, md5path_2, parent_1, parent_2, flags, name, "
        "symlink, hardlinks FROM catalog"
    ).fetchall()
    conn.close()
    assert props == {
        "schema": "2.5",
        "schema_revision": "7",
        "TTL": "240",
        "revision": "0",
        "last_modified": "123",
    }
    assert len(stats) == 24 and stats["self_dir"] == 1 and sum(stats.values()) == 1
    assert rows == [(*md5path_pair(""), 0, 0, 1, "", "", 2)]


def test_nested_catalog_rows_keys_chunks_and_counters(tmp_path: Path) -> None:
    db = tmp_path / "nested.sqlite"
    root = Row(path="/sw/v1", mode=0o040755, mtime=1, flags=1, size=4096, linkcount=3)
    writer = CatalogWriter.create(db, root)
    writer.insert(Row(path="/sw/v1/lib", mode=0o040755, mtime=1, flags=1, size=4096, linkcount=2))
    writer.insert(Row(path="/sw/v1/lib/big", mode=0o100644, mtime=1, flags=4 | 64, size=30))
    writer.set_chunks(
        "/sw/v1/lib/big", [ChunkRow(0, 10, b"\x01" * 20), ChunkRow(10, 20, b"\x02" * 20)]
    )
    writer.insert(Row(path="/sw/v1/link", mode=0o120777, mtime=1, flags=12, size=3, symlink="lib"))
    writer.set_nested(NestedRef("/sw/v1/lib/deep", "ab" * 20, 4096))
    with pytest.raises(CatalogWriteError, match="already exists"):
        writer.insert(Row(path="/sw/v1/link", mode=0o100644, mtime=1, flags=4))
    writer.finalize(
        revision=1, last_modified=5, previous_revision="cd" * 20, subtree={"regular": 7}
    )
    with Catalog(db) as catalog:
        assert catalog.root_prefix == "/sw/v1" and catalog.mountpoint == "/sw/v1"
        assert catalog.previous_revision == "cd" * 20 and catalog.revision == 1
        assert "TTL" not in catalog.properties
        top = catalog.lookup("/sw/v1")
        assert top is not None and top.flags == 33
        stats = catalog.statistics()
        assert (
            stats["self_regular"],
            stats["self_chunked"],
            stats["self_chunks"],
            stats["self_chunked_size"],
            stats["self_symlink"],
            stats["self_dir"],
            stats["self_nested"],
            stats["subtree_regular"],
        ) == (1, 1, 2, 30, 1, 2, 1, 7)
        big = catalog.lookup("/sw/v1/lib/big")
        assert big is not None and [c.size for c in big.chunks] == [10, 20]
        paths = sorted(row.entry.path for row in catalog.rows())
        assert paths == ["/sw/v1", "/sw/v1/lib", "/sw/v1/lib/big", "/sw/v1/link"]
    conn = sqlite3.connect(db)
    parent = conn.execute("SELECT parent_1, parent_2 FROM catalog WHERE name = 'v1'").fetchone()
    conn.close()
    assert parent == md5path_pair("/sw")  # a nested root's parent is its real parent path
