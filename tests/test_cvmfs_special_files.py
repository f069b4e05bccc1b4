"""Special files (char/block devices, FIFOs, sockets) in a real local repository.

What the stock publisher writes for them (spec §2.4, §2.6, §2.8; upstream `SqlDirent::
CreateDatabaseFlags`, `SyncItem::CreateBasicCatalogDirent`): flags exactly 20, no content hash,
the full st_mode, `size` = makedev(major, minor) for devices and 0 otherwise, counted in
`self_special`, in a catalog declaring schema revision 5 or later. Then the importers (tarballs,
directories) that produce them, and fsck accepting them and catching rows that are not right.
"""

from __future__ import annotations

import io
import os
import socket
import sqlite3
import stat
import tarfile
from pathlib import Path

import pytest

from cvmfs.catalog import (
    FLAG_FILE,
    SCHEMA_REVISION_SPECIAL_FILES,
    SPECIAL_FILE_FLAGS,
)
from cvmfs.catalog_writer import Row
from cvmfs.fsck import fsck
from cvmfs.keys import KeySet, generate_keyset
from cvmfs.objects import ObjectSuffix, compress_and_hash
from cvmfs.reader import RepositoryReader
from cvmfs.storage import LocalStorage
from cvmfs.tarball import (
    EntryType,
    ImportStats,
    TarPolicy,
    import_directory,
    import_tarball,
    iter_tar_entries,
)
from cvmfs.transaction import TransactionError
from cvmfs.writer import RepositoryWriter, create_repository
from service.api.browse import list_path

FQRN = "special.example.org"
MTIME = 1_704_067_200
NULL = os.makedev(1, 3)
SDA = os.makedev(8, 0)
# major/minor beyond 8 bits: glibc's makedev packs them in split fields (spec §2.4)
WIDE = os.makedev(259, 70000)


@pytest.fixture
def keys() -> KeySet:
    return generate_keyset(FQRN)


@pytest.fixture
def repository(tmp_path: Path, keys: KeySet) -> tuple[RepositoryWriter, LocalStorage]:
    storage = LocalStorage(tmp_path / "stratum0")
    writer, _ = create_repository(storage, FQRN, keys)
    return writer, storage


def reader_for(storage: LocalStorage, keys: KeySet) -> RepositoryReader:
    return RepositoryReader(storage, FQRN, [keys.master_public_pem])


def raw_rows(reader: RepositoryReader, mountpoint: str = "") -> dict[str, tuple[object, ...]]:
    """name -> (flags, hash, size, mode) straight from the catalog's SQLite file."""
    catalog = reader.catalog_for(mountpoint)
    with sqlite3.connect(f"file:{catalog.db_path}?mode=ro", uri=True) as db:
        rows = db.execute("SELECT name, flags, hash, size, mode FROM catalog").fetchall()
    return {str(name): (flags, h, size, mode) for name, flags, h, size, mode in rows}


def publish_specials(writer: RepositoryWriter, prefix: str = "") -> None:
    with writer.transaction() as txn:
        txn.add_special_file(f"{prefix}/dev/null", stat.S_IFCHR | 0o666, rdev=NULL, mtime=MTIME)
        txn.add_special_file(f"{prefix}/dev/sda", stat.S_IFBLK | 0o660, rdev=SDA, gid=6)
        txn.add_special_file(f"{prefix}/dev/wide", stat.S_IFCHR | 0o600, rdev=WIDE)
        txn.add_special_file(f"{prefix}/run/fifo", stat.S_IFIFO | 0o644, rdev=NULL)
        txn.add_special_file(f"{prefix}/run/sock", stat.S_IFSOCK | 0o755)
        txn.mkdir(f"{prefix}/tmp", mode=0o1777)
        txn.add_file(f"{prefix}/tmp/regular", b"x", mode=0o644)
        txn.publish()


def test_special_rows_are_what_the_stock_publisher_writes(
    repository: tuple[RepositoryWriter, LocalStorage], keys: KeySet
) -> None:
    writer, storage = repository
    publish_specials(writer)
    with reader_for(storage, keys) as reader:
        rows = raw_rows(reader)
        assert rows["null"] == (20, None, NULL, stat.S_IFCHR | 0o666)
        assert rows["sda"] == (20, None, SDA, stat.S_IFBLK | 0o660)
        assert rows["wide"] == (20, None, WIDE, stat.S_IFCHR | 0o600)
        assert rows["fifo"] == (20, None, 0, stat.S_IFIFO | 0o644)  # rdev ignored for a FIFO
        assert rows["sock"] == (20, None, 0, stat.S_IFSOCK | 0o755)
        assert rows["tmp"][3] == stat.S_IFDIR | 0o1777  # the sticky bit is kept
        assert SPECIAL_FILE_FLAGS == 20
        catalog = reader.root_catalog
        assert catalog.schema_revision >= SCHEMA_REVISION_SPECIAL_FILES
        statistics = catalog.statistics()
        assert statistics["self_special"] == 5
        assert statistics["self_regular"] == 1
        assert statistics["self_file_size"] == 1  # device numbers are not file sizes


def test_reader_gives_back_type_device_numbers_and_mode(
    repository: tuple[RepositoryWriter, LocalStorage], keys: KeySet
) -> None:
    writer, storage = repository
    publish_specials(writer)
    with reader_for(storage, keys) as reader:
        got = {
            entry.path: (entry.special_kind, entry.device, stat.S_IMODE(entry.mode))
            for entry in reader.walk()
            if entry.is_special
        }
        assert got == {
            "/dev/null": ("char-device", (1, 3), 0o666),
            "/dev/sda": ("block-device", (8, 0), 0o660),
            "/dev/wide": ("char-device", (259, 70000), 0o600),
            "/run/fifo": ("fifo", None, 0o644),
            "/run/sock": ("socket", None, 0o755),
        }
        null = reader.stat("/dev/null")
        assert (null.mtime, null.uid, null.gid, null.linkcount) == (MTIME, 0, 0, 1)
        assert reader.stat("/dev/sda").gid == 6
        assert not reader.stat("/tmp/regular").is_special
        report = fsck(reader)
        assert report.ok, report.problems


def test_special_files_in_a_nested_catalog_count_in_the_subtree(
    repository: tuple[RepositoryWriter, LocalStorage], keys: KeySet
) -> None:
    writer, storage = repository
    with writer.transaction() as txn:
        txn.add_file("/image/.cvmfscatalog", b"")
        txn.publish()
    publish_specials(writer, "/image")
    with reader_for(storage, keys) as reader:
        assert reader.catalog_for("/image/dev/null").mountpoint == "/image"
        assert reader.root_catalog.statistics()["subtree_special"] == 5
        assert reader.stat("/image/dev/sda").device == (8, 0)
        report = fsck(reader)
        assert report.ok, report.problems


def test_special_files_replace_and_are_replaced_like_files(
    repository: tuple[RepositoryWriter, LocalStorage], keys: KeySet
) -> None:
    writer, storage = repository
    publish_specials(writer)
    with writer.transaction() as txn:
        txn.add_file("/dev/null", b"now a file")  # a file replaces a device
        txn.add_special_file("/tmp/regular", stat.S_IFIFO | 0o600)  # and the other way round
        txn.remove("/run/sock")
        txn.publish()
    with reader_for(storage, keys) as reader:
        assert reader.read("/dev/null") == b"now a file"
        assert reader.stat("/tmp/regular").special_kind == "fifo"
        assert not reader.exists("/run/sock")
        assert reader.root_catalog.statistics()["self_special"] == 4
        assert fsck(reader).ok


def test_add_special_file_refuses_other_types_and_directories(
    repository: tuple[RepositoryWriter, LocalStorage],
) -> None:
    writer, _ = repository
    with writer.transaction() as txn:
        with pytest.raises(TransactionError, match="not a char/block device"):
            txn.add_special_file("/f", stat.S_IFREG | 0o644)
        txn.mkdir("/d")
        with pytest.raises(TransactionError, match="is a directory"):
            txn.add_special_file("/d", stat.S_IFIFO | 0o644)
        txn.add_special_file("/ok", stat.S_IFIFO | 0o644)  # the transaction is still usable
        assert txn.stat("/ok") is not None


def test_setid_bits_of_a_device_are_stripped(
    repository: tuple[RepositoryWriter, LocalStorage], keys: KeySet
) -> None:
    writer, storage = repository
    with writer.transaction() as txn:
        txn.add_special_file("/dev/x", stat.S_IFCHR | 0o6755, rdev=NULL)
        txn.publish()
    with reader_for(storage, keys) as reader:
        assert reader.stat("/dev/x").mode == stat.S_IFCHR | 0o755


def test_fsck_reports_special_rows_the_stock_publisher_would_not_write(
    repository: tuple[RepositoryWriter, LocalStorage], keys: KeySet
) -> None:
    """The public API cannot write such rows; the transaction's row writer is used directly to
    produce them (a faulty catalog, as another writer could leave it)."""
    writer, storage = repository
    with writer.transaction() as txn:
        txn._put_leaf(Row("/bad-flags", stat.S_IFCHR | 0o644, MTIME, FLAG_FILE, size=NULL))
        txn._put_leaf(Row("/fifo-size", stat.S_IFIFO | 0o644, MTIME, SPECIAL_FILE_FLAGS, size=7))
        txn._put_leaf(
            Row(
                "/with-hash",
                stat.S_IFSOCK | 0o644,
                MTIME,
                SPECIAL_FILE_FLAGS,
                content_hash=b"\x01" * 20,
            )
        )
        txn.publish()
    with reader_for(storage, keys) as reader:
        problems = sorted(str(p) for p in fsck(reader).problems)
    assert any(p.startswith("/bad-flags: char-device with flags 4") for p in problems), problems
    assert any(p.startswith("/fifo-size: fifo with size 7") for p in problems), problems
    assert any(p.startswith("/with-hash: socket with a content hash") for p in problems), problems


def test_fsck_reports_special_files_in_a_catalog_below_schema_revision_5(
    repository: tuple[RepositoryWriter, LocalStorage], keys: KeySet, tmp_path: Path
) -> None:
    """A client picks its columns by the declared revision (spec §2.2): special files need 5.

    The root catalog is rewritten to declare revision 4 and stored under its new hash; the
    revision is opened by that hash, since the manifest is not re-signed here."""
    writer, storage = repository
    publish_specials(writer)
    with reader_for(storage, keys) as reader:
        copy = tmp_path / "old.sqlite"
        copy.write_bytes(Path(reader.root_catalog.db_path).read_bytes())
        with sqlite3.connect(copy) as db:
            db.execute("UPDATE properties SET value = '4' WHERE key = 'schema_revision'")
        db.close()
        stored, old_hash = compress_and_hash(copy.read_bytes())
        storage.put(old_hash.object_key(ObjectSuffix.CATALOG), stored)
        assert fsck(reader).ok
        problems = [str(p) for p in fsck(reader.at_root_hash(old_hash)).problems]
    assert any("declares schema revision 4" in p for p in problems), problems


# ------------------------------------------------------------------------------ importers
def tar_of(*members: tarfile.TarInfo) -> bytes:
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w", format=tarfile.PAX_FORMAT) as archive:
        for info in members:
            data = b"content" if info.isreg() else None
            if data is not None:
                info.size = len(data)
            archive.addfile(info, io.BytesIO(data) if data is not None else None)
    return buffer.getvalue()


def member(
    name: str, kind: bytes, mode: int, major: int = 0, minor: int = 0, link: str = ""
) -> tarfile.TarInfo:
    info = tarfile.TarInfo(name)
    info.type, info.mode, info.mtime = kind, mode, MTIME
    info.devmajor, info.devminor, info.linkname = major, minor, link
    info.uid, info.gid = 0, 5
    return info


ROOTFS = tar_of(
    member("dev", tarfile.DIRTYPE, 0o755),
    member("dev/console", tarfile.CHRTYPE, 0o600, 5, 1),
    member("dev/null", tarfile.CHRTYPE, 0o666, 1, 3),
    member("dev/loop0", tarfile.BLKTYPE, 0o660, 7, 0),
    member("dev/null2", tarfile.LNKTYPE, 0o666, link="dev/null"),  # a hard link to a device
    member("run/initctl", tarfile.FIFOTYPE, 0o600),
    member("tmp", tarfile.DIRTYPE, 0o1777),
    member("bin/su", tarfile.REGTYPE, 0o4755),
    member("etc/motd", tarfile.REGTYPE, 0o644),
)


def test_tar_reader_yields_special_entries() -> None:
    stats = ImportStats()
    entries = {e.path: e for e in iter_tar_entries(io.BytesIO(ROOTFS), "/rootfs", None, stats)}
    console = entries["/rootfs/dev/console"]
    assert (console.type, console.file_type, console.rdev) == (
        EntryType.SPECIAL,
        stat.S_IFCHR,
        os.makedev(5, 1),
    )
    assert entries["/rootfs/dev/loop0"].file_type == stat.S_IFBLK
    assert entries["/rootfs/dev/null2"].rdev == NULL  # the hard link became a device too
    assert (entries["/rootfs/run/initctl"].file_type, entries["/rootfs/run/initctl"].rdev) == (
        stat.S_IFIFO,
        0,
    )
    assert entries["/rootfs/tmp"].mode == 0o1777
    assert stats.special_files == 5
    assert stats.stripped_modes == ["/rootfs/bin/su"]


def test_rootfs_tarball_publishes_its_special_files(
    repository: tuple[RepositoryWriter, LocalStorage], keys: KeySet
) -> None:
    writer, storage = repository
    with writer.transaction() as txn:
        stats = import_tarball(txn, io.BytesIO(ROOTFS), "/rootfs", preserve_ownership=True)
        txn.publish()
    assert stats.skipped_special == []
    with reader_for(storage, keys) as reader:
        got = {
            e.path: (e.special_kind, e.device, stat.S_IMODE(e.mode), e.gid)
            for e in reader.walk("/rootfs")
            if e.is_special
        }
        assert got == {
            "/rootfs/dev/console": ("char-device", (5, 1), 0o600, 5),
            "/rootfs/dev/null": ("char-device", (1, 3), 0o666, 5),
            "/rootfs/dev/null2": ("char-device", (1, 3), 0o666, 5),
            "/rootfs/dev/loop0": ("block-device", (7, 0), 0o660, 5),
            "/rootfs/run/initctl": ("fifo", None, 0o600, 5),
        }
        assert reader.stat("/rootfs/tmp").mode == stat.S_IFDIR | 0o1777
        assert reader.stat("/rootfs/bin/su").mode == stat.S_IFREG | 0o755
        assert reader.read("/rootfs/etc/motd") == b"content"
        assert fsck(reader).ok


def test_rootfs_tarball_skips_special_files_when_the_policy_says_so(
    repository: tuple[RepositoryWriter, LocalStorage], keys: KeySet
) -> None:
    writer, storage = repository
    with writer.transaction() as txn:
        stats = import_tarball(txn, io.BytesIO(ROOTFS), "", policy=TarPolicy(skip_special=True))
        txn.publish()
    assert stats.skipped_special == [
        "/dev/console",
        "/dev/null",
        "/dev/loop0",
        "/dev/null2",
        "/run/initctl",
    ]
    with reader_for(storage, keys) as reader:
        assert not any(e.is_special for e in reader.walk())
        assert reader.read("/etc/motd") == b"content"
        assert [e.name for e in reader.listdir("/dev")] == []


def test_import_directory_publishes_fifos_and_sockets(
    repository: tuple[RepositoryWriter, LocalStorage], keys: KeySet, tmp_path: Path
) -> None:
    writer, storage = repository
    source = tmp_path / "tree"
    source.mkdir()
    os.mkfifo(source / "fifo", 0o640)
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        listener.bind(str(source / "sock"))
        (source / "file").write_bytes(b"x")
        with writer.transaction() as txn:
            stats = import_directory(txn, source, "/copy")
            txn.publish()
    finally:
        listener.close()
    assert stats.special_files == 2
    with reader_for(storage, keys) as reader:
        assert reader.stat("/copy/fifo").special_kind == "fifo"
        assert stat.S_IMODE(reader.stat("/copy/fifo").mode) == 0o640
        assert reader.stat("/copy/sock").special_kind == "socket"
        assert reader.read("/copy/file") == b"x"
        assert fsck(reader).ok


# --------------------------------------------------------------------------- file browser
def test_file_browser_lists_special_files_as_what_they_are(
    repository: tuple[RepositoryWriter, LocalStorage], keys: KeySet
) -> None:
    """The API's listing (service/api/browse.py) over the verifying reader."""
    writer, storage = repository
    publish_specials(writer)
    with reader_for(storage, keys) as reader:
        dev = list_path(reader, "/dev", 0, 10)
        run = list_path(reader, "/run", 0, 10)
        tmp = list_path(reader, "/tmp", 0, 10)
    assert dev.entries is not None and run.entries is not None
    got = {
        e.path: (e.type, e.special_kind, e.device_major, e.device_minor, e.size, e.mode_string)
        for e in [*dev.entries, *run.entries]
    }
    assert got == {
        "/dev/null": ("special", "char-device", 1, 3, 0, "crw-rw-rw-"),
        "/dev/sda": ("special", "block-device", 8, 0, 0, "brw-rw----"),
        "/dev/wide": ("special", "char-device", 259, 70000, 0, "crw-------"),
        "/run/fifo": ("special", "fifo", None, None, 0, "prw-r--r--"),
        "/run/sock": ("special", "socket", None, None, 0, "srwxr-xr-x"),
    }
    assert tmp.entry.mode_string == "drwxrwxrwt"
    assert tmp.entries is not None and tmp.entries[0].special_kind is None
