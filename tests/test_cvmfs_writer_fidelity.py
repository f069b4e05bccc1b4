"""Fidelity: the fixture's revisions A, B and C rebuilt from its recipe and published with our
writer have the stock publisher's object names, chunk cuts, layout, flags and statistics."""

from __future__ import annotations

import datetime as dt
import re
import shutil
import sqlite3
from pathlib import Path
from typing import Any

import pytest

from cvmfs.fsck import fsck
from cvmfs.objects import ContentHash, compress_and_hash, decode_verified, object_path
from cvmfs.reader import RepositoryReader
from cvmfs.storage import LocalStorage
from cvmfs.writer import PublishResult, RepositoryWriter, WriterOptions, create_repository
from tests.test_cvmfs_writer_support import (
    FQRN,
    GOLDEN,
    MKFS_TIME,
    PUBLISH_TIMES,
    SteppingClock,
    big_chunked,
    check_catalog_invariants,
    expected,
    expected_listing,
    fetch_catalog,
    golden_keys,
    iter_catalogs,
    listing,
    write_revision_a,
    write_revision_b,
    write_revision_c,
)

pytestmark = pytest.mark.slow


def _fixture_metainfo() -> str:
    """The meta-info JSON text of the fixture (upstream's mkfs template), from its M object."""
    m_hash = ContentHash.from_hex(expected("expected.json")["manifest"]["raw_lines"]["M"])
    stored = (GOLDEN / "stratum0" / m_hash.object_key("M")).read_bytes()
    return decode_verified(stored, m_hash).decode()


@pytest.fixture(scope="module")
def published(tmp_path_factory: pytest.TempPathFactory) -> tuple[LocalStorage, list[PublishResult]]:
    storage = LocalStorage(tmp_path_factory.mktemp("golden") / "stratum0")
    a_time, b_time, c_time = PUBLISH_TIMES
    # README "How the repository was produced": mkfs, A, B, `tag -a v1` (T 1795837081), C
    clock = SteppingClock(MKFS_TIME, MKFS_TIME + 1, a_time, b_time, 1795837081, c_time)
    writer, created = create_repository(
        storage, FQRN, golden_keys(), WriterOptions(), meta_info=_fixture_metainfo(), clock=clock
    )
    results = [created]
    for write, message in (
        (write_revision_a, "revision A: initial content"),
        (write_revision_b, "revision B: modify, delete, add in nested catalogs"),
        (write_revision_c, "revision C: small change after tag v1"),
    ):
        txn = writer.transaction()
        write(txn)
        results.append(txn.publish(description=message))
        if write is write_revision_b:
            tagged = writer.tag("v1", description="release v1 (revision B)")
            assert tagged.revision == 3 and tagged.timestamp == 1795837081
    return storage, results


@pytest.mark.parametrize(
    ("index", "name"),
    [(1, "expected-revA.json"), (2, "expected-revB.json"), (3, "expected.json")],
)
def test_every_entry_matches_the_stock_publisher(
    published: tuple[LocalStorage, list[PublishResult]], index: int, name: str
) -> None:
    storage, results = published
    ours = listing(storage, results[index].root_hash)
    theirs = expected_listing(name)
    assert sorted(ours) == sorted(theirs)
    for path, item in theirs.items():
        assert ours[path] == item, path


def test_chunk_boundaries_and_object_names_are_the_fixtures(
    published: tuple[LocalStorage, list[PublishResult]],
) -> None:
    storage, results = published
    ours = listing(storage, results[3].root_hash, with_content=False)
    big = ours["data/big-chunked.bin"]
    assert [c["offset"] for c in big["chunks"]] == [0, 5243911, 9569064]
    fixture_objects = {
        p.relative_to(GOLDEN / "stratum0").as_posix()
        for p in (GOLDEN / "stratum0" / "data").rglob("*")
        if p.is_file()
    }
    for item in ours.values():
        if item["type"] != "file":
            continue
        hashes = [c["hash"] for c in item["chunks"]] or [item["content_hash"]]
        suffix = "P" if item["chunks"] else ""
        for h in hashes:
            key = f"data/{h[:2]}/{h[2:]}{suffix}"
            assert key in fixture_objects, item["path"]
            assert (Path(storage.root) / key).read_bytes() == (
                GOLDEN / "stratum0" / key
            ).read_bytes()


@pytest.mark.parametrize(
    ("index", "name"),
    [(1, "expected-revA.json"), (2, "expected-revB.json"), (3, "expected.json")],
)
def test_catalog_layout_revisions_and_statistics_match(
    published: tuple[LocalStorage, list[PublishResult]], index: int, name: str
) -> None:
    storage, results = published
    want = {c["mountpoint"]: c for c in expected(name)["catalogs"]}
    got: dict[str, Any] = {}
    for mountpoint, catalog, hex_hash in iter_catalogs(storage, results[index].root_hash):
        got[mountpoint.lstrip("/")] = {
            "hash": hex_hash,
            "revision": catalog.revision,
            "root_prefix": catalog.root_prefix,
            "statistics": catalog.statistics(),
            "nested": [(r.path.lstrip("/"), r.content_hash.hex) for r in catalog.nested_catalogs()],
            "schema": catalog.schema,
            "schema_revision": catalog.schema_revision,
        }
    assert sorted(got) == sorted(want)
    for mountpoint, theirs in want.items():
        ours = got[mountpoint]
        assert ours["statistics"] == theirs["statistics"], mountpoint
        assert ours["revision"] == theirs["revision"], mountpoint
        assert ours["root_prefix"] == theirs["root_prefix"]
        assert ours["schema"] == "2.5" and ours["schema_revision"] == 7
        assert [p for p, _h in ours["nested"]] == [n["path"] for n in theirs["nested_catalogs"]]


def test_revision_c_rewrote_only_the_root_catalog(
    published: tuple[LocalStorage, list[PublishResult]],
) -> None:
    _storage, results = published
    assert results[3].catalogs_rewritten == [""]
    assert set(results[2].catalogs_rewritten) == {"/nested/deeper", "/nested", ""}
    a_hashes = {c.mountpoint: c.content_hash for c in results[2].catalogs_written}
    c_nested = {m: h for m, _c, h in iter_catalogs(_storage, results[3].root_hash)}
    assert c_nested["/nested"] == a_hashes["/nested"].hex


def _dump_schema(db: Path) -> dict[str, list[str]]:
    conn = sqlite3.connect(db)
    try:
        tables = [r[0] for r in conn.execute("SELECT name FROM sqlite_master WHERE type='table'")]
        return {t: [c[1] for c in conn.execute(f"PRAGMA table_info({t})")] for t in tables}
    finally:
        conn.close()


def test_schema_and_properties_match_catalog_dump(
    published: tuple[LocalStorage, list[PublishResult]], tmp_path: Path
) -> None:
    storage, results = published
    db = fetch_catalog(storage, results[3].root_hash, tmp_path)
    ours = _dump_schema(db)
    dump = (GOLDEN / "catalog-dump.txt").read_text()
    theirs: dict[str, list[str]] = {}
    for match in re.finditer(r"^CREATE TABLE (\w+) \((.*)\);$", dump, re.M):
        body = match.group(2).split("CONSTRAINT")[0]
        theirs[match.group(1)] = [c.split()[0] for c in body.split(",") if c.strip()]
    assert sorted(ours) == sorted(theirs)
    for table, columns in theirs.items():
        # schema revision 7 (spec §2.2) adds exactly one column to the stock 2.11 revision 6
        extra = ["mtimens"] if table == "catalog" else []
        assert sorted(ours[table]) == sorted(columns + extra), table
    conn = sqlite3.connect(db)
    props = dict(conn.execute("SELECT key, value FROM properties"))
    indexes = [
        r[0]
        for r in conn.execute(
            "SELECT name FROM sqlite_master WHERE type = 'index' AND sql IS NOT NULL"
        )
    ]
    journal = conn.execute("PRAGMA journal_mode").fetchone()[0]
    conn.close()
    section = dump.split("== properties (key|value) ==")[1].split("== statistics")[0]
    dump_props = dict(re.findall(r"^(\w+)\|(.*)$", section, re.M))
    assert sorted(props) == sorted(dump_props)
    assert props["TTL"] == "240" and props["revision"] == "4" and props["schema"] == "2.5"
    assert props["previous_revision"] == results[2].root_hash.hex
    assert props["last_modified"] == str(PUBLISH_TIMES[2])
    assert indexes == ["idx_catalog_parent"]
    assert journal == "delete"
    assert not db.with_name(db.name + "-journal").exists()


def test_manifest_history_and_reflog_look_like_the_fixtures(
    published: tuple[LocalStorage, list[PublishResult]],
) -> None:
    storage, results = published
    manifest = results[3].manifest
    theirs = expected("expected.json")["manifest"]["raw_lines"]
    assert list(manifest.raw_lines()) == list(theirs)  # same fields in the same order
    assert manifest.metainfo_hash is not None and manifest.metainfo_hash.hex == theirs["M"]
    assert manifest.revision == 4 and manifest.publish_timestamp == PUBLISH_TIMES[2]
    assert manifest.certificate_hash is not None
    assert manifest.certificate_hash.hex == theirs["X"]  # same certificate, same zlib object
    assert [r.revision for r in results] == [1, 2, 3, 4]
    assert (storage.root / ".cvmfs_master_replica").read_bytes() == (
        GOLDEN / "stratum0" / ".cvmfs_master_replica"
    ).read_bytes()


N1_CHANGED = b"nested catalog file n1, changed by our writer\n"


def test_publishing_into_the_stock_made_repository(tmp_path: Path) -> None:
    """Our writer continues the stock repository: revision 5 on top of the fixture's 4."""
    root = tmp_path / "stratum0"
    shutil.copytree(GOLDEN / "stratum0", root)
    for path in [root, *root.rglob("*")]:
        path.chmod(0o755 if path.is_dir() else 0o644)
    storage = LocalStorage(root)
    now = 1795837083 + 3600  # after the fixture's last publish, before its whitelist expires
    writer = RepositoryWriter.open(storage, FQRN, golden_keys(), clock=SteppingClock(now))
    objects_before = set(storage.list("data/"))
    with writer.transaction() as txn:
        txn.add_file("/nested/n1.txt", N1_CHANGED)
        txn.add_file(
            "/copy-of-hello.txt",
            b"Hello from golden.example.org!\nThis is revision B (modified).\n",
            mtime=1,
        )
        result = txn.publish(description="revision 5 by the pure-Python writer")
    assert result.revision == 5
    assert result.catalogs_rewritten == ["/nested", ""]  # /nested/deeper keeps its stock hash
    new_objects = set(storage.list("data/")) - objects_before
    # dedup with the stock objects: only the changed n1.txt, two catalogs and the history
    n1_key = object_path(compress_and_hash(N1_CHANGED)[1])
    assert {k for k in new_objects if k[-1] not in "CH"} == {n1_key}
    assert sorted(k[-1] for k in new_objects if k != n1_key) == ["C", "C", "H"]
    check_catalog_invariants(storage, result.root_hash)
    pinned = dt.datetime(2026, 12, 1, tzinfo=dt.UTC)
    pub = str(GOLDEN / "keys" / f"{FQRN}.pub")
    with RepositoryReader(storage, FQRN, [pub], now=pinned) as reader:
        assert reader.read("/nested/n1.txt").endswith(b"changed by our writer\n")
        assert reader.read("/data/big-chunked.bin") == big_chunked()
        tags = {t.name: t.revision for t in reader.tags()}
        assert tags["v1"] == 3 and tags["trunk"] == 5 and tags["trunk-previous"] == 4
        catalogs = {c.mountpoint: c for c in reader.catalogs()}
        assert catalogs["/nested/deeper"].content_hash.hex == (
            "aef8d6652fcfa773dfcc56b9e0c771d72363be31"
        )
        assert catalogs[""].properties["schema_revision"] == "7"
        assert catalogs["/nested/deeper"].properties["schema_revision"] == "6"
        report = fsck(reader, all_revisions=True)
        assert report.ok, [str(p) for p in report.problems]
        assert len(report.revisions_checked) >= 5


def test_history_tags_are_the_fixtures(
    published: tuple[LocalStorage, list[PublishResult]],
) -> None:
    storage, _results = published
    pub = str(GOLDEN / "keys" / f"{FQRN}.pub")
    pinned = dt.datetime(2026, 12, 1, tzinfo=dt.UTC)
    with RepositoryReader(storage, FQRN, [pub], now=pinned) as reader:
        ours = sorted(
            (t.name, t.revision, t.timestamp, t.description, t.channel, t.branch)
            for t in reader.tags()
        )
    theirs = sorted(
        (t["name"], t["revision"], t["timestamp"], t["description"], t["channel"], t["branch"])
        for t in expected("expected.json")["history_tags"]
    )
    assert ours == theirs


def test_reflog_records_what_the_stock_publisher_records(
    published: tuple[LocalStorage, list[PublishResult]],
) -> None:
    storage, _results = published
    pub = str(GOLDEN / "keys" / f"{FQRN}.pub")
    with RepositoryReader(
        storage, FQRN, [pub], now=dt.datetime(2026, 12, 1, tzinfo=dt.UTC)
    ) as reader:
        ours = sorted((r.type.label, r.timestamp) for r in reader.reflog())
        fixed = {
            r.content_hash.hex
            for r in reader.reflog()
            if r.type.label in ("certificate", "metainfo")
        }
    theirs = sorted((r["type"], r["timestamp"]) for r in expected("expected.json")["reflog"])
    assert ours == theirs
    assert fixed == {
        r["hash"]
        for r in expected("expected.json")["reflog"]
        if r["type"] in ("certificate", "metainfo")
    }


def _raw_rows(db: Path) -> list[tuple[object, ...]]:
    conn = sqlite3.connect(db)
    try:
        rows = conn.execute(
            "SELECT md5path_1, md5path_2, parent_1, parent_2, hardlinks, hash, size, mode, mtime, "
            "flags, name, symlink, uid, gid, xattr FROM catalog"
        ).fetchall()
        chunks = conn.execute("SELECT md5path_1, md5path_2, offset, size, hash FROM chunks")
        return sorted(rows) + sorted(chunks.fetchall())
    finally:
        conn.close()


@pytest.mark.parametrize("index", [1, 2, 3])
def test_catalog_rows_equal_the_stock_catalogs_column_by_column(
    published: tuple[LocalStorage, list[PublishResult]], index: int, tmp_path: Path
) -> None:
    """Every row and chunk row of every catalog, all columns (mtimens aside: ours is NULL and
    stock 2.11 has no such column), equals the stock publisher's."""
    storage, results = published
    stock = LocalStorage(GOLDEN / "stratum0")
    name = {1: "expected-revA.json", 2: "expected-revB.json", 3: "expected.json"}[index]
    stock_hashes = {c["mountpoint"]: c["hash"] for c in expected(name)["catalogs"]}
    ours = {m.lstrip("/"): h for m, _c, h in iter_catalogs(storage, results[index].root_hash)}
    assert sorted(ours) == sorted(stock_hashes)
    for mountpoint, our_hash in ours.items():
        our_db = fetch_catalog(storage, ContentHash.from_hex(our_hash), tmp_path)
        stock_db = fetch_catalog(stock, ContentHash.from_hex(stock_hashes[mountpoint]), tmp_path)
        assert _raw_rows(our_db) == _raw_rows(stock_db), mountpoint
