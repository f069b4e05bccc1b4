"""Where a repository's stratum-0 lives, from settings: the one place that decides it.

Local backend: `<data_dir>/stratum0/<fqrn>` (served by the stack's stratum0-http); S3 backend:
the RGW bucket `settings.stratum0.bucket` under the prefix `<fqrn>/`.
"""

from __future__ import annotations

from pathlib import Path

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
    import boto3  # imported here: only the S3 backend needs it

    client = boto3.client(
        "s3",
        endpoint_url=settings.ceph.s3_endpoint,
        aws_access_key_id=settings.ceph.service_access_key,
        aws_secret_access_key=settings.ceph.service_secret_key.get_secret_value(),
        region_name=settings.ceph.region,
    )
    return S3Storage(client, settings.stratum0.bucket, prefix=fqrn)
