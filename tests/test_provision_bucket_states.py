"""Provisioning in the seed's order on the real stack (flows run in-process): a repository
requested before its bucket is ready and waits; the bucket, once created by its owner, is
wired by the `wire-bucket` flow; a bucket of another S3 account is never wired."""

from __future__ import annotations

import uuid
from pathlib import Path

import httpx
import pytest

from buckets.bucket_wiring import notification_id_for
from buckets.s3_clients import bucket_agent_s3
from cvmfs.reader import RepositoryReader
from flows.provision import WireBucketRequest, provision, wire_waiting_bucket
from flows.sync import sync
from service.auth import TokenVerifier
from service.client_config import stratum0_url
from service.repositories import RepositoryRegistry
from service.settings import Settings
from tasks.sync import SyncRequest
from tests.fixtures_s3 import rgw_user_s3
from tests.fixtures_service import authorized_request, public_key_file
from tests.issuer import TestIssuer

pytest_plugins = ("tests.fixtures_auth", "tests.fixtures_service")
pytestmark = [pytest.mark.stack, pytest.mark.slow]


@pytest.fixture
def owner_checked(service_settings: Settings, monkeypatch: pytest.MonkeyPatch) -> Settings:
    """The service as deployed: a bucket must belong to the requester's RGW user."""
    monkeypatch.setenv("CVMFS_SVC_PROVISIONING__REQUIRE_BUCKET_OWNER", "true")
    return service_settings


def _notification_ids(settings: Settings, bucket: str) -> list[str]:
    configuration = bucket_agent_s3(settings).get_bucket_notification_configuration(Bucket=bucket)
    return [entry["Id"] for entry in configuration.get("TopicConfigurations", [])]


def test_repository_requested_before_its_bucket_is_ready_and_wired_later(
    owner_checked: Settings,
    oidc_issuer: TestIssuer,
    token_verifier: TokenVerifier,
    tmp_path: Path,
) -> None:
    settings = owner_checked
    user = f"w{uuid.uuid4().hex[:6]}"
    bucket = f"{user}-later"
    request = authorized_request(settings, oidc_issuer, token_verifier, user, bucket)

    reply = provision(request)
    assert reply.status == "ok", reply

    registry = RepositoryRegistry.open(settings)
    try:
        repository = registry.require(request.fqrn)
        state = registry.bucket_state(request.fqrn)
        assert repository.status == "ready" and repository.bucket_owner_id is None
        assert state is not None and state.state == "waiting"
        assert state.message.startswith(f"waiting for bucket {bucket}: create it")
        assert request.fqrn in [r.fqrn for r, _ in registry.buckets_to_watch()]
    finally:
        registry.close()
    # Ready means mountable: keys in Vault, revision 1 readable with the bundle's key.
    key_file = public_key_file(settings, request.fqrn, tmp_path)
    with RepositoryReader.open(
        stratum0_url(settings, request.fqrn), request.fqrn, [key_file]
    ) as reader:
        assert reader.manifest.revision == 1

    # Provisioning again while waiting (a redelivery) changes nothing and fails nothing.
    assert provision(request).status == "ok"

    rgw_user_s3(settings, user).create_bucket(Bucket=bucket)
    state = wire_waiting_bucket(WireBucketRequest(fqrn=request.fqrn))
    assert state.state == "wired", state.message
    assert state.observed_owner_id == user
    assert _notification_ids(settings, bucket) == [notification_id_for(request.fqrn)]
    registry = RepositoryRegistry.open(settings)
    try:
        assert registry.require(request.fqrn).bucket_owner_id == user
        assert request.fqrn not in [r.fqrn for r, _ in registry.buckets_to_watch()]
    finally:
        registry.close()


def test_bucket_of_another_account_is_never_wired(
    owner_checked: Settings,
    oidc_issuer: TestIssuer,
    token_verifier: TokenVerifier,
) -> None:
    settings = owner_checked
    user, other = f"f{uuid.uuid4().hex[:6]}", f"o{uuid.uuid4().hex[:6]}"
    bucket = f"taken-{uuid.uuid4().hex[:8]}"
    rgw_user_s3(settings, other).create_bucket(Bucket=bucket)
    request = authorized_request(settings, oidc_issuer, token_verifier, user, bucket)

    assert provision(request).status == "ok"

    registry = RepositoryRegistry.open(settings)
    try:
        repository = registry.require(request.fqrn)
        state = registry.bucket_state(request.fqrn)
    finally:
        registry.close()
    assert repository.status == "ready" and repository.bucket_owner_id is None
    assert state is not None and state.state == "foreign" and state.observed_owner_id == other
    assert state.message.startswith(
        f"bucket {bucket} already exists and belongs to another S3 account, not to {user} "
    )
    assert other not in state.message  # the other account is not named to the requester
    assert _notification_ids(settings, bucket) == []
    # Asked again (the watcher's wiring run, an operator's retry): still not wired.
    assert wire_waiting_bucket(WireBucketRequest(fqrn=request.fqrn)).state == "foreign"
    assert _notification_ids(settings, bucket) == []


def test_client_configuration_is_served_while_the_bucket_waits(
    owner_checked: Settings, oidc_issuer: TestIssuer, token_verifier: TokenVerifier
) -> None:
    """The stratum-0 HTTP server answers for the repository before any bucket exists."""
    settings = owner_checked
    user = f"c{uuid.uuid4().hex[:6]}"
    request = authorized_request(settings, oidc_issuer, token_verifier, user, f"{user}-cfg")
    assert provision(request).status == "ok"
    manifest = httpx.get(f"{stratum0_url(settings, request.fqrn)}/.cvmfspublished")
    assert manifest.status_code == 200 and manifest.content.startswith(b"C")


def test_a_deleted_bucket_waits_again_and_is_wired_when_created_again(
    owner_checked: Settings, oidc_issuer: TestIssuer, token_verifier: TokenVerifier
) -> None:
    """Deleting a bucket deletes its notification: a reconcile that finds the bucket gone puts
    the repository back to waiting (the watcher wires the new bucket), keeping its content."""
    settings = owner_checked
    user = f"d{uuid.uuid4().hex[:6]}"
    bucket = f"{user}-again"
    s3 = rgw_user_s3(settings, user)
    s3.create_bucket(Bucket=bucket)
    request = authorized_request(settings, oidc_issuer, token_verifier, user, bucket)
    assert provision(request).status == "ok"

    s3.delete_bucket(Bucket=bucket)
    state = sync(SyncRequest(repo=request.fqrn), return_state=True)
    assert state.is_failed() and "no longer exists" in str(state.message)
    registry = RepositoryRegistry.open(settings)
    try:
        bucket_state = registry.bucket_state(request.fqrn)
        assert registry.require(request.fqrn).status == "ready"
    finally:
        registry.close()
    assert bucket_state is not None and bucket_state.state == "waiting"

    s3.create_bucket(Bucket=bucket)
    assert wire_waiting_bucket(WireBucketRequest(fqrn=request.fqrn)).state == "wired"
    assert _notification_ids(settings, bucket) == [notification_id_for(request.fqrn)]
