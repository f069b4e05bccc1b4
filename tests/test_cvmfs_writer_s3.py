"""The writer on S3 (the stack's Ceph RGW): create and publish straight into a bucket, then read
the repository anonymously over plain HTTP, verified, and fsck it."""

from __future__ import annotations

import datetime as dt
import random
from typing import Any

import pytest

from cvmfs.chunking import ChunkingParams
from cvmfs.fsck import fsck
from cvmfs.keys import generate_keyset
from cvmfs.reader import RepositoryReader
from cvmfs.storage import HttpStorage, S3Storage
from cvmfs.writer import WriterOptions, create_repository
from service.settings import Settings

pytest_plugins = ("tests.fixtures_s3",)
pytestmark = [pytest.mark.stack, pytest.mark.slow]
FQRN = "s3writer.example.org"


def test_publish_into_s3_and_read_over_http(bucket: tuple[Any, str], ceph: Settings) -> None:
    client, name = bucket
    keys = generate_keyset(FQRN)
    store = S3Storage(client, name, prefix=f"repos/{FQRN}")
    chunks = ChunkingParams(min_size=64 << 10, avg_size=128 << 10, max_size=256 << 10)
    options = WriterOptions(chunking=chunks, workers=4)
    writer, created = create_repository(store, FQRN, keys, options)
    assert created.revision == 1
    big = random.Random(5).randbytes(600_000)
    with writer.transaction() as txn:
        txn.add_file("/sw/.cvmfscatalog", b"")
        txn.add_file("/sw/big.bin", big)
        txn.add_file("/sw/bin/tool", b"#!/bin/sh\necho hi\n", mode=0o755)
        txn.symlink("/latest", "sw")
        result = txn.publish(tag="first")
    assert result.revision == 2 and result.catalogs_rewritten == ["/sw", ""]
    url = f"{ceph.ceph.s3_endpoint}/{name}/repos/{FQRN}"
    now = dt.datetime.now(dt.UTC)
    with RepositoryReader(HttpStorage(url), FQRN, [keys.master_public_pem], now=now) as reader:
        assert reader.revision == 2
        assert reader.read("/sw/big.bin") == big
        assert reader.stat("/sw/big.bin").is_chunked
        assert reader.readlink("/latest") == "sw"
        assert [t.name for t in reader.tags() if t.name == "first"] == ["first"]
        report = fsck(reader, all_revisions=True)
        assert report.ok, [str(p) for p in report.problems]
