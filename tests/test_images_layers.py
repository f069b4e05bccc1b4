"""images.layers on hand-made layer tarballs, applied into a real local repository and read back.

Whiteouts, opaque directories, type changes, writes through lower-layer symlinks, hard links,
and the refusals (escaping paths, device nodes, absurd sizes) that publish nothing.
"""

from __future__ import annotations

import gzip
import io
import stat
import tarfile
from collections.abc import Iterator
from pathlib import Path

import pytest
import zstandard

from cvmfs.keys import generate_keyset
from cvmfs.reader import RepositoryReader
from cvmfs.storage import LocalStorage
from cvmfs.writer import RepositoryWriter, WriterOptions, create_repository
from images.errors import LayerRefusedError
from images.layers import LayerApplier, LayerPolicy

FQRN = "unpacked.test.example.org"
ROOT = "/.flat/ab/abcdef"
Member = tuple[str, str, object]  # (name, kind, payload)


def layer(members: list[Member], *, compression: str = "gzip") -> bytes:
    """A layer tarball: kinds file (bytes), dir, symlink (target), hardlink (target), chr, huge."""
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w", format=tarfile.PAX_FORMAT) as tar:
        for name, kind, payload in members:
            info = tarfile.TarInfo(name)
            info.mtime = 1_700_000_000
            info.uid = info.gid = 0
            if kind == "file":
                data = payload if isinstance(payload, bytes) else b""
                info.size = len(data)
                info.mode = 0o644
                tar.addfile(info, io.BytesIO(data))
                continue
            if kind == "exe":
                data = payload if isinstance(payload, bytes) else b""
                info.size, info.mode = len(data), 0o755
                tar.addfile(info, io.BytesIO(data))
                continue
            if kind == "huge":
                info.size = int(str(payload))
                info.mode = 0o644
                tar.addfile(info)  # header only: the size is refused before any data is read
                continue
            info.mode = 0o755
            if kind == "dir":
                info.type = tarfile.DIRTYPE
            elif kind == "sticky-dir":
                info.type, info.mode = tarfile.DIRTYPE, 0o1777
            elif kind in ("chr-dev", "blk-dev"):  # payload: (major, minor, mode)
                major, minor, info.mode = payload  # type: ignore[misc]
                info.type = tarfile.CHRTYPE if kind == "chr-dev" else tarfile.BLKTYPE
                info.devmajor, info.devminor = major, minor
            elif kind == "fifo":
                info.type, info.mode = tarfile.FIFOTYPE, 0o600
            elif kind == "symlink":
                info.type, info.linkname = tarfile.SYMTYPE, str(payload)
            elif kind == "hardlink":
                info.type, info.linkname = tarfile.LNKTYPE, str(payload)
            elif kind == "chr":
                info.type, info.devmajor, info.devminor = tarfile.CHRTYPE, 1, 3
            tar.addfile(info)
    data = buffer.getvalue()
    if compression == "gzip":
        return gzip.compress(data)
    if compression == "zstd":
        return zstandard.ZstdCompressor().compress(data)
    return data


@pytest.fixture
def writer(tmp_path: Path) -> Iterator[RepositoryWriter]:
    storage = LocalStorage(tmp_path / "s0")
    keys = generate_keyset(FQRN)
    repo, _ = create_repository(storage, FQRN, keys, WriterOptions(workers=2))
    yield repo


def unpack(writer: RepositoryWriter, layers: list[bytes], policy: LayerPolicy | None = None) -> int:
    with writer.transaction() as txn:
        applier = LayerApplier(txn, ROOT, policy)
        for i, blob in enumerate(layers):
            applier.apply(io.BytesIO(blob), f"sha256:{i}")
        return txn.publish().revision


def tree(writer: RepositoryWriter) -> dict[str, tuple[object, ...]]:
    """relative path -> (kind, content/target/mode) of the published ROOT."""
    result: dict[str, tuple[object, ...]] = {}
    with RepositoryReader(writer.storage, FQRN, [], verify_signatures=False) as reader:
        for entry in reader.walk(ROOT):
            relative = entry.path[len(ROOT) :]
            if not relative:
                continue
            if entry.is_dir:
                result[relative] = ("dir", stat.S_IMODE(entry.mode))
            elif entry.is_symlink:
                result[relative] = ("symlink", entry.symlink)
            elif entry.is_special:
                result[relative] = (entry.special_kind, entry.device, stat.S_IMODE(entry.mode))
            else:
                result[relative] = ("file", reader.read(entry.path), stat.S_IMODE(entry.mode))
    return result


def test_whiteouts_opaque_and_type_changes(writer: RepositoryWriter) -> None:
    base = layer(
        [
            ("etc/", "dir", None),
            ("etc/keep", "file", b"keep"),
            ("etc/gone", "file", b"gone"),
            ("opt/", "dir", None),
            ("opt/old/", "dir", None),
            ("opt/old/a", "file", b"a"),
            ("opt/x", "file", b"x"),
            ("lib", "symlink", "usr/lib"),
            ("usr/lib/", "dir", None),
            ("was-dir/", "dir", None),
            ("was-dir/inner", "file", b"i"),
            ("was-file", "file", b"f"),
        ]
    )
    top = layer(
        [
            ("etc/.wh.gone", "file", b""),
            # the layer's own entry before the opaque marker survives it
            ("opt/new", "file", b"new"),
            ("opt/.wh..wh..opq", "file", b""),
            ("lib/libz.so", "file", b"z"),  # written through the lower symlink
            ("was-dir", "file", b"now a file"),
            ("was-file/", "dir", None),
            ("was-file/child", "file", b"c"),
            ("bin/", "dir", None),
            ("bin/tool", "exe", b"#!/bin/sh\n"),
            ("bin/tool2", "hardlink", "bin/tool"),
        ],
        compression="zstd",
    )
    unpack(writer, [base, top])
    got = tree(writer)
    assert "/etc/gone" not in got and got["/etc/keep"] == ("file", b"keep", 0o644)
    assert sorted(p for p in got if p.startswith("/opt/")) == ["/opt/new"]
    assert got["/lib"] == ("symlink", "usr/lib")
    assert got["/usr/lib/libz.so"] == ("file", b"z", 0o644)
    assert got["/was-dir"] == ("file", b"now a file", 0o644)
    assert "/was-dir/inner" not in got
    assert got["/was-file"] == ("dir", 0o755) and got["/was-file/child"][1] == b"c"
    assert got["/bin/tool"] == got["/bin/tool2"] == ("file", b"#!/bin/sh\n", 0o755)
    with RepositoryReader(writer.storage, FQRN, [], verify_signatures=False) as reader:
        one, two = reader.stat(f"{ROOT}/bin/tool"), reader.stat(f"{ROOT}/bin/tool2")
        assert one.hardlink_group == two.hardlink_group != 0 and one.linkcount == 2
    assert not any(".wh." in p for p in got)


def test_whiteout_of_a_whole_directory_and_plain_tar(writer: RepositoryWriter) -> None:
    base = layer(
        [("d/", "dir", None), ("d/a/", "dir", None), ("d/a/f", "file", b"f")], compression="none"
    )
    top = layer([("d/.wh.a", "file", b"")], compression="none")
    unpack(writer, [base, top])
    assert tree(writer) == {"/d": ("dir", 0o755)}


@pytest.mark.parametrize(
    ("members", "reason"),
    [
        ([("../evil", "file", b"x")], "'..'"),
        ([("a/../../evil", "file", b"x")], "'..'"),
        ([("/etc/passwd", "file", b"x")], "absolute"),
        ([("dev/", "dir", None), ("dev/null", "chr", None), ("dev/null/x", "file", b"")], "below"),
        ([("big", "huge", 200 << 30)], "limit"),
    ],
)
def test_refused_layers_publish_nothing(
    writer: RepositoryWriter, members: list[Member], reason: str
) -> None:
    before = writer.current_manifest().revision
    with pytest.raises(LayerRefusedError, match=reason):
        unpack(writer, [layer([("ok", "file", b"fine"), *members])])
    assert writer.current_manifest().revision == before


def test_image_size_limit_spans_layers(writer: RepositoryWriter) -> None:
    policy = LayerPolicy(max_image_size=10)
    one = layer([("a", "file", b"123456")])
    two = layer([("b", "file", b"123456")])
    with pytest.raises(LayerRefusedError, match="limit"):
        unpack(writer, [one, two], policy)


def test_device_nodes_skipped_when_the_policy_says_so(writer: RepositoryWriter) -> None:
    with writer.transaction() as txn:
        applier = LayerApplier(txn, ROOT, LayerPolicy(skip_special=True))
        applier.apply(
            io.BytesIO(
                layer([("dev/", "dir", None), ("dev/null", "chr", None), ("f", "file", b"f")])
            ),
            "sha256:0",
        )
        txn.publish()
    assert applier.stats.skipped_special == [f"{ROOT}/dev/null"]
    assert tree(writer) == {"/dev": ("dir", 0o755), "/f": ("file", b"f", 0o644)}


def test_special_files_across_layers_are_published_as_they_were(writer: RepositoryWriter) -> None:
    """A root file system's /dev, a FIFO and a sticky /tmp over two layers; the upper layer
    deletes a device, replaces another with a file and one file with a device."""
    base = layer(
        [
            ("dev/", "dir", None),
            ("dev/console", "chr-dev", (5, 1, 0o600)),
            ("dev/null", "chr-dev", (1, 3, 0o666)),
            ("dev/loop0", "blk-dev", (7, 0, 0o660)),
            ("dev/sda", "blk-dev", (8, 0, 0o660)),
            ("etc/", "dir", None),
            ("etc/was-file", "file", b"f"),
            ("tmp/", "sticky-dir", None),
        ]
    )
    top = layer(
        [
            ("dev/.wh.loop0", "file", b""),
            ("dev/sda", "file", b"not a disk any more"),
            ("etc/was-file", "chr-dev", (1, 5, 0o644)),
            ("run/", "dir", None),
            ("run/initctl", "fifo", None),
            ("tmp/", "sticky-dir", None),
        ],
        compression="zstd",
    )
    with writer.transaction() as txn:
        applier = LayerApplier(txn, ROOT)
        applier.apply(io.BytesIO(base), "sha256:0")
        applier.apply(io.BytesIO(top), "sha256:1")
        txn.publish()
    assert applier.stats.special_files == 6
    assert applier.stats.skipped_special == []
    assert tree(writer) == {
        "/dev": ("dir", 0o755),
        "/dev/console": ("char-device", (5, 1), 0o600),
        "/dev/null": ("char-device", (1, 3), 0o666),
        "/dev/sda": ("file", b"not a disk any more", 0o644),
        "/etc": ("dir", 0o755),
        "/etc/was-file": ("char-device", (1, 5), 0o644),
        "/run": ("dir", 0o755),
        "/run/initctl": ("fifo", None, 0o600),
        "/tmp": ("dir", 0o1777),
    }


def test_hard_links_keep_their_groups_per_directory(writer: RepositoryWriter) -> None:
    """A group spanning directories: each directory's members stay one group (spec §7)."""
    unpack(
        writer,
        [
            layer(
                [
                    ("a/", "dir", None),
                    ("a/orig", "file", b"shared"),
                    ("b/", "dir", None),
                    ("b/one", "hardlink", "a/orig"),
                    ("b/two", "hardlink", "a/orig"),
                ]
            )
        ],
    )
    with RepositoryReader(writer.storage, FQRN, [], verify_signatures=False) as reader:
        orig, one, two = (reader.stat(f"{ROOT}/{p}") for p in ("a/orig", "b/one", "b/two"))
        assert one.hardlink_group == two.hardlink_group != 0 and one.linkcount == 2
        assert orig.hardlink_group == 0 and orig.linkcount == 1
        assert reader.read(two.path) == reader.read(orig.path) == b"shared"
