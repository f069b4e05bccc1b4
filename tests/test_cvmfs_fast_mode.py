"""Both compressions on a small benchmark tree: fsck passes and every file reads back as it was.

Stock mode (zlib level 6) must give the stock publisher's object names; fast mode (ISA-L) gives
other names, still standard zlib streams, which the stdlib `zlib` (what the CVMFS client links)
inflates. A repository created in fast mode records it in its meta info for later writers.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import os
import zlib
from pathlib import Path

import pytest

from bench.tree import TreeSpec, generate_tree, write_tarball
from cvmfs.chunking import ChunkingParams
from cvmfs.codecs import Compression, compression_from_metainfo
from cvmfs.errors import CvmfsError
from cvmfs.fsck import fsck
from cvmfs.keys import KeySet, generate_keyset
from cvmfs.reader import RepositoryReader
from cvmfs.storage import LocalStorage
from cvmfs.tarball import import_directory, import_tarball
from cvmfs.writer import RepositoryWriter, WriterOptions, create_repository

FQRN = "fast.example.org"
# Small chunks so that the tree's larger files are chunked too.
SMALL_CHUNKS = ChunkingParams(min_size=64 << 10, avg_size=128 << 10, max_size=256 << 10)


@pytest.fixture(scope="module")
def keys() -> KeySet:
    return generate_keyset(FQRN, now=dt.datetime.now(dt.UTC) - dt.timedelta(hours=1))


@pytest.fixture(scope="module")
def tree(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """The benchmark tree at 1 % (100 files, 10 MiB, 2 symlinks) and its tarball."""
    base = tmp_path_factory.mktemp("tree")
    generate_tree(base / "tree", TreeSpec(seed=1, scale=0.01))
    write_tarball(base / "tree", base / "tree.tar")
    return base / "tree", base / "tree.tar"


@pytest.mark.parametrize("compression", list(Compression))
@pytest.mark.parametrize("form", ["directory", "tarball"])
def test_an_imported_tree_verifies_and_reads_back_byte_identical(
    tree: tuple[Path, Path], keys: KeySet, tmp_path: Path, compression: Compression, form: str
) -> None:
    source, tarball = tree
    storage = LocalStorage(tmp_path / "stratum0")
    create_repository(
        storage, FQRN, keys, WriterOptions(compression=compression), meta_info={"admin": "x"}
    )
    # no compression option: the writer follows what the repository's meta info records
    writer = RepositoryWriter.open(storage, FQRN, keys, WriterOptions(chunking=SMALL_CHUNKS))
    assert writer.compression(writer.current_manifest()) is compression
    with writer.transaction() as txn:
        if form == "directory":
            stats = import_directory(txn, source)
        else:
            with tarball.open("rb") as stream:
                stats = import_tarball(txn, stream)
        txn.publish()
    assert stats.files == 100

    reader = RepositoryReader(storage, FQRN, [keys.master_public_pem])
    report = fsck(reader, all_revisions=True)
    assert report.ok, [str(p) for p in report.problems]
    assert compression_from_metainfo(reader.metainfo()) is compression
    files = links = chunked = stock_named = 0
    for path in sorted(source.rglob("*")):
        name = "/" + path.relative_to(source).as_posix()
        if path.is_symlink():
            assert reader.readlink(name) == os.readlink(path)
            links += 1
        elif path.is_file():
            data = path.read_bytes()
            assert reader.read(name) == data, name
            entry = reader.stat(name)
            files += 1
            if entry.chunks:
                chunked += 1
                continue
            assert entry.content_hash is not None
            stored = storage.get(entry.content_hash.object_key())
            assert zlib.decompress(stored) == data  # a plain zlib stream
            stock_named += entry.content_hash.digest == hashlib.sha1(zlib.compress(data)).digest()
    assert (files, links) == (100, 2) and chunked > 0
    unchunked = files - chunked
    # stock mode: every object is named as the stock publisher names it; fast mode: none is
    assert stock_named == (unchunked if compression is Compression.ZLIB else 0)


def test_unknown_compression_in_the_meta_info_is_refused_with_a_reason() -> None:
    with pytest.raises(CvmfsError, match="asks for compression 'brotli'"):
        compression_from_metainfo(b'{"custom": {"compression": "brotli"}}')
    assert compression_from_metainfo(b"free text meta info") is Compression.ZLIB
    assert compression_from_metainfo(None) is Compression.ZLIB


def test_fast_mode_needs_json_meta_info(tmp_path: Path, keys: KeySet) -> None:
    with pytest.raises(CvmfsError, match="pass meta_info as a mapping"):
        create_repository(
            LocalStorage(tmp_path / "s"),
            FQRN,
            keys,
            WriterOptions(compression=Compression.ISAL),
            meta_info="plain text",
        )
    assert not (tmp_path / "s").exists()  # refused before anything was written
