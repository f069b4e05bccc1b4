"""A throw-away bucket of the service user on the test stack's RGW, emptied and removed after.

Load with `pytest_plugins = ("tests.fixtures_s3",)`.
"""

from __future__ import annotations

import hashlib
import subprocess
import uuid
from collections.abc import Iterator
from typing import Any

import boto3
import pytest
from botocore.config import Config

from buckets.s3_clients import service_s3
from service.settings import Settings
from stack.ceph import Ceph


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


def rgw_user_s3(settings: Settings, uid: str) -> Any:
    """An S3 client of RGW user `uid` (created with radosgw-admin unless it exists), for tests
    that need S3 accounts of their own, as a user whose RGW uid is their username has."""
    digest = hashlib.sha256(uid.encode()).hexdigest()
    access_key, secret_key = f"T{digest[:19]}".upper(), digest[20:60]
    conf = Ceph(settings, settings.absolute_data_dir / Ceph.name).layout.conf
    created = subprocess.run(
        [
            *("radosgw-admin", "--conf", str(conf), "user", "create", f"--uid={uid}"),
            *(f"--display-name=test user {uid}", f"--access-key={access_key}"),
            f"--secret-key={secret_key}",
        ],
        capture_output=True,
        text=True,
        timeout=60,
    )
    if created.returncode != 0 and "exists" not in created.stderr:
        raise RuntimeError(f"radosgw-admin user create --uid={uid}: {created.stderr.strip()}")
    return boto3.client(
        "s3",
        endpoint_url=settings.ceph.s3_endpoint,
        aws_access_key_id=access_key,
        aws_secret_access_key=secret_key,
        region_name=settings.ceph.region,
        config=Config(s3={"addressing_style": "path"}),
    )
