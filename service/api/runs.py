"""The flow runs the API starts: deployment names and the parameters each flow is sent.

Kept in one place so a change of a flow's request model changes one function here.
"""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict

from bridge.run_requests import Parameters, backfill_parameters, reconcile_parameters
from service.repositories import Repository


class DeploymentNames(BaseModel):
    """`flow/deployment` names of the runs the API starts."""

    model_config = ConfigDict(frozen=True)

    sync: str = "sync/sync"
    reconcile: str = "reconcile/reconcile"
    rollback: str = "rollback/rollback"
    tag: str = "tag/tag"


def sync_run(
    repository: Repository, catalog_prefix: str | None, dry_run: bool, names: DeploymentNames
) -> tuple[str, Parameters]:
    """A prefix backfill is a `sync` (tasks.sync.SyncRequest) of every key under
    `cvmfs/<prefix>/`; no prefix reconciles the whole repository (flows.sync.ReconcileRequest).
    """
    if catalog_prefix:
        return names.sync, backfill_parameters(repository.fqrn, catalog_prefix.strip("/") + "/")
    return names.reconcile, reconcile_parameters(repository.fqrn, dry_run=dry_run)


def rollback_run(repository: Repository, tag: str, request_id: str, subject: str) -> Parameters:
    return {
        "req": {
            "repo": repository.fqrn,
            "tag": tag,
            "request_id": request_id,
            "requested_by": subject,
        }
    }


def tag_run(
    repository: Repository, tag: str, description: str, request_id: str, subject: str
) -> Parameters:
    return {
        "req": {
            "repo": repository.fqrn,
            "tag": tag,
            "description": description,
            "request_id": request_id,
            "requested_by": subject,
        }
    }
