"""The S3 stratum-0 backend from nothing: provisioning creates the bucket with its public-read
policy, and RGW serves the repository with the HTTP contract stratum 1s, Squids and clients rely
on (cache headers as the stock web server sets them, ranges, 404s).
"""

from __future__ import annotations

import uuid
from pathlib import Path

import httpx
import pytest

from buckets.s3_clients import demo_s3
from cvmfs.fsck import fsck
from cvmfs.http_cache import MANIFEST_MAX_AGE_S, OBJECT_MAX_AGE_S
from cvmfs.objects import ObjectSuffix
from flows.provision import provision
from service.auth import TokenVerifier
from service.client_config import stratum0_url
from service.settings import Settings
from tasks.storage import ensure_stratum0_storage, repository_storage
from tests.fixtures_s3 import empty_and_delete
from tests.fixtures_service import authorized_request, open_reader
from tests.issuer import TestIssuer

pytest_plugins = ("tests.fixtures_auth", "tests.fixtures_service")
pytestmark = [pytest.mark.stack, pytest.mark.slow]


def test_provision_into_a_new_s3_stratum0_serves_the_stock_http_contract(
    service_settings: Settings,
    oidc_issuer: TestIssuer,
    token_verifier: TokenVerifier,
    monkeypatch: pytest.MonkeyPatch,
    tmp_path: Path,
) -> None:
    stratum0_bucket = f"stratum0-{uuid.uuid4().hex[:8]}"
    # The flow reads its settings from the environment, as a served deployment does.
    monkeypatch.setenv("CVMFS_SVC_STRATUM0__BACKEND", "s3")
    monkeypatch.setenv("CVMFS_SVC_STRATUM0__BUCKET", stratum0_bucket)
    settings = service_settings.model_copy(
        update={
            "stratum0": service_settings.stratum0.model_copy(
                update={"backend": "s3", "bucket": stratum0_bucket}
            )
        }
    )
    user = f"s3{uuid.uuid4().hex[:6]}"
    bucket = f"{user}-software"
    demo_s3(settings).create_bucket(Bucket=bucket)
    request = authorized_request(settings, oidc_issuer, token_verifier, user, bucket)
    try:
        assert provision(request).status == "ok"
        ensure_stratum0_storage(settings)  # a second call keeps what is there

        base = stratum0_url(settings, request.fqrn)
        assert base.startswith(f"{settings.ceph.s3_endpoint}/{stratum0_bucket}/")
        with open_reader(settings, request.fqrn, tmp_path) as reader:
            assert fsck(reader).ok
            catalog_key = reader.manifest.root_catalog_hash.object_key(ObjectSuffix.CATALOG)
        with httpx.Client(timeout=10) as http:  # anonymous, as a client or stratum 1
            manifest = http.get(f"{base}/.cvmfspublished")
            assert manifest.status_code == 200
            assert manifest.headers["cache-control"] == f"max-age={MANIFEST_MAX_AGE_S}"
            assert manifest.headers["content-type"] == "application/x-cvmfs"
            replica = http.get(f"{base}/.cvmfs_master_replica")
            assert replica.status_code == 200
            object_url = f"{base}/{catalog_key}"
            whole = http.get(object_url)
            assert whole.status_code == 200
            assert whole.headers["cache-control"] == f"max-age={OBJECT_MAX_AGE_S}"
            part = http.get(object_url, headers={"Range": "bytes=0-9"})
            assert (part.status_code, part.content) == (206, whole.content[:10])
            assert http.get(f"{base}/data/00/{'0' * 38}").status_code == 404
            assert http.head(f"{base}/.cvmfs_last_snapshot").status_code == 404
    finally:
        empty_and_delete(demo_s3(settings), bucket)
        storage = repository_storage(settings, request.fqrn)
        for key in list(storage.list()):
            storage.delete(key)
