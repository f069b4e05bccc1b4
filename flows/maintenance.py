"""Maintenance flows: `resign-whitelists` (daily), `deprovision`, `purge-expired-keys` (daily)."""

from __future__ import annotations

import datetime as dt

from prefect import flow, get_run_logger
from prefect.artifacts import create_table_artifact
from pydantic import BaseModel, ConfigDict, Field

from flows.failure_hint import explain_failure
from service.runtime import load_settings
from tasks.maintenance import (
    destroy_keys,
    key_owner,
    list_repositories,
    mark_deprovisioned,
    resign_if_expiring,
    retire_stratum0,
    revoke_publisher_access,
    unpacked_repositories,
    unwire_repository_bucket,
)
from tasks.sync import SyncRequest, look_up_repository
from tasks.unpack import SERVICE_KEY_OWNER


def _utc_now() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


@flow(name="resign-whitelists", on_failure=[explain_failure])
def resign_whitelists(now: dt.datetime | None = None) -> dict[str, str]:
    """Re-sign every ready repository's whitelist that expires within the configured days."""
    settings = load_settings()
    moment = now or _utc_now()
    outcomes: dict[str, str] = {}
    failed: list[str] = []
    targets = [(r.fqrn, key_owner(r)) for r in list_repositories(settings)]
    targets += [(fqrn, SERVICE_KEY_OWNER) for fqrn in unpacked_repositories(settings)]
    for fqrn, owner in targets:
        state = resign_if_expiring(settings, fqrn, owner, moment, return_state=True)
        if state.is_completed():
            outcomes[fqrn] = state.result()
        else:
            failed.append(fqrn)
            outcomes[fqrn] = "FAILED: see the task run"
    create_table_artifact(
        key="resign-whitelists",
        table=[{"repository": k, "outcome": v} for k, v in sorted(outcomes.items())]
        or [{"repository": "", "outcome": "no repositories"}],
        description=f"whitelist check at {moment:%Y-%m-%d %H:%M} UTC",
    )
    if failed:
        raise RuntimeError(f"re-signing failed for {', '.join(failed)}")
    return outcomes


class DeprovisionRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    repo: str = Field(description="repository fqrn")


@flow(name="deprovision", flow_run_name="deprovision-{req.repo}", on_failure=[explain_failure])
def deprovision(req: DeprovisionRequest) -> str:
    """Stop feeding the repository and retire it; its keys stay for the grace period."""
    settings = load_settings()
    repository = look_up_repository(settings, SyncRequest(repo=req.repo))
    unwire_repository_bucket(settings, repository)
    outcome = retire_stratum0(settings, repository, _utc_now())
    revoke_publisher_access(settings, repository)
    mark_deprovisioned(settings, repository)
    get_run_logger().info("deprovisioned repo=%s stratum0=%s", req.repo, outcome)
    return outcome


@flow(name="purge-expired-keys", on_failure=[explain_failure])
def purge_expired_keys(now: dt.datetime | None = None) -> list[str]:
    """Destroy the keys of repositories deprovisioned longer ago than the grace period."""
    settings = load_settings()
    cutoff = (now or _utc_now()) - dt.timedelta(days=settings.provisioning.key_grace_days)
    purged = []
    for repository in list_repositories(settings, "deprovisioned"):
        if repository.updated_at < cutoff:
            destroy_keys(settings, repository)
            purged.append(repository.fqrn)
    return purged
