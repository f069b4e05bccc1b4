"""Writer: create, publish, round trip through the reader, nested and automatic catalogs, hard
links, dedup, conflicts, crash injection between storage writes, tags, rollback, whitelist."""

from __future__ import annotations

import datetime as dt
import os
import random
import stat
from pathlib import Path
from typing import IO, Any

import pytest

from cvmfs.chunking import ChunkingParams
from cvmfs.errors import (
    ConflictError,
    CvmfsError,
    InvalidPathError,
    NotFoundError,
    SignatureError,
    WhitelistExpiredError,
)
from cvmfs.fsck import fsck
from cvmfs.keys import KeySet, generate_keyset
from cvmfs.objects import EMPTY_FILE_SHA1, ContentHash, HashAlgorithm
from cvmfs.reader import RepositoryReader
from cvmfs.storage import LocalStorage
from cvmfs.transaction import AUTO_CATALOG_MARKER, CATALOG_MARKER, Transaction, TransactionError
from cvmfs.writer import (
    MANIFEST_KEY,
    PublishResult,
    RepositoryWriter,
    WriterOptions,
    create_repository,
    resign_whitelist,
)
from tests.test_cvmfs_writer_support import SteppingClock, check_catalog_invariants

FQRN = "writer.example.org"
T0 = 1_800_000_000  # 2027-01-15: every test pins its clock
SMALL_CHUNKS = ChunkingParams(min_size=64 << 10, avg_size=128 << 10, max_size=256 << 10)


@pytest.fixture(scope="module")
def keys() -> KeySet:
    return generate_keyset(FQRN, now=dt.datetime.fromtimestamp(T0 - 3600, dt.UTC))


def _reader(storage: LocalStorage, keys: KeySet, at: int = T0 + 60) -> RepositoryReader:
    return RepositoryReader(
        storage, FQRN, [keys.master_public_pem], now=dt.datetime.fromtimestamp(at, dt.UTC)
    )


def _new_repo(
    tmp_path: Path, keys: KeySet, options: WriterOptions | None = None, start: int = T0
) -> tuple[LocalStorage, RepositoryWriter]:
    storage = LocalStorage(tmp_path / "stratum0")
    clock = SteppingClock(*range(start, start + 10_000))
    writer, _created = create_repository(storage, FQRN, keys, options, clock=clock)
    return storage, writer


Tree = dict[str, tuple[Any, ...]]  # path -> ("dir", mode, mtime) | ("file", mode, mtime, bytes)


def _tree(reader: RepositoryReader) -> Tree:
    """What a client would see: every path with type, permissions, mtime, content/target."""
    out: Tree = {}
    for entry in reader.walk():
        if entry.path == "":
            continue
        perm = stat.S_IMODE(entry.mode)
        if entry.is_dir:
            out[entry.path] = ("dir", perm, entry.mtime)
        elif entry.is_symlink:
            out[entry.path] = ("symlink", entry.symlink, entry.mtime)
        else:
            out[entry.path] = ("file", perm, entry.mtime, reader.read(entry.path))
    return out


def _apply(txn: Transaction, tree: Tree) -> None:
    for path, item in sorted(tree.items()):
        if item[0] == "dir":
            txn.mkdir(path, mode=item[1], mtime=item[2])
        elif item[0] == "symlink":
            txn.symlink(path, item[1], mtime=item[2])
        else:
            txn.add_file(path, item[3], mode=item[1], mtime=item[2])


def _random_tree(rng: random.Random, n_files: int) -> Tree:
    tree: Tree = {}
    dirs = [""]
    for i in range(n_files // 4 + 1):
        parent = rng.choice(dirs)
        path = f"{parent}/d{i}"
        if path.count("/") <= 4:
            dirs.append(path)
            tree[path] = ("dir", rng.choice([0o755, 0o750]), T0 - rng.randrange(10**6))
    for i in range(n_files):
        parent = rng.choice(dirs)
        kind = rng.random()
        if kind < 0.1:
            tree[f"{parent}/l{i}"] = ("symlink", f"../t{i}", T0 - 5)
            continue
        size = rng.choice([0, 1, 100, 5000, 70_000, 300_000, 700_000])
        content = rng.randbytes(size) if rng.random() < 0.5 else bytes([i % 251]) * size
        mode = rng.choice([0o644, 0o755, 0o600])
        tree[f"{parent}/f{i}"] = ("file", mode, T0 - rng.randrange(10**6), content)
    for d in rng.sample(dirs[1:], k=min(3, len(dirs) - 1)):
        tree[f"{d}/{CATALOG_MARKER}"] = ("file", 0o644, T0, b"")
    return tree


def _implied_dirs(tree: Tree, reader_tree: Tree) -> Tree:
    """Our model plus the parent directories the transaction created implicitly."""
    return {p: v for p, v in reader_tree.items() if p not in tree and v[0] == "dir"}


# ------------------------------------------------------------------------------ create
def test_create_makes_a_verified_revision_1_with_an_empty_root(
    tmp_path: Path, keys: KeySet
) -> None:
    storage, writer = _new_repo(tmp_path, keys)
    with _reader(storage, keys) as reader:
        assert reader.signatures_verified
        assert reader.revision == 1
        assert reader.listdir("") == []
        root = reader.stat("")
        assert root.mode == 0o040755 and root.linkcount == 2 and root.mtime == T0
        assert reader.whitelist.expires == dt.datetime.fromtimestamp(T0, dt.UTC) + dt.timedelta(
            days=30
        )
        assert [t.name for t in reader.tags()] == ["generic-2027-01-15T08:00:01Z", "trunk"]
        refs = reader.reflog()
        assert sorted(r.type.label for r in refs) == [
            "catalog",
            "catalog",
            "certificate",
            "history",
        ]
        root_props = reader.catalogs()[0].properties
        assert root_props["revision"] == "1" and root_props["TTL"] == "240"
        rev0 = root_props["previous_revision"]
        assert rev0 in {r.content_hash.hex for r in refs}
    assert (storage.root / ".cvmfs_master_replica").read_text().startswith("This file marks")
    assert check_catalog_invariants(storage, writer.current_manifest().root_catalog_hash) == 1
    with pytest.raises(ConflictError):
        create_repository(storage, FQRN, keys)


def test_whitelist_expires_after_30_days_and_resigning_needs_only_the_master_key(
    tmp_path: Path, keys: KeySet
) -> None:
    storage, _writer = _new_repo(tmp_path, keys)
    day = 86400
    with pytest.raises(WhitelistExpiredError):
        _reader(storage, keys, at=T0 + 31 * day)
    new = resign_whitelist(
        storage,
        FQRN,
        keys.require_master_key(),
        now=dt.datetime.fromtimestamp(T0 + 29 * day, dt.UTC),
    )
    assert new.expires == dt.datetime.fromtimestamp(T0 + 59 * day, dt.UTC)
    with _reader(storage, keys, at=T0 + 58 * day) as reader:
        assert reader.whitelist.expires == new.expires
    other = generate_keyset(FQRN)
    resign_whitelist(storage, FQRN, other.require_master_key())
    with pytest.raises(SignatureError):
        _reader(storage, keys)


# ---------------------------------------------------------------------------- round trip
@pytest.mark.parametrize("seed", [1, 2, 3])
def test_random_trees_round_trip_through_the_reader(
    tmp_path: Path, keys: KeySet, seed: int
) -> None:
    rng = random.Random(seed)
    options = WriterOptions(chunking=SMALL_CHUNKS)
    storage, writer = _new_repo(tmp_path, keys, options)
    history: list[tuple[PublishResult, Tree]] = []
    tree = _random_tree(rng, 60)
    for step in range(3):
        with writer.transaction() as txn:
            if step == 0:
                _apply(txn, tree)
            else:
                victims = rng.sample(sorted(tree), k=min(8, len(tree)))
                for path in victims:
                    if path in tree:
                        txn.remove(path)
                        tree = {
                            p: v for p, v in tree.items() if not (p + "/").startswith(path + "/")
                        }
                changes = _random_tree(rng, 20)
                changes = {p.replace("/d", f"/s{step}d", 1): v for p, v in changes.items()}
                _apply(txn, changes)
                tree.update(changes)
            result = txn.publish()
        with _reader(storage, keys) as reader:
            seen = _tree(reader)
            model = {**tree, **_implied_dirs(tree, seen)}
            assert seen == model
            assert reader.revision == step + 2
        check_catalog_invariants(storage, result.root_hash)
        history.append((result, dict(seen)))
    # every earlier revision is still complete and readable
    with _reader(storage, keys) as reader:
        for result, seen in history:
            with reader.at_root_hash(result.root_hash) as old:
                assert _tree(old) == seen


def test_chunked_files_use_chunk_objects_and_read_back(tmp_path: Path, keys: KeySet) -> None:
    storage, writer = _new_repo(tmp_path, keys, WriterOptions(chunking=SMALL_CHUNKS))
    data = random.Random(7).randbytes(1_000_000)
    with writer.transaction() as txn:
        txn.add_file("/big.bin", data)
        txn.add_file("/small.bin", data[:1000])
        txn.publish()
    with _reader(storage, keys) as reader:
        big = reader.stat("/big.bin")
        assert big.is_chunked and big.content_hash is None and big.flags == 68
        assert len(big.chunks) >= 4
        offsets = [c.offset for c in big.chunks]
        assert offsets == sorted(offsets) and offsets[0] == 0
        assert all(
            SMALL_CHUNKS.min_size <= c.size <= SMALL_CHUNKS.max_size for c in big.chunks[:-1]
        )
        assert all((storage.root / c.object_key).is_file() for c in big.chunks)
        assert reader.read("/big.bin") == data
        small = reader.stat("/small.bin")
        assert not small.is_chunked and small.flags == 4 and small.size == 1000


def test_without_compression_objects_are_raw_and_flagged(tmp_path: Path, keys: KeySet) -> None:
    storage, writer = _new_repo(tmp_path, keys, WriterOptions(compress=False, chunking=None))
    with writer.transaction() as txn:
        txn.add_file("/raw.txt", b"raw bytes\n" * 1000)
        txn.publish()
    with _reader(storage, keys) as reader:
        entry = reader.stat("/raw.txt")
        assert entry.flags == 4 | (1 << 11)
        assert (storage.root / str(entry.object_key)).read_bytes() == b"raw bytes\n" * 1000
        assert reader.read("/raw.txt") == b"raw bytes\n" * 1000


def test_modes_owners_symlinks_xattrs_and_setuid_stripping(tmp_path: Path, keys: KeySet) -> None:
    storage, writer = _new_repo(tmp_path, keys)
    with writer.transaction() as txn:
        txn.add_file("/bin/tool", b"#!/bin/sh\n", mode=0o4755, mtime=5, uid=1000, gid=100)
        txn.mkdir("/etc", mode=0o2750, mtime=6, xattrs={b"user.role": b"config"})
        txn.symlink("/bin/alias", "tool", mtime=7)
        txn.publish()
    with _reader(storage, keys) as reader:
        tool = reader.stat("/bin/tool")
        assert (tool.mode, tool.uid, tool.gid, tool.mtime) == (0o100755, 1000, 100, 5)
        etc = reader.stat("/etc")
        assert etc.mode == 0o040750 and dict(etc.xattrs) == {b"user.role": b"config"}
        alias = reader.stat("/bin/alias")
        assert (alias.mode, alias.flags, alias.size, alias.symlink) == (0o120777, 12, 4, "tool")
        assert reader.stat("/bin").linkcount == 2 and reader.stat("").linkcount == 4
    check_catalog_invariants(storage, writer.current_manifest().root_catalog_hash)


def test_bad_paths_are_refused_and_nothing_is_published(tmp_path: Path, keys: KeySet) -> None:
    storage, writer = _new_repo(tmp_path, keys)
    before = storage.get(MANIFEST_KEY)
    with writer.transaction() as txn:
        for bad in ("/a/../b", "relative", "/a//b", "/a\0b", "/" + "x" * 256, "/.cvmfs/x"):
            with pytest.raises(InvalidPathError):
                txn.add_file(bad, b"x")
        with pytest.raises(InvalidPathError):
            txn.remove("/")
    assert storage.get(MANIFEST_KEY) == before


# ----------------------------------------------------------------------- nested catalogs
def test_markers_create_and_removing_them_merges_nested_catalogs(
    tmp_path: Path, keys: KeySet
) -> None:
    storage, writer = _new_repo(tmp_path, keys)
    with writer.transaction() as txn:
        for i in range(5):
            txn.add_file(f"/sw/v1/lib/f{i}", b"v1 %d" % i)
            txn.add_file(f"/sw/v2/lib/f{i}", b"v2 %d" % i)
        txn.add_file("/sw/.cvmfscatalog", b"")
        txn.add_file("/sw/v1/.cvmfscatalog", b"")
        txn.add_file("/sw/v2/.cvmfscatalog", b"")
        first = txn.publish()
    assert set(first.catalogs_rewritten) == {"/sw/v1", "/sw/v2", "/sw", ""}
    assert check_catalog_invariants(storage, first.root_hash) == 4
    with writer.transaction() as txn:
        txn.add_file("/sw/v2/lib/new", b"new")
        second = txn.publish()
    assert second.catalogs_rewritten == ["/sw/v2", "/sw", ""]  # /sw/v1 keeps its hash
    with _reader(storage, keys) as reader:
        by_mount = {c.mountpoint: c.content_hash for c in reader.catalogs()}
        old = {c.mountpoint: c.content_hash for c in first.catalogs_written}
        assert by_mount["/sw/v1"] == old["/sw/v1"] and by_mount["/sw/v2"] != old["/sw/v2"]
        assert reader.stat("/sw/v1").flags == 33  # the nested catalog's root row
        listed = {e.name: e for e in reader.listdir("/sw")}
        assert listed["v1"].flags == 3  # the transition point in the parent catalog
    with writer.transaction() as txn:
        txn.remove("/sw/.cvmfscatalog")  # /sw merges into the root; /sw/v1, /sw/v2 stay nested
        third = txn.publish()
    assert check_catalog_invariants(storage, third.root_hash) == 3
    with _reader(storage, keys) as reader:
        assert sorted(c.mountpoint for c in reader.catalogs()) == ["", "/sw/v1", "/sw/v2"]
        assert reader.read("/sw/v2/lib/new") == b"new"
        assert sorted(e.name for e in reader.listdir("/sw/v1/lib")) == [f"f{i}" for i in range(5)]
    with writer.transaction() as txn:
        txn.remove("/sw/v1")  # a whole nested catalog goes
        fourth = txn.publish()
    assert check_catalog_invariants(storage, fourth.root_hash) == 2
    with _reader(storage, keys) as reader:
        assert not reader.exists("/sw/v1")
        assert reader.stat("/sw").linkcount == 3


def test_automatic_catalogs_keep_every_catalog_under_the_limit(
    tmp_path: Path, keys: KeySet
) -> None:
    limit = 40
    storage, writer = _new_repo(tmp_path, keys, WriterOptions(max_catalog_entries=limit))
    with writer.transaction() as txn:
        for d in range(6):
            for s in range(3):
                for f in range(8):
                    txn.add_file(f"/top/d{d}/s{s}/f{f}", b"%d-%d-%d" % (d, s, f))
        result = txn.publish()
    assert check_catalog_invariants(storage, result.root_hash) > 1
    with _reader(storage, keys) as reader:
        infos = reader.catalogs()
        for info in infos:
            assert reader.load_catalog(info.content_hash, info.mountpoint).entry_count() <= limit
        for info in infos[1:]:
            assert reader.exists(f"{info.mountpoint}/{AUTO_CATALOG_MARKER}")
            assert reader.stat(f"{info.mountpoint}/{CATALOG_MARKER}").content_hash == (
                ContentHash.from_hex(EMPTY_FILE_SHA1)
            )
        files = [e for e in reader.walk() if e.is_regular and not e.name.startswith(".")]
        assert len(files) == 6 * 3 * 8
        assert reader.read("/top/d5/s2/f7") == b"5-2-7"


def test_hard_links_in_one_directory_form_a_group_elsewhere_a_copy(
    tmp_path: Path, keys: KeySet
) -> None:
    storage, writer = _new_repo(tmp_path, keys)
    with writer.transaction() as txn:
        txn.add_file("/h/a", b"shared\n")
        txn.link("/h/a", "/h/b")
        txn.link("/h/a", "/h/c")
        txn.link("/h/a", "/other/d")
        with pytest.raises(TransactionError, match="itself"):
            txn.link("/h/a", "/h/a")
        txn.publish()
    with _reader(storage, keys) as reader:
        a, b, c = (reader.stat(f"/h/{n}") for n in "abc")
        assert a.hardlink_group == b.hardlink_group == c.hardlink_group != 0
        assert a.linkcount == b.linkcount == c.linkcount == 3
        d = reader.stat("/other/d")
        assert (d.hardlink_group, d.linkcount, d.content_hash) == (0, 1, a.content_hash)
    with writer.transaction() as txn:
        txn.remove("/h/b")
        txn.remove("/h/c")
        result = txn.publish()
    with _reader(storage, keys) as reader:
        a = reader.stat("/h/a")
        assert (a.hardlink_group, a.linkcount) == (0, 1)
    check_catalog_invariants(storage, result.root_hash)


# ------------------------------------------------------------------------------ dedup
class CountingStorage(LocalStorage):
    """A real LocalStorage that records the keys it is asked to write."""

    def __init__(self, root: Path) -> None:
        super().__init__(root)
        self.writes: list[str] = []

    def put(self, key: str, data: bytes | IO[bytes]) -> None:
        self.writes.append(key)
        super().put(key, data)

    def put_atomic(self, key: str, data: bytes) -> None:
        self.writes.append(key)
        super().put_atomic(key, data)


def test_identical_content_is_uploaded_once(tmp_path: Path, keys: KeySet) -> None:
    storage = CountingStorage(tmp_path / "s")
    writer, _ = create_repository(storage, FQRN, keys, clock=SteppingClock(T0, T0 + 1, T0 + 2))
    with writer.transaction() as txn:
        for i in range(10):
            txn.add_file(f"/copy{i}", b"same content")
        txn.publish()
    content_writes = [k for k in storage.writes if k.startswith("data/") and k[-1] not in "CHX"]
    assert len(content_writes) == 1
    storage.writes.clear()
    with writer.transaction() as txn:
        txn.add_file("/again", b"same content")
        txn.publish()
    assert [k for k in storage.writes if k.startswith("data/") and k[-1] not in "CHX"] == []


# ---------------------------------------------------------------- conflicts and clocks
def test_second_publish_from_the_same_base_is_a_conflict(tmp_path: Path, keys: KeySet) -> None:
    storage, writer = _new_repo(tmp_path, keys)
    other_writer = RepositoryWriter.open(storage, FQRN, keys)
    first = writer.transaction()
    second = other_writer.transaction()
    first.add_file("/from-first", b"1")
    second.add_file("/from-second", b"2")
    published = first.publish()
    manifest_after_first = storage.get(MANIFEST_KEY)
    with pytest.raises(ConflictError, match="revision 1 to 2"):
        second.publish()
    assert storage.get(MANIFEST_KEY) == manifest_after_first
    with writer.transaction() as txn:
        txn.add_file("/from-second", b"2")
        again = txn.publish()
    assert again.revision == published.revision + 1 == 3
    with _reader(storage, keys) as reader:
        assert reader.read("/from-first") == b"1" and reader.read("/from-second") == b"2"


def test_timestamps_never_go_backwards_and_revisions_increase(tmp_path: Path, keys: KeySet) -> None:
    storage = LocalStorage(tmp_path / "s")
    clock = SteppingClock(T0, T0 - 500, T0 - 1000)
    writer, created = create_repository(storage, FQRN, keys, clock=clock)
    revisions = [created.revision]
    stamps = [created.timestamp]
    for i in range(2):
        with writer.transaction() as txn:
            txn.add_file(f"/f{i}", b"x")
            result = txn.publish()
        revisions.append(result.revision)
        stamps.append(result.timestamp)
    assert revisions == [1, 2, 3]
    assert stamps == [T0, T0, T0]
    with _reader(storage, keys) as reader:
        assert int(reader.catalogs()[0].properties["last_modified"]) <= T0


# -------------------------------------------------------------------- crash injection
class InjectedCrash(Exception):
    """Raised by CrashingStorage in place of a process dying mid-publish."""


class CrashingStorage(LocalStorage):
    """Test double for a crash: a real LocalStorage that raises InjectedCrash instead of
    performing its N-th write (put / put_atomic), as if the publisher died between two storage
    writes. A crash cannot be caused for real at an exact write boundary, hence the double."""

    def __init__(self, root: Path, crash_at: int) -> None:
        super().__init__(root)
        self.crash_at = crash_at
        self.writes = 0

    def _tick(self) -> None:
        self.writes += 1
        if self.writes == self.crash_at:
            raise InjectedCrash(f"crash before write {self.crash_at}")

    def put(self, key: str, data: bytes | IO[bytes]) -> None:
        self._tick()
        super().put(key, data)

    def put_atomic(self, key: str, data: bytes) -> None:
        self._tick()
        super().put_atomic(key, data)


def _change(txn: Transaction, n: int) -> None:
    txn.add_file(f"/nested/file-{n}", b"content %d" % n)
    txn.add_file(f"/top-{n}", bytes([n]) * 100_000)
    txn.remove(f"/nested/file-{n - 1}", missing_ok=True)
    txn.symlink(f"/link-{n}", f"top-{n}")


def _snapshot(storage: LocalStorage, keys: KeySet) -> tuple[int, Tree]:
    with _reader(storage, keys) as reader:
        return reader.revision, _tree(reader)


def test_a_crash_between_any_two_writes_leaves_the_previous_revision_intact(
    tmp_path: Path, keys: KeySet
) -> None:
    root = tmp_path / "stratum0"
    storage, writer = _new_repo(tmp_path, keys)
    with writer.transaction() as txn:
        txn.add_file("/nested/.cvmfscatalog", b"")
        txn.add_file("/nested/file-0", b"content 0")
        txn.publish()
    crash_at = 1
    n = 1
    while True:
        before = _snapshot(storage, keys)
        crashing = CrashingStorage(root, crash_at)
        crash_writer = RepositoryWriter.open(
            crashing, FQRN, keys, clock=SteppingClock(T0 + 100 + n)
        )
        try:
            with crash_writer.transaction() as txn:
                _change(txn, n)
                txn.publish()
        except InjectedCrash:
            pass
        else:
            break  # crash_at is past the last write of a publish: every boundary was tried
        assert _snapshot(storage, keys) == before, f"crash at write {crash_at}"
        with _reader(storage, keys) as reader:
            report = fsck(reader, all_revisions=True)
            assert report.ok, (crash_at, [str(p) for p in report.problems])
        check_catalog_invariants(storage, writer.current_manifest().root_catalog_hash)
        # the next publish (same change) succeeds on the real storage
        with writer.transaction() as txn:
            _change(txn, n)
            txn.publish()
        revision, tree = _snapshot(storage, keys)
        assert revision == before[0] + 1 and tree[f"/nested/file-{n}"][3] == b"content %d" % n
        crash_at += 1
        n += 1
    # every boundary was tried: 2 content objects, nested + root catalog, history, reflog,
    # manifest (the certificate object already exists)
    assert crashing.writes == crash_at - 1 == 7


# ------------------------------------------------------------------- tags and rollback
def _catalog_rows(reader: RepositoryReader) -> list[Any]:
    rows = sorted(reader.root_catalog.rows(), key=lambda r: r.md5path)
    return [(r.md5path, r.parent, r.entry) for r in rows]


def test_tag_and_rollback_to_a_tag(tmp_path: Path, keys: KeySet) -> None:
    storage, writer = _new_repo(tmp_path, keys)
    with writer.transaction() as txn:
        txn.add_file("/app/version", b"1.0\n")
        txn.add_file("/app/lib/.cvmfscatalog", b"")
        txn.add_file("/app/lib/libx.so", b"x1")
        v1 = txn.publish()
    tagged = writer.tag("v1.0", description="first release")
    assert tagged.revision == v1.revision and tagged.root_hash == v1.root_hash
    assert tagged.timestamp >= v1.timestamp
    with writer.transaction() as txn:
        txn.add_file("/app/version", b"2.0\n")
        txn.add_file("/app/lib/libx.so", b"x2")
        txn.remove("/app/lib/.cvmfscatalog")
        v2 = txn.publish()
    with _reader(storage, keys) as reader:
        tags = {t.name: t for t in reader.tags()}
        assert tags["v1.0"].root_hash == v1.root_hash and tags["v1.0"].revision == 2
        assert tags["v1.0"].description == "first release"
        with reader.at_tag("v1.0") as old:
            tree_v1 = _tree(old)
            rows_v1 = _catalog_rows(old)
    rolled = writer.rollback("v1.0")
    assert rolled.revision == v2.revision + 1 == 4
    with _reader(storage, keys) as reader:
        assert reader.revision == 4
        assert _tree(reader) == tree_v1
        assert _catalog_rows(reader) == rows_v1
        props = reader.catalogs()[0].properties
        assert props["revision"] == "4" and props["previous_revision"] == v2.root_hash.hex
        tags = {t.name: t for t in reader.tags()}
        assert tags["trunk"].revision == 4 and tags["trunk-previous"].revision == 3
        assert reader.read("/app/lib/libx.so") == b"x1"
    check_catalog_invariants(storage, rolled.root_hash)
    with writer.transaction() as txn:  # publishing continues normally after a rollback
        txn.add_file("/app/version", b"3.0\n")
        assert txn.publish().revision == 5


def test_a_failed_operation_makes_the_transaction_refuse_to_publish(
    tmp_path: Path, keys: KeySet
) -> None:
    storage, _writer = _new_repo(tmp_path, keys)
    before = storage.get(MANIFEST_KEY)
    crashing = CrashingStorage(tmp_path / "stratum0", crash_at=1)
    writer = RepositoryWriter.open(crashing, FQRN, keys)
    txn = writer.transaction()
    with pytest.raises(InjectedCrash):  # from add_file or from the next call that waits for it
        txn.add_file("/a", b"the upload of this object fails")
        txn.mkdir("/b")
    with pytest.raises(TransactionError, match="cannot be published"):
        txn.publish()
    txn.abort()
    assert storage.get(MANIFEST_KEY) == before
    with writer.transaction() as again:  # a fresh transaction works (crash_at was used up)
        again.add_file("/a", b"second try")
        assert again.publish().revision == 2


def test_publishing_needs_an_unexpired_whitelist_listing_the_certificate(
    tmp_path: Path, keys: KeySet
) -> None:
    storage, _writer = _new_repo(tmp_path, keys)
    late = RepositoryWriter.open(storage, FQRN, keys, clock=SteppingClock(T0 + 31 * 86400))
    with late.transaction() as txn:
        txn.add_file("/x", b"x")
        with pytest.raises(WhitelistExpiredError, match="re-sign"):
            txn.publish()
    foreign = generate_keyset(FQRN)
    stranger = RepositoryWriter.open(storage, FQRN, foreign)  # its certificate is not listed
    with stranger.transaction() as txn, pytest.raises(SignatureError, match="not listed"):
        txn.publish()
    resign_whitelist(  # after re-signing, the late writer publishes again
        storage,
        FQRN,
        keys.require_master_key(),
        now=dt.datetime.fromtimestamp(T0 + 31 * 86400, dt.UTC),
    )
    with late.transaction() as txn:
        txn.add_file("/x", b"x")
        assert txn.publish().revision == 2


def test_another_hash_algorithm_is_recorded_in_flags_and_names(
    tmp_path: Path, keys: KeySet
) -> None:
    options = WriterOptions(hash_algorithm=HashAlgorithm.SHAKE128, chunking=SMALL_CHUNKS)
    storage, writer = _new_repo(tmp_path, keys, options)
    data = random.Random(3).randbytes(400_000)
    with writer.transaction() as txn:
        txn.add_file("/small", b"shake it\n")
        txn.add_file("/big", data)
        txn.add_file("/sub/.cvmfscatalog", b"")
        result = txn.publish()
    assert result.root_hash.hex.endswith("-shake128")
    assert (storage.root / result.root_hash.object_key("C")).is_file()
    with _reader(storage, keys) as reader:
        small, big = reader.stat("/small"), reader.stat("/big")
        assert small.flags == 4 | (2 << 8) and big.flags == 4 | 64 | (2 << 8)
        assert str(small.object_key).endswith("-shake128")
        assert reader.read("/big") == data
        assert all(c.content_hash.algorithm is HashAlgorithm.SHAKE128 for c in big.chunks)
        assert reader.catalogs()[1].content_hash.hex.endswith("-shake128")
        assert fsck(reader).ok
    check_catalog_invariants(storage, result.root_hash)


def test_a_transaction_answers_what_exists_including_its_own_changes(
    tmp_path: Path, keys: KeySet
) -> None:
    _storage, writer = _new_repo(tmp_path, keys)
    with writer.transaction() as txn:
        txn.add_file("/sw/.cvmfscatalog", b"")
        txn.add_file("/sw/a", b"a")
        txn.symlink("/sw/b", "a")
        txn.publish()
    with writer.transaction() as txn:
        assert not txn.has_changes and txn.exists("/sw/a")
        assert not txn.has_changes  # reading changes nothing
        txn.add_file("/sw/c", b"c")
        assert txn.has_changes
        txn.remove("/sw/a")
        assert txn.listdir("/sw") == [".cvmfscatalog", "b", "c"]
        assert txn.exists("/sw/c") and not txn.exists("/sw/a")
        row = txn.stat("/sw/b")
        assert row is not None and row.is_symlink and row.symlink == "a"
        assert txn.listdir("/") == ["sw"]
        with pytest.raises(NotFoundError):
            txn.listdir("/sw/c")


@pytest.mark.parametrize("name", ["", "with space", "a/b", "trunk", "trunk-previous"])
def test_bad_tag_names_are_refused(tmp_path: Path, keys: KeySet, name: str) -> None:
    storage, writer = _new_repo(tmp_path, keys)
    before = storage.get(MANIFEST_KEY)
    with pytest.raises(CvmfsError, match="tag name"):
        writer.tag(name)
    with writer.transaction() as txn, pytest.raises(CvmfsError, match="tag name"):
        txn.publish(tag=name)
    assert storage.get(MANIFEST_KEY) == before


def test_a_crash_at_any_write_of_create_leaves_storage_a_fresh_create_completes(
    tmp_path: Path, keys: KeySet
) -> None:
    crash_at = 1
    while True:
        root = tmp_path / f"try-{crash_at}"
        crashing = CrashingStorage(root, crash_at)
        try:
            create_repository(crashing, FQRN, keys, clock=SteppingClock(T0))
        except InjectedCrash:
            assert not (root / MANIFEST_KEY).exists()  # no manifest, so no repository yet
        else:
            break
        storage = LocalStorage(root)
        _writer, created = create_repository(storage, FQRN, keys, clock=SteppingClock(T0))
        assert created.revision == 1
        with _reader(storage, keys) as reader:
            assert fsck(reader, all_revisions=True).ok
        crash_at += 1
    # rev0 catalog, reflog, certificate, whitelist, replica marker, rev1 catalog, history,
    # reflog, manifest
    assert crashing.writes == crash_at - 1 == 9


def test_local_files_read_on_the_workers_match_add_file_and_a_read_error_refuses_publish(
    tmp_path: Path, keys: KeySet
) -> None:
    """`add_local_file` (what `import_directory` uses) reads small files on the pipeline's
    workers: same catalog rows and objects as `add_file`, every descriptor closed, and a real
    read error on a worker (a directory's descriptor: EISDIR) spoils the transaction."""
    options = WriterOptions(chunking=SMALL_CHUNKS)
    sizes = [0, 100, 64 << 10, (64 << 10) + 1, 300_000]  # up to and above the minimum chunk
    rng = random.Random(7)
    contents = [rng.randbytes(size) for size in sizes]
    sources = []
    for i, content in enumerate(contents):
        source = tmp_path / f"src{i}"
        source.write_bytes(content)
        sources.append(source)
    by_stream, by_stream_writer = _new_repo(tmp_path / "a", keys, options)
    by_fd, by_fd_writer = _new_repo(tmp_path / "b", keys, options)
    descriptors = []
    with by_stream_writer.transaction() as txn:
        for i, content in enumerate(contents):
            txn.add_file(f"/d/f{i}", content, mode=0o755, mtime=T0)
        txn.publish()
    with by_fd_writer.transaction() as txn:
        for i, source in enumerate(sources):
            descriptors.append(os.open(source, os.O_RDONLY))
            txn.add_local_file(f"/d/f{i}", descriptors[-1], mode=0o755, mtime=T0)
        txn.publish()
    for descriptor in descriptors:
        with pytest.raises(OSError):
            os.fstat(descriptor)  # closed by the transaction
    assert _tree(_reader(by_fd, keys)) == _tree(_reader(by_stream, keys))
    assert sorted(by_fd.list("data/")) == sorted(by_stream.list("data/"))
    assert fsck(_reader(by_fd, keys)).ok

    before = by_fd.get(MANIFEST_KEY)
    txn = by_fd_writer.transaction()
    with pytest.raises(IsADirectoryError):  # from the call itself or the next that waits
        txn.add_local_file("/broken", os.open(tmp_path, os.O_RDONLY))  # a directory: EISDIR
        txn.mkdir("/after")
    with pytest.raises(TransactionError, match="cannot be published"):
        txn.publish()
    txn.abort()
    assert by_fd.get(MANIFEST_KEY) == before

    # Aborted with files still queued (one worker, many files): none of their descriptors leak.
    _one_worker, one_worker_writer = _new_repo(
        tmp_path / "c", keys, WriterOptions(chunking=SMALL_CHUNKS, workers=1)
    )
    txn = one_worker_writer.transaction()
    for i in range(100):
        txn.add_local_file(
            f"/q/f{i}", os.open(sources[2], os.O_RDONLY)
        )  # 64 KiB: a worker reads it
    txn.abort()
    assert _descriptors_of(sources[2]) == []


def _descriptors_of(path: Path) -> list[str]:
    """This process's open descriptors on `path`."""
    found = []
    for name in os.listdir("/proc/self/fd"):
        try:
            if os.readlink(f"/proc/self/fd/{name}") == str(path):
                found.append(name)
        except FileNotFoundError:  # closed meanwhile (the listing's own descriptor)
            continue
    return found
