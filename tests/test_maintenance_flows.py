"""Maintenance flows on the real stack: whitelist re-signing and deprovisioning."""

from __future__ import annotations

import datetime as dt
from pathlib import Path

import pytest

from buckets.s3_clients import bucket_agent_s3
from cvmfs.whitelist import SignedWhitelist
from cvmfs.writer import WHITELIST_KEY, resign_whitelist
from flows.maintenance import DeprovisionRequest, deprovision, resign_whitelists
from service.keystore import KeyOwner, KeyStore, vault_client
from service.policies import PublisherAccess
from service.repositories import RepositoryRegistry
from service.settings import Settings
from tasks.storage import local_stratum0_dir, repository_storage
from tests.fixtures_service import ProvisionedRepository, open_reader

pytest_plugins = ("tests.fixtures_auth", "tests.fixtures_service")
pytestmark = [pytest.mark.stack, pytest.mark.slow]


def _expiry(settings: Settings, fqrn: str) -> dt.datetime:
    data = repository_storage(settings, fqrn).get(WHITELIST_KEY)
    return SignedWhitelist.parse(data).whitelist.expires


def test_whitelist_six_days_from_expiry_is_resigned(
    service_settings: Settings, provisioned: ProvisionedRepository, tmp_path: Path
) -> None:
    settings, fqrn = service_settings, provisioned.fqrn
    owner = KeyOwner.personal(provisioned.request.identity.subject)
    master = KeyStore.from_settings(settings.vault).read(owner, fqrn).require_master_key()
    now = dt.datetime.now(dt.UTC).replace(microsecond=0)
    # Age the whitelist: it now lapses in 6 days.
    resign_whitelist(
        repository_storage(settings, fqrn), fqrn, master, validity=dt.timedelta(days=6)
    )
    assert _expiry(settings, fqrn) - now <= dt.timedelta(days=6)

    outcomes = resign_whitelists()
    assert outcomes[fqrn].startswith("re-signed")
    assert _expiry(settings, fqrn) - now >= dt.timedelta(days=29)
    # Verifiable by a client 8 days from now, past the old expiry.
    with open_reader(settings, fqrn, tmp_path, now=now + dt.timedelta(days=8)) as reader:
        assert reader.manifest.revision >= 1
    # A second run leaves a fresh whitelist alone.
    assert resign_whitelists()[fqrn].startswith("valid until")


def test_deprovision_unwires_archives_and_revokes(
    service_settings: Settings, provisioned: ProvisionedRepository
) -> None:
    settings, fqrn = service_settings, provisioned.fqrn
    directory = local_stratum0_dir(settings, fqrn)
    assert (directory / ".cvmfspublished").exists()

    deprovision(DeprovisionRequest(repo=fqrn))

    config = bucket_agent_s3(settings).get_bucket_notification_configuration(
        Bucket=provisioned.bucket
    )
    assert not config.get("TopicConfigurations")
    assert not (directory / ".cvmfspublished").exists()
    archived = list((settings.absolute_data_dir / "archive").glob(f"{fqrn}-*"))
    assert len(archived) == 1 and (archived[0] / ".cvmfspublished").exists()
    assert not PublisherAccess(vault_client(settings.vault), settings.vault.kv_mount).is_granted(
        fqrn
    )
    store = KeyStore.from_settings(settings.vault)
    owner = KeyOwner.personal(provisioned.request.identity.subject)
    assert store.exists(owner, fqrn)  # keys kept for the grace period
    registry = RepositoryRegistry.open(settings)
    try:
        assert registry.require(fqrn).status == "deprovisioned"
    finally:
        registry.close()
