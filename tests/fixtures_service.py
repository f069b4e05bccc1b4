"""Fixtures for tests of the service's flows on the real stack.

Load with `pytest_plugins = ("tests.fixtures_auth", "tests.fixtures_service")`.
"""

from __future__ import annotations

import datetime as dt
import json
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from buckets.s3_clients import demo_s3
from cvmfs.reader import RepositoryReader
from flows.provision import provision
from service.auth import TokenVerifier
from service.client_config import stratum0_url
from service.keystore import KeyOwner, KeyStore
from service.messages import AmqpProperties, AuthorizedProvisionRequest, RequestParser
from service.repositories import RepositoryRegistry
from service.settings import Settings
from tests.conftest import settings_env
from tests.issuer import TestIssuer


@pytest.fixture
def service_settings(
    vault: Settings,
    ceph: Settings,
    rabbitmq: Settings,
    prefect_server: Settings,
    stratum0_http: Settings,
    monkeypatch: pytest.MonkeyPatch,
) -> Iterator[Settings]:
    """The whole stack, and the environment a flow run's `load_settings()` reads."""
    for key, value in settings_env(vault).items():
        monkeypatch.setenv(key, value)
    yield vault


def authorized_request(
    settings: Settings, issuer: TestIssuer, verifier: TokenVerifier, user: str, bucket: str
) -> AuthorizedProvisionRequest:
    """What the bridge makes of the dashboard's request for a personal repository."""
    body = json.dumps(
        {
            "version": 1,
            "request_id": f"req-{uuid.uuid4().hex[:12]}",
            "access_token": issuer.mint(preferred_username=user, sub=f"sub-{user}"),
            "kind": "personal",
            "bucket": bucket,
        }
    ).encode()
    parser = RequestParser.from_settings(settings)
    parsed = parser.parse(body, AmqpProperties())
    authorized = parser.authorize(parsed, verifier)  # type: ignore[arg-type]
    assert isinstance(authorized, AuthorizedProvisionRequest), authorized
    return authorized


@dataclass(frozen=True)
class ProvisionedRepository:
    fqrn: str
    bucket: str
    request: AuthorizedProvisionRequest


@pytest.fixture
def provisioned(
    service_settings: Settings, oidc_issuer: TestIssuer, token_verifier: TokenVerifier
) -> ProvisionedRepository:
    """A fresh personal repository fed by the demo user's new bucket."""
    user = f"s{uuid.uuid4().hex[:6]}"
    bucket = f"{user}-bucket"
    demo_s3(service_settings).create_bucket(Bucket=bucket)
    request = authorized_request(service_settings, oidc_issuer, token_verifier, user, bucket)
    assert provision(request).status == "ok"
    return ProvisionedRepository(fqrn=request.fqrn, bucket=bucket, request=request)


def open_reader(
    settings: Settings, fqrn: str, tmp_path: Path, now: dt.datetime | None = None
) -> RepositoryReader:
    """The repository over HTTP, verified with the public key the client bundle hands out."""
    key_file = public_key_file(settings, fqrn, tmp_path)
    return RepositoryReader.open(stratum0_url(settings, fqrn), fqrn, [key_file], now=now)


def public_key_file(settings: Settings, fqrn: str, directory: Path) -> Path:
    """`<directory>/<fqrn>.pub`: the repository's master public key, read from Vault."""
    registry = RepositoryRegistry.open(settings)
    try:
        repository = registry.require(fqrn)
    finally:
        registry.close()
    owner = KeyOwner.for_repository(repository.kind, repository.owner_subject, repository.group)
    key_file = directory / f"{fqrn}.pub"
    key_file.write_text(KeyStore.from_settings(settings.vault).read(owner, fqrn).master_public_pem)
    return key_file
