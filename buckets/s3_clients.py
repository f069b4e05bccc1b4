"""boto3 clients for the service's RGW users (path-style, the RGW region name).

The service user owns the stratum-0 bucket; the bucket agent (a system user) reads users'
buckets and manages their notifications; the demo user stands for a research group.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import boto3
import httpx
from botocore.auth import S3SigV4Auth
from botocore.awsrequest import AWSRequest
from botocore.config import Config
from botocore.credentials import Credentials
from pydantic import SecretStr

from service.settings import Settings

if TYPE_CHECKING:
    from mypy_boto3_s3 import S3Client
    from mypy_boto3_sns import SNSClient

_CONFIG = Config(s3={"addressing_style": "path"}, retries={"max_attempts": 5, "mode": "standard"})


def _s3(settings: Settings, access_key: str, secret_key: SecretStr) -> S3Client:
    return boto3.client(
        "s3",
        endpoint_url=settings.ceph.s3_endpoint,
        aws_access_key_id=access_key,
        aws_secret_access_key=secret_key.get_secret_value(),
        region_name=settings.ceph.region,
        config=_CONFIG,
    )


def service_s3(settings: Settings) -> S3Client:
    """The service user: owns the stratum-0 bucket."""
    return _s3(settings, settings.ceph.service_access_key, settings.ceph.service_secret_key)


def bucket_agent_s3(settings: Settings) -> S3Client:
    """Reads users' buckets and manages their notification configuration."""
    ceph = settings.ceph
    return _s3(settings, ceph.bucket_agent_access_key, ceph.bucket_agent_secret_key)


def bucket_agent_sns(settings: Settings) -> SNSClient:
    """RGW's SNS-compatible topic API (same endpoint as S3), as the bucket agent."""
    return boto3.client(
        "sns",
        endpoint_url=settings.ceph.s3_endpoint,
        aws_access_key_id=settings.ceph.bucket_agent_access_key,
        aws_secret_access_key=settings.ceph.bucket_agent_secret_key.get_secret_value(),
        region_name=settings.ceph.region,
        config=_CONFIG,
    )


def demo_s3(settings: Settings) -> S3Client:
    """The demo user's client (what a research group uses to upload)."""
    return _s3(settings, settings.ceph.demo_access_key, settings.ceph.demo_secret_key)


def delete_bucket_notification(settings: Settings, bucket: str, notification_id: str) -> None:
    """Remove one notification of a bucket (Ceph's `DELETE /<bucket>?notification=<id>`).

    boto3 has no call for it, and RGW refuses an empty notification configuration
    (MalformedXML), so removing the last notification needs this signed request.
    """
    url = f"{settings.ceph.s3_endpoint}/{bucket}?notification={notification_id}"
    request = AWSRequest(method="DELETE", url=url)
    credentials = Credentials(
        settings.ceph.bucket_agent_access_key,
        settings.ceph.bucket_agent_secret_key.get_secret_value(),
    )
    S3SigV4Auth(credentials, "s3", settings.ceph.region).add_auth(request)
    response = httpx.request("DELETE", url, headers=dict(request.headers.items()), timeout=30)
    if response.status_code not in (200, 204, 404):
        raise RuntimeError(
            f"deleting notification {notification_id} of bucket {bucket} at "
            f"{settings.ceph.s3_endpoint} failed: HTTP {response.status_code} {response.text[:200]}"
        )
