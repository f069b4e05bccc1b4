"""The writer on S3 (the stack's Ceph RGW): create and publish straight into a bucket, then read
the repository anonymously over plain HTTP, verified, and fsck it."""

from __future__ import annotations

import datetime as dt
import random
import uuid
from collections.abc import Iterator
from typing import Any

import boto3
import pytest
from botocore.config import Config

from cvmfs.chunking import ChunkingParams
from cvmfs.fsck import fsck
from cvmfs.keys import generate_keyset
from cvmfs.reader import RepositoryReader
from cvmfs.storage import HttpStorage, S3Storage
from cvmfs.writer import WriterOptions, create_repository
from service.settings import Settings

pytestmark = [pytest.mark.stack, pytest.mark.slow]
FQRN = "s3writer.example.org"


@pytest.fixture
def bucket(ceph: Settings) -> Iterator[tuple[Any, str]]:
    c = ceph.ceph
    client = boto3.client(
        "s3",
        endpoint_url=c.s3_endpoint,
        aws_access_key_id=c.service_access_key,
        aws_secret_access_key=c.service_secret_key.get_secret_value(),
        region_name=c.region,
        config=Config(s3={"addressing_style": "path"}, retries={"max_attempts": 2}),
    )
    name = f"cvmfs-writer-test-{uuid.uuid4().hex[:10]}"
    client.create_bucket(Bucket=name)
    try:
        yield client, name
    finally:
        for page in client.get_paginator("list_objects_v2").paginate(Bucket=name):
            for obj in page.get("Contents", []):
                client.delete_object(Bucket=name, Key=obj["Key"])
        client.delete_bucket(Bucket=name)


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
