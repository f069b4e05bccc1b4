"""Where a repository's stratum-0 lives, from settings: the one place that decides it.

Local backend: `<data_dir>/stratum0/<fqrn>` (served by the stack's stratum0-http); S3 backend:
the RGW bucket `settings.stratum0.bucket` under the prefix `<fqrn>/`.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from cvmfs.paths import validate_repository_name
from cvmfs.storage import LocalStorage, S3Storage, Storage
from service.settings import Settings


def local_stratum0_dir(settings: Settings, fqrn: str) -> Path:
    return settings.absolute_data_dir / "stratum0" / validate_repository_name(fqrn)


def repository_storage(settings: Settings, fqrn: str) -> Storage:
    """The stratum-0 storage of repository `fqrn` (the directory or bucket prefix may be empty)."""
    validate_repository_name(fqrn)
    if settings.stratum0.backend == "local":
        directory = local_stratum0_dir(settings, fqrn)
        directory.mkdir(parents=True, exist_ok=True)
        return LocalStorage(directory)
    from buckets.s3_clients import service_s3  # boto3: only the S3 backend needs it

    return S3Storage(service_s3(settings), settings.stratum0.bucket, prefix=fqrn)


def public_read_policy(bucket: str) -> dict[str, Any]:
    """Anyone may GET objects (clients, stratum 1s, Squids).

    s3:ListBucket is granted too: without it S3 answers 403 instead of 404 for a missing
    object, and replicas and clients tell "not there" from "refused" by that status. The
    listing shows only what anyone may read anyway (content-addressed names of public files).
    """
    return {
        "Version": "2012-10-17",
        "Statement": [
            {
                "Sid": "cvmfs-stratum0-public-read",
                "Effect": "Allow",
                "Principal": {"AWS": ["*"]},
                "Action": ["s3:GetObject"],
                "Resource": [f"arn:aws:s3:::{bucket}/*"],
            },
            {
                "Sid": "cvmfs-stratum0-public-404",
                "Effect": "Allow",
                "Principal": {"AWS": ["*"]},
                "Action": ["s3:ListBucket"],
                "Resource": [f"arn:aws:s3:::{bucket}"],
            },
        ],
    }


def ensure_stratum0_storage(settings: Settings) -> None:
    """Make the stratum-0 storage exist: nothing for the local backend; for S3 the bucket with
    its public-read policy (idempotent: an existing bucket of the service is kept as it is).
    """
    if settings.stratum0.backend == "local":
        return
    from botocore.exceptions import ClientError

    from buckets.s3_clients import service_s3

    s3 = service_s3(settings)
    bucket = settings.stratum0.bucket
    try:
        s3.create_bucket(Bucket=bucket)
    except ClientError as error:
        if error.response.get("Error", {}).get("Code") != "BucketAlreadyOwnedByYou":
            raise
    s3.put_bucket_policy(Bucket=bucket, Policy=json.dumps(public_read_policy(bucket)))
