"""Tests of the streaming tarball reader and its refusals (cvmfs/tarball.py)."""

from __future__ import annotations

import gzip
import io
import lzma
import os
import stat
import tarfile
import tracemalloc
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import zstandard

from cvmfs.keys import KeySet, generate_keyset
from cvmfs.reader import RepositoryReader
from cvmfs.storage import LocalStorage
from cvmfs.tarball import (
    Compression,
    EntryType,
    ImportStats,
    TarballError,
    TarEntry,
    TarPolicy,
    decompressed,
    detect_compression,
    import_directory,
    import_tarball,
    iter_tar_entries,
)
from cvmfs.writer import RepositoryWriter, create_repository

MTIME = 1704067200


class OneWayStream(io.RawIOBase):
    """A pipe-like stream: reads only, no seek, short reads (proves the reader never seeks)."""

    def __init__(self, data: bytes, limit: int = 7000) -> None:
        self._data = data
        self._position = 0
        self._limit = limit

    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return False

    def readinto(self, buffer: memoryview) -> int:  # type: ignore[override]
        size = min(len(buffer), self._limit, len(self._data) - self._position)
        buffer[:size] = self._data[self._position : self._position + size]
        self._position += size
        return size


Member = tuple[tarfile.TarInfo, bytes | None]


def make_tar(members: list[Member]) -> bytes:
    out = io.BytesIO()
    with tarfile.open(fileobj=out, mode="w", format=tarfile.PAX_FORMAT) as archive:
        for info, content in members:
            archive.addfile(info, io.BytesIO(content) if content is not None else None)
    return out.getvalue()


def file(name: str, content: bytes = b"data\n", mode: int = 0o644) -> tuple[tarfile.TarInfo, bytes]:
    info = tarfile.TarInfo(name)
    info.size = len(content)
    info.mode = mode
    info.mtime = MTIME
    info.uid = info.gid = 1000
    return info, content


def special(
    name: str, kind: bytes, mode: int = 0o755, link: str = ""
) -> tuple[tarfile.TarInfo, None]:
    info = tarfile.TarInfo(name)
    info.type = kind
    info.mode = mode
    info.mtime = MTIME
    info.linkname = link
    return info, None


def directory(name: str, mode: int = 0o755) -> tuple[tarfile.TarInfo, None]:
    return special(name, tarfile.DIRTYPE, mode)


def symlink(name: str, target: str) -> tuple[tarfile.TarInfo, None]:
    return special(name, tarfile.SYMTYPE, 0o777, target)


def hardlink(name: str, target: str) -> tuple[tarfile.TarInfo, None]:
    return special(name, tarfile.LNKTYPE, 0o644, target)


def read_all(
    data: bytes, prefix: str = "", policy: TarPolicy | None = None
) -> list[tuple[TarEntry, bytes]]:
    result = []
    for entry in iter_tar_entries(OneWayStream(data), prefix, policy):
        content = entry.content.read() if entry.content is not None else b""
        result.append((entry, content))
    return result


SAMPLE = [
    directory("./"),
    directory("./bin/"),
    file("./bin/run.sh", b"#!/bin/sh\necho hi\n", 0o755),
    file("./README", b"read me\n"),
    directory("./lib"),
    file("./lib/big.bin", bytes(range(256)) * 4096),
    symlink("./lib/libx.so", "big.bin"),
    symlink("./abs", "/cvmfs/other.example.org/x"),
    hardlink("./lib/big-again.bin", "./lib/big.bin"),
    hardlink("./lib/third.bin", "lib/big-again.bin"),  # a link to a link: the original wins
    file("implied/parent/file.txt", b"parents are implied\n"),
]

COMPRESSORS: dict[str, Callable[[bytes], bytes]] = {
    "none": lambda data: data,
    "gzip": lambda data: gzip.compress(data),
    "xz": lambda data: lzma.compress(data),
    "zstd": lambda data: zstandard.ZstdCompressor().compress(data),
    "zstd-multiframe": lambda data: (
        zstandard.ZstdCompressor().compress(data[:5000])
        + zstandard.ZstdCompressor().compress(data[5000:])
    ),
}


@pytest.mark.parametrize("compression", sorted(COMPRESSORS))
def test_reads_every_compression_as_a_one_way_stream(compression: str) -> None:
    data = COMPRESSORS[compression](make_tar(SAMPLE))
    entries = read_all(data, prefix="/sw/pkg")
    summary = [(e.path, e.type, oct(e.mode), e.link_target, e.size) for e, _ in entries]
    assert summary == [
        ("/sw/pkg/bin", EntryType.DIRECTORY, "0o755", "", 0),
        ("/sw/pkg/bin/run.sh", EntryType.FILE, "0o755", "", 18),
        ("/sw/pkg/README", EntryType.FILE, "0o644", "", 8),
        ("/sw/pkg/lib", EntryType.DIRECTORY, "0o755", "", 0),
        ("/sw/pkg/lib/big.bin", EntryType.FILE, "0o644", "", 1048576),
        ("/sw/pkg/lib/libx.so", EntryType.SYMLINK, "0o777", "big.bin", 7),
        ("/sw/pkg/abs", EntryType.SYMLINK, "0o777", "/cvmfs/other.example.org/x", 26),
        ("/sw/pkg/lib/big-again.bin", EntryType.HARDLINK, "0o644", "/sw/pkg/lib/big.bin", 0),
        ("/sw/pkg/lib/third.bin", EntryType.HARDLINK, "0o644", "/sw/pkg/lib/big.bin", 0),
        ("/sw/pkg/implied/parent/file.txt", EntryType.FILE, "0o644", "", 20),
    ]
    contents = {e.path: c for e, c in entries if e.type is EntryType.FILE}
    assert contents["/sw/pkg/lib/big.bin"] == bytes(range(256)) * 4096
    assert contents["/sw/pkg/bin/run.sh"] == b"#!/bin/sh\necho hi\n"
    assert all(e.mtime == MTIME for e, _ in entries)


def test_unread_content_is_skipped_when_advancing() -> None:
    entries = [e.path for e in iter_tar_entries(OneWayStream(make_tar(SAMPLE)))]
    assert "/lib/big.bin" in entries and "/implied/parent/file.txt" in entries


def test_memory_stays_flat_however_many_entries() -> None:
    out = io.BytesIO()
    with tarfile.open(fileobj=out, mode="w", format=tarfile.GNU_FORMAT) as archive:
        for number in range(20_000):
            archive.addfile(tarfile.TarInfo(f"d{number % 50}/f{number}"), io.BytesIO())
    stream = io.BytesIO(out.getvalue())
    tracemalloc.start()
    try:
        count = sum(1 for _ in iter_tar_entries(stream))
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert count == 20_000
    # Keeping every TarInfo (as tarfile does by default) costs well over 10 MB here.
    assert peak < 4_000_000


def test_detect_compression_from_magic_bytes() -> None:
    assert detect_compression(b"\x1f\x8b\x08") is Compression.GZIP
    assert detect_compression(b"\xfd7zXZ\x00") is Compression.XZ
    assert detect_compression(b"\x28\xb5\x2f\xfd") is Compression.ZSTD
    assert detect_compression(b"./a\x00\x00") is Compression.NONE
    with pytest.raises(TarballError, match="bzip2"):
        detect_compression(b"BZh91AY")
    compression, plain = decompressed(io.BytesIO(gzip.compress(b"hello")))
    assert compression is Compression.GZIP and plain.read() == b"hello"


def test_non_utf8_names_round_trip_as_surrogates() -> None:
    info, content = file("x")
    data = bytearray(make_tar([(info, content)]))
    data[0] = 0xFF  # raw byte 0xff as the name (ustar header checksum fixed below)
    data[148:156] = b"        "
    data[148:156] = b"%06o\x00 " % sum(data[:512])
    ((entry, _),) = read_all(bytes(data))
    assert entry.path == "/\udcff"


def test_setuid_setgid_are_stripped_and_reported_sticky_is_kept() -> None:
    stats = ImportStats()
    data = make_tar([file("su", mode=0o4755), file("sg", mode=0o2755), directory("tmp", 0o1777)])
    entries = list(iter_tar_entries(io.BytesIO(data), "", None, stats))
    assert [(e.path, e.mode, e.mode_stripped) for e in entries] == [
        ("/su", 0o755, True),
        ("/sg", 0o755, True),
        ("/tmp", 0o1777, False),
    ]
    assert stats.stripped_modes == ["/su", "/sg"]


def test_special_files_are_skipped_when_the_policy_says_so() -> None:
    stats = ImportStats()
    data = make_tar(
        [special("dev/null", tarfile.CHRTYPE), special("fifo", tarfile.FIFOTYPE), file("ok")]
    )
    entries = list(iter_tar_entries(io.BytesIO(data), "", TarPolicy(skip_special=True), stats))
    assert [e.path for e in entries] == ["/ok"]
    assert stats.skipped_special == ["/dev/null", "/fifo"]


def test_escaping_symlinks_can_be_allowed_and_variables_too() -> None:
    data = make_tar([symlink("a/up", "../../outside"), symlink("var", "$(ARCH)/lib")])
    policy = TarPolicy(allow_escaping_symlinks=True, allow_symlink_variables=True)
    entries = read_all(data, prefix="/p", policy=policy)
    assert [(e.path, e.link_target) for e, _ in entries] == [
        ("/p/a/up", "../../outside"),
        ("/p/var", "$(ARCH)/lib"),
    ]


def test_a_repeated_file_is_yielded_twice_so_the_last_one_wins() -> None:
    data = make_tar([file("f", b"one"), file("f", b"two")])
    assert [c for _, c in read_all(data)] == [b"one", b"two"]


# -- refusals: raised before the offending entry is yielded -------------------------------------


REFUSED: dict[str, tuple[list[Member], str]] = {
    "dotdot": ([file("../x")], "'..'"),
    "dotdot-inside": ([file("a/../../x")], "'..'"),
    "absolute": ([file("/etc/passwd")], "absolute"),
    "dot-component": ([file("a/./b")], "'.'"),
    "empty-component": ([file("a//b")], "empty name"),
    "long-name": ([file("n" * 256)], "256 bytes"),
    "reserved": ([file(".cvmfs/x")], "reserves"),
    "write-through-symlink": ([symlink("lnk", "/tmp"), file("lnk/x")], "through the symlink"),
    "write-through-relative-symlink": (
        [directory("a"), symlink("a/up", ".."), file("a/up/b/c")],
        "through the symlink",
    ),
    "dir-through-symlink": ([symlink("lnk", "real"), directory("lnk/sub")], "through the symlink"),
    "below-a-file": ([file("f"), file("f/g")], "regular file"),
    "type-change": ([file("p"), directory("p")], "from a file into a dir"),
    "symlink-over-dir": ([directory("p"), symlink("p", "x")], "from a dir into a symlink"),
    "hardlink-forward": ([hardlink("early", "late"), file("late")], "earlier in the tarball"),
    "hardlink-outside": ([hardlink("l", "../etc/passwd")], "'..'"),
    "hardlink-absolute": ([hardlink("l", "/etc/passwd")], "absolute"),
    "hardlink-to-dir": ([directory("d"), hardlink("l", "d")], "regular file"),
    "hardlink-to-symlink": ([symlink("s", "x"), hardlink("l", "s")], "regular file"),
    "below-a-device": ([special("dev/tty", tarfile.CHRTYPE), file("dev/tty/x")], "special file"),
    "device-into-dir": (
        [special("pipe", tarfile.FIFOTYPE), directory("pipe")],
        "from a special into a dir",
    ),
    "escaping-symlink": ([symlink("a/up", "../../etc")], "outside the imported tree"),
    "variable-symlink": ([symlink("v", "$(HOME)/x")], "expand"),
    "root-not-dir": ([file("./")], "import root"),
}


@pytest.mark.parametrize("case", sorted(REFUSED))
def test_bad_entries_are_refused_before_they_are_yielded(case: str) -> None:
    members, message = REFUSED[case]
    data = make_tar([file("first-ok"), *members])
    yielded: list[str] = []
    with pytest.raises(TarballError, match=message):
        for entry in iter_tar_entries(OneWayStream(data)):
            yielded.append(entry.path)
    # Only the entries before the refused member came out; the bad one never did.
    assert yielded[0] == "/first-ok"
    assert len(yielded) < 1 + len(members)


def test_escaping_symlink_is_judged_against_the_import_prefix() -> None:
    data = make_tar([symlink("up", "../sibling")])
    with pytest.raises(TarballError, match="outside the imported tree: make it point inside"):
        read_all(data, prefix="/sw/pkg")
    assert read_all(data, prefix="/sw/pkg", policy=TarPolicy(allow_escaping_symlinks=True))


def test_size_limits() -> None:
    data = make_tar([file("a", bytes(100)), file("b", bytes(100))])
    with pytest.raises(TarballError, match="declares 100 bytes"):
        read_all(data, policy=TarPolicy(max_file_size=99))
    with pytest.raises(TarballError, match="exceeds the limit of 150 bytes at member 'b'"):
        read_all(data, policy=TarPolicy(max_total_size=150))
    with pytest.raises(TarballError, match="more than 1 entries"):
        read_all(data, policy=TarPolicy(max_entries=1))


@pytest.mark.parametrize(
    ("data", "message"),
    [
        (b"this is not a tarball at all" * 40, "tarball"),
        (gzip.compress(b"\x00garbage" * 100), "tarball"),
        (b"\x1f\x8b\x08\x00 truncated gzip", "tarball"),
    ],
)
def test_garbage_is_refused(data: bytes, message: str) -> None:
    with pytest.raises(TarballError, match=message):
        read_all(data)


@pytest.mark.parametrize("compression", ["gzip", "xz", "zstd"])
def test_corrupt_compressed_content_is_refused(compression: str) -> None:
    data = bytearray(COMPRESSORS[compression](make_tar(SAMPLE)))
    for offset in range(40, len(data) - 40, 97):  # damage the body, keep the magic bytes
        data[offset] ^= 0x55
    with pytest.raises(TarballError, match="tarball"):
        read_all(bytes(data))


def test_empty_input_is_refused() -> None:
    with pytest.raises(TarballError, match="tarball"):
        read_all(b"")


def test_truncated_tarball_is_refused() -> None:
    data = make_tar([file("a", bytes(5000)), file("b", bytes(5000))])
    with pytest.raises(TarballError, match="truncated"):
        read_all(data[:3000])


# -- importing into a real repository (engineer W's writer, engineer R's reader) -----------------

FQRN_IMPORT = "import.example.org"


@pytest.fixture(scope="module")
def import_keys() -> KeySet:
    return generate_keyset(FQRN_IMPORT)


@pytest.fixture
def repository(tmp_path: Path, import_keys: KeySet) -> tuple[RepositoryWriter, LocalStorage]:
    storage = LocalStorage(tmp_path / "stratum0")
    writer, _ = create_repository(storage, FQRN_IMPORT, import_keys)
    return writer, storage


def reader_for(storage: LocalStorage, keys: KeySet) -> RepositoryReader:
    return RepositoryReader(storage, FQRN_IMPORT, [keys.master_public_pem])


def listing(reader: RepositoryReader) -> dict[str, tuple[str, int, str | bytes]]:
    """path -> (type, permission bits, content or symlink target), root excluded."""
    result: dict[str, tuple[str, int, str | bytes]] = {}
    for entry in reader.walk():
        if entry.path == "":
            continue
        if entry.is_dir:
            result[entry.path] = ("dir", stat.S_IMODE(entry.mode), "")
        elif entry.is_symlink:
            result[entry.path] = ("symlink", stat.S_IMODE(entry.mode), entry.symlink)
        else:
            result[entry.path] = ("file", stat.S_IMODE(entry.mode), reader.read(entry.path))
    return result


EXPECTED_SAMPLE = {
    "/sw": ("dir", 0o755, ""),
    "/sw/pkg": ("dir", 0o755, ""),
    "/sw/pkg/bin": ("dir", 0o755, ""),
    "/sw/pkg/bin/run.sh": ("file", 0o755, b"#!/bin/sh\necho hi\n"),
    "/sw/pkg/README": ("file", 0o644, b"read me\n"),
    "/sw/pkg/lib": ("dir", 0o755, ""),
    "/sw/pkg/lib/big.bin": ("file", 0o644, bytes(range(256)) * 4096),
    "/sw/pkg/lib/big-again.bin": ("file", 0o644, bytes(range(256)) * 4096),
    "/sw/pkg/lib/third.bin": ("file", 0o644, bytes(range(256)) * 4096),
    "/sw/pkg/lib/libx.so": ("symlink", 0o777, "big.bin"),
    "/sw/pkg/abs": ("symlink", 0o777, "/cvmfs/other.example.org/x"),
    "/sw/pkg/implied": ("dir", 0o755, ""),
    "/sw/pkg/implied/parent": ("dir", 0o755, ""),
    "/sw/pkg/implied/parent/file.txt": ("file", 0o644, b"parents are implied\n"),
}


@pytest.mark.parametrize("compression", ["none", "zstd"])
def test_import_tarball_publishes_the_tree(
    repository: tuple[RepositoryWriter, LocalStorage], import_keys: KeySet, compression: str
) -> None:
    writer, storage = repository
    data = COMPRESSORS[compression](make_tar(SAMPLE))
    with writer.transaction() as transaction:
        stats = import_tarball(transaction, OneWayStream(data), "/sw/pkg")
        transaction.publish()
    assert (stats.files, stats.directories, stats.symlinks, stats.hardlinks) == (4, 2, 2, 2)
    reader = reader_for(storage, import_keys)
    assert listing(reader) == EXPECTED_SAMPLE
    hardlinked = reader.stat("/sw/pkg/lib/big-again.bin")
    assert hardlinked.hardlink_group != 0 and hardlinked.linkcount == 3
    assert reader.stat("/sw/pkg/lib/big.bin").mtime == MTIME
    assert reader.stat("/sw/pkg/README").uid == 0  # owners are not kept unless asked


def test_import_tarball_can_keep_owners(
    repository: tuple[RepositoryWriter, LocalStorage], import_keys: KeySet
) -> None:
    writer, storage = repository
    with writer.transaction() as transaction:
        import_tarball(transaction, io.BytesIO(make_tar([file("f")])), preserve_ownership=True)
        transaction.publish()
    entry = reader_for(storage, import_keys).stat("/f")
    assert (entry.uid, entry.gid) == (1000, 1000)


@pytest.mark.parametrize(
    "case", ["dotdot", "absolute", "write-through-symlink", "below-a-device", "hardlink-forward"]
)
def test_refused_tarball_publishes_nothing(
    repository: tuple[RepositoryWriter, LocalStorage], import_keys: KeySet, case: str
) -> None:
    writer, storage = repository
    before = storage.get(".cvmfspublished")
    members, message = REFUSED[case]
    data = make_tar([file("first-ok"), *members])
    with pytest.raises(TarballError, match=message), writer.transaction() as transaction:
        import_tarball(transaction, io.BytesIO(data))
        transaction.publish()  # never reached
    assert storage.get(".cvmfspublished") == before
    reader = reader_for(storage, import_keys)
    assert reader.revision == 1 and listing(reader) == {}
    with writer.transaction() as transaction:  # the repository is still writable
        import_tarball(transaction, io.BytesIO(make_tar([file("later")])))
        transaction.publish()
    assert set(listing(reader_for(storage, import_keys))) == {"/later"}


def test_setuid_bits_from_a_tarball_are_stripped_in_the_repository(
    repository: tuple[RepositoryWriter, LocalStorage], import_keys: KeySet
) -> None:
    writer, storage = repository
    with writer.transaction() as transaction:
        stats = import_tarball(transaction, io.BytesIO(make_tar([file("su", mode=0o6755)])))
        transaction.publish()
    assert stats.stripped_modes == ["/su"]
    assert reader_for(storage, import_keys).stat("/su").mode == stat.S_IFREG | 0o755


def _make_source_tree(root: Path) -> None:
    (root / "bin").mkdir(parents=True)
    (root / "bin" / "run.sh").write_bytes(b"#!/bin/sh\necho hi\n")
    (root / "bin" / "run.sh").chmod(0o755)
    (root / "README").write_bytes(b"read me\n")
    (root / "lib").mkdir()
    (root / "lib" / "big.bin").write_bytes(bytes(range(256)) * 4096)
    os.link(root / "lib" / "big.bin", root / "lib" / "big-again.bin")
    os.link(root / "lib" / "big.bin", root / "lib" / "third.bin")
    (root / "lib" / "libx.so").symlink_to("big.bin")
    (root / "abs").symlink_to("/cvmfs/other.example.org/x")
    (root / "implied" / "parent").mkdir(parents=True)
    (root / "implied" / "parent" / "file.txt").write_bytes(b"parents are implied\n")
    for path in [root, *root.rglob("*")]:
        if not path.is_symlink():
            os.utime(path, (MTIME, MTIME))


def test_import_directory_publishes_the_tree(
    repository: tuple[RepositoryWriter, LocalStorage], import_keys: KeySet, tmp_path: Path
) -> None:
    writer, storage = repository
    source = tmp_path / "source"
    _make_source_tree(source)
    with writer.transaction() as transaction:
        stats = import_directory(transaction, source, "/sw/pkg")
        transaction.publish()
    assert (stats.files, stats.symlinks, stats.hardlinks) == (4, 2, 2)
    reader = reader_for(storage, import_keys)
    assert listing(reader) == EXPECTED_SAMPLE
    assert reader.stat("/sw/pkg/lib/big.bin").mtime == MTIME
    assert reader.stat("/sw/pkg/lib/third.bin").linkcount == 3


@pytest.mark.parametrize("bad", ["escaping-symlink", "setuid", "reserved"])
def test_import_directory_refuses_before_writing_anything(
    repository: tuple[RepositoryWriter, LocalStorage],
    import_keys: KeySet,
    tmp_path: Path,
    bad: str,
) -> None:
    writer, storage = repository
    source = tmp_path / "source"
    _make_source_tree(source)
    if bad == "escaping-symlink":
        (source / "lib" / "up").symlink_to("../../../etc/passwd")
    elif bad == "setuid":
        (source / "bin" / "run.sh").chmod(0o4755)
    else:
        (source / ".cvmfs").mkdir()
    added: list[str] = []

    class Recording:
        """Records what reaches the transaction (the real one, wrapped, not replaced)."""

        def __init__(self, inner: Any) -> None:
            self.inner = inner

        def __getattr__(self, name: str) -> Any:
            added.append(name)
            return getattr(self.inner, name)

    with writer.transaction() as transaction:
        if bad == "setuid":  # stripped, not refused
            stats = import_directory(Recording(transaction), source, "")
            transaction.publish()
            assert stats.stripped_modes == ["/bin/run.sh"]
            mode = reader_for(storage, import_keys).stat("/bin/run.sh").mode
            assert mode == stat.S_IFREG | 0o755
            return
        with pytest.raises(TarballError):
            import_directory(Recording(transaction), source, "")
    assert added == []  # refused during the check pass: nothing reached the transaction
    assert reader_for(storage, import_keys).revision == 1


def test_import_directory_skips_special_files_when_asked(
    repository: tuple[RepositoryWriter, LocalStorage], import_keys: KeySet, tmp_path: Path
) -> None:
    writer, storage = repository
    source = tmp_path / "source"
    source.mkdir()
    os.mkfifo(source / "fifo")
    (source / "file").write_bytes(b"x")
    with writer.transaction() as transaction:
        stats = import_directory(transaction, source, policy=TarPolicy(skip_special=True))
        transaction.publish()
    assert stats.skipped_special == ["/fifo"]
    assert set(listing(reader_for(storage, import_keys))) == {"/file"}


def test_deferred_operations_keep_tar_semantics(
    repository: tuple[RepositoryWriter, LocalStorage], import_keys: KeySet
) -> None:
    """Directories and links are applied after the files (fewer pipeline drains); the result must
    be what extracting the tarball in order gives."""
    writer, storage = repository
    members = [
        directory("private", 0o700),
        file("private/f", b"old"),
        hardlink("private/l", "private/f"),  # l shares the content f has now
        file("private/f", b"new"),  # replaces f; l keeps the old content
        symlink("private/s", "f"),
        directory("private", 0o750),  # a repeated directory entry: its metadata wins
    ]
    with writer.transaction() as transaction:
        import_tarball(transaction, io.BytesIO(make_tar(members)))
        transaction.publish()
    assert listing(reader_for(storage, import_keys)) == {
        "/private": ("dir", 0o750, ""),
        "/private/f": ("file", 0o644, b"new"),
        "/private/l": ("file", 0o644, b"old"),
        "/private/s": ("symlink", 0o777, "f"),
    }
