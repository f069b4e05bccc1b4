"""Maintenance steps: whitelist re-signing, deprovisioning, key purging after the grace."""

from __future__ import annotations

import datetime as dt
import shutil

from buckets.bucket_wiring import topic_name_for, unwire_bucket
from buckets.s3_clients import bucket_agent_s3, bucket_agent_sns
from cvmfs.whitelist import SignedWhitelist
from cvmfs.writer import WHITELIST_KEY, resign_whitelist
from service.keystore import KeyOwner, KeyStore, unpacked_fqrn, vault_client
from service.policies import PublisherAccess
from service.repositories import Repository, RepositoryRegistry
from service.settings import Settings
from tasks.steps import step
from tasks.storage import local_stratum0_dir, repository_storage


def key_owner(repository: Repository) -> KeyOwner:
    return KeyOwner.for_repository(repository.kind, repository.owner_subject, repository.group)


@step("list repositories")
def list_repositories(settings: Settings, status: str = "ready") -> list[Repository]:
    registry = RepositoryRegistry.open(settings)
    try:
        return registry.repositories(status)  # type: ignore[arg-type]
    finally:
        registry.close()


@step("re-sign whitelist if it expires soon")
def resign_if_expiring(settings: Settings, fqrn: str, owner: KeyOwner, now: dt.datetime) -> str:
    """A lapsed whitelist makes a repository unmountable everywhere: renew it ahead of time."""
    storage = repository_storage(settings, fqrn)
    current = SignedWhitelist.parse(storage.get(WHITELIST_KEY)).whitelist
    horizon = dt.timedelta(days=settings.provisioning.resign_within_days)
    if current.expires - now > horizon:
        return f"valid until {current.expires:%Y-%m-%d %H:%M} UTC"
    keys = KeyStore.from_settings(settings.vault).read(owner, fqrn)
    renewed = resign_whitelist(storage, fqrn, keys.require_master_key(), now=now)
    return f"re-signed: valid until {renewed.expires:%Y-%m-%d %H:%M} UTC"


@step("find unpacked repositories")
def unpacked_repositories(settings: Settings) -> list[str]:
    """Unpacked repositories are the service's own (not in the registry of repositories)."""
    fqrn = unpacked_fqrn(settings.repository_domain)
    exists = repository_storage(settings, fqrn).exists(WHITELIST_KEY)
    return [fqrn] if exists else []


@step("remove bucket notification and topic")
def unwire_repository_bucket(settings: Settings, repository: Repository) -> None:
    unwire_bucket(
        settings=settings,
        s3=bucket_agent_s3(settings),
        sns=bucket_agent_sns(settings),
        fqrn=repository.fqrn,
        bucket=repository.bucket,
        topic_arn=f"arn:aws:sns:{settings.ceph.region}::{topic_name_for(repository.fqrn)}",
    )


@step("archive or delete stratum-0 content")
def retire_stratum0(settings: Settings, repository: Repository, now: dt.datetime) -> str:
    """`archive` moves a local repository aside (S3: left in place); `delete` removes it."""
    mode = settings.provisioning.deprovision_stratum0
    if settings.stratum0.backend == "local":
        directory = local_stratum0_dir(settings, repository.fqrn)
        if not directory.exists():
            return "already gone"
        if mode == "delete":
            shutil.rmtree(directory)
            return f"deleted {directory}"
        archive = settings.absolute_data_dir / "archive" / f"{repository.fqrn}-{now:%Y%m%dT%H%M%S}"
        archive.parent.mkdir(parents=True, exist_ok=True)
        directory.rename(archive)
        return f"archived to {archive}"
    if mode == "archive":
        return "kept in the stratum-0 bucket (archive on S3 = leave in place)"
    storage = repository_storage(settings, repository.fqrn)
    for key in list(storage.list("")):
        storage.delete(key)
    return "deleted from the stratum-0 bucket"


@step("revoke publisher access")
def revoke_publisher_access(settings: Settings, repository: Repository) -> None:
    PublisherAccess(vault_client(settings.vault), settings.vault.kv_mount).revoke(repository.fqrn)


@step("mark repository deprovisioned")
def mark_deprovisioned(settings: Settings, repository: Repository) -> None:
    registry = RepositoryRegistry.open(settings)
    try:
        registry.set_status(repository.fqrn, "deprovisioned")
    finally:
        registry.close()


@step("destroy keys after the grace period")
def destroy_keys(settings: Settings, repository: Repository) -> None:
    KeyStore.from_settings(settings.vault).destroy(key_owner(repository), repository.fqrn)
