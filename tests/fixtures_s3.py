"""A throw-away bucket of the service user on the test stack's RGW, emptied and removed after.

Load with `pytest_plugins = ("tests.fixtures_s3",)`.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from typing import Any

import pytest

from service.s3_clients import service_s3
from service.settings import Settings


@pytest.fixture
def bucket(ceph: Settings) -> Iterator[tuple[Any, str]]:
    client = service_s3(ceph)
    name = f"cvmfs-test-{uuid.uuid4().hex[:10]}"
    client.create_bucket(Bucket=name)
    try:
        yield client, name
    finally:
        empty_and_delete(client, name)


def empty_and_delete(s3: Any, bucket: str) -> None:
    """Delete every object of `bucket`, then the bucket (and with it its notifications)."""
    for page in s3.get_paginator("list_objects_v2").paginate(Bucket=bucket):
        for obj in page.get("Contents", []):
            s3.delete_object(Bucket=bucket, Key=obj["Key"])
    s3.delete_bucket(Bucket=bucket)
