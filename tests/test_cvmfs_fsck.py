"""fsck is clean on the golden fixture and reports each kind of corruption on a tampered copy."""

from __future__ import annotations

import sqlite3
import zlib
from pathlib import Path

import pytest

from cvmfs.fsck import fsck
from cvmfs.objects import ContentHash, ObjectSuffix, compress_and_hash
from cvmfs.reader import RepositoryReader
from cvmfs.storage import LocalStorage
from tests.cvmfs_golden import FQRN, PINNED_NOW, PUBLIC_KEY, STRATUM0, writable_copy

HELLO_OBJECT = "data/b1/2817a864b2715fa886c933b350ed31ed05db86"
CHUNK_2 = "data/d8/ce481831d04ee3ee6c2e8084d87bb3a53deed5P"
NESTED_CATALOG = "data/90/5fc0551a3306ff3ae1425df2ada05510db2858C"
REV_A_ROOT = "data/3f/1d3708d9e7db983a323a90f63cb4adfe2db1d8C"


def open_reader(location: Path) -> RepositoryReader:
    return RepositoryReader.open(location, FQRN, [PUBLIC_KEY], now=PINNED_NOW)


@pytest.fixture
def copy(tmp_path: Path) -> Path:
    return writable_copy(tmp_path / "stratum0")


def test_fixture_is_clean_for_every_revision() -> None:
    with open_reader(STRATUM0) as reader:
        report = fsck(reader, all_revisions=True)
    assert report.ok, report.problems
    # mkfs, A, B, C from the tags, and the empty revision-0 catalog only the reflog lists
    assert len(report.revisions_checked) == 5
    assert report.revisions_checked[-1] == "c7ebe5d123aead341fa590183dfd18182e70a6d0"
    assert report.catalogs_checked == 9  # 1 + 3 + 3 + 1 (C shares B's nested ones) + 1
    assert report.objects_checked > 20


def test_flipped_data_object(copy: Path) -> None:
    path = copy / HELLO_OBJECT
    data = bytearray(path.read_bytes())
    data[5] ^= 1
    path.write_bytes(bytes(data))
    with open_reader(copy) as reader:
        report = fsck(reader)
    assert not report.ok
    assert [p.where for p in report.problems] == ["/hello.txt"]
    assert "does not match" in report.problems[0].message


def test_deleted_chunk(copy: Path) -> None:
    (copy / CHUNK_2).unlink()
    with open_reader(copy) as reader:
        report = fsck(reader)
    assert [p.where for p in report.problems] == ["/data/big-chunked.bin"]
    assert "missing" in report.problems[0].message


def test_corrupt_nested_catalog(copy: Path) -> None:
    path = copy / NESTED_CATALOG
    data = bytearray(path.read_bytes())
    data[200] ^= 1
    path.write_bytes(bytes(data))
    with open_reader(copy) as reader:
        report = fsck(reader)
    assert any(NESTED_CATALOG.split("/")[2][:10] in p.where for p in report.problems)


def test_corrupt_older_revision_only_found_with_all_revisions(copy: Path) -> None:
    (copy / REV_A_ROOT).unlink()
    with open_reader(copy) as reader:
        head_only = fsck(reader)
        report = fsck(reader, all_revisions=True)
    # the head check still notices the reflog entry without an object
    assert [p.message for p in head_only.problems] == ["listed in the reflog but missing"]
    assert any("3f/1d3708d9" in str(p) and "missing" in str(p) for p in report.problems[1:])
    assert len(report.revisions_checked) == 4  # all but revision A, which cannot be opened


ROOT_CATALOG = "data/73/7cda743e3f9079bfd1fe54945338cb839192feC"


def rewrite_nested_catalog(copy: Path, tmp_path: Path, *statements: str) -> ContentHash:
    """Apply SQL to the /nested catalog, store it and a root catalog pointing at it.

    Both are stored under their new hashes, so only fsck's semantic checks can tell; the
    revision is opened by the new root hash since the manifest cannot be re-signed here.
    """
    db_path = tmp_path / "nested.db"
    db_path.write_bytes(zlib.decompress((copy / NESTED_CATALOG).read_bytes()))
    db = sqlite3.connect(db_path)
    for statement in statements:
        db.execute(statement)
    db.commit()
    db.close()
    stored, nested_hash = compress_and_hash(db_path.read_bytes())
    store = LocalStorage(copy)
    store.put(nested_hash.object_key(ObjectSuffix.CATALOG), stored)
    root_db = tmp_path / "root.db"
    root_db.write_bytes(zlib.decompress((copy / ROOT_CATALOG).read_bytes()))
    db = sqlite3.connect(root_db)
    db.execute(
        "UPDATE nested_catalogs SET sha1 = ?, size = ? WHERE path = '/nested'",
        (nested_hash.hex, db_path.stat().st_size),
    )
    db.commit()
    db.close()
    root_stored, root_hash = compress_and_hash(root_db.read_bytes())
    store.put(root_hash.object_key(ObjectSuffix.CATALOG), root_stored)
    return root_hash


def fsck_messages(copy: Path, root_hash: ContentHash) -> list[str]:
    with open_reader(copy) as reader:
        return [str(p) for p in fsck(reader.at_root_hash(root_hash)).problems]


def test_wrong_statistics_and_size(copy: Path, tmp_path: Path) -> None:
    root_hash = rewrite_nested_catalog(
        copy,
        tmp_path,
        "UPDATE statistics SET value = 99 WHERE counter = 'self_regular'",
        "UPDATE catalog SET size = 5 WHERE name = 'n1.txt'",
    )
    messages = fsck_messages(copy, root_hash)
    assert any("self_regular is 99, counted 5" in m for m in messages), messages
    assert any("/nested/n1.txt" in m and "inflates to 23 bytes" in m for m in messages), messages
    assert any("self_file_size" in m for m in messages), messages


def test_unchanged_rewrite_is_clean(copy: Path, tmp_path: Path) -> None:
    """The rewrite helper itself does not introduce problems (so the other tests can fail)."""
    root_hash = rewrite_nested_catalog(copy, tmp_path)
    assert fsck_messages(copy, root_hash) == []


def test_link_counts_and_hardlink_groups(copy: Path, tmp_path: Path) -> None:
    root_hash = rewrite_nested_catalog(
        copy,
        tmp_path,
        "UPDATE catalog SET hardlinks = 5 WHERE name = 'sub'",
        "UPDATE catalog SET hardlinks = (7 << 32) | 2 WHERE name IN ('n1.txt', 'n2.txt')",
    )
    messages = fsck_messages(copy, root_hash)
    assert any("/nested/sub: directory link count 5, expected 2" in m for m in messages)
    assert sum("hard-link group 7" in m for m in messages) >= 1, messages


def test_orphan_row_and_dangling_transition_point(copy: Path, tmp_path: Path) -> None:
    root_hash = rewrite_nested_catalog(
        copy,
        tmp_path,
        "DELETE FROM catalog WHERE name = 'sub'",
        "DELETE FROM nested_catalogs",
    )
    messages = fsck_messages(copy, root_hash)
    assert any("has no parent directory" in m for m in messages), messages
    assert any(
        "/nested/deeper: transition point (flag 2) without a nested_catalogs row" in m
        for m in messages
    ), messages


def test_old_history_object_checked_through_the_reflog(copy: Path) -> None:
    old_history = copy / "data/a6/136f9beedf3c86aab5be7ec00a2dc8301a8194H"  # revision A's
    data = bytearray(old_history.read_bytes())
    data[50] ^= 1
    old_history.write_bytes(bytes(data))
    with open_reader(copy) as reader:
        assert fsck(reader).ok  # not reachable from the current revision
        report = fsck(reader, all_revisions=True)
    assert [(p.where, "does not match" in p.message) for p in report.problems] == [
        ("reflog history", True)
    ]
