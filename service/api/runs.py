"""The flow runs the API starts: deployment names and the parameters each flow is sent.

Kept in one place so a change of a flow's request model changes one function here.
"""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ConfigDict

from service.repositories import Repository

# Bucket keys under this prefix are published (issue 5: `cvmfs/<path>` → `/<path>`).
BUCKET_CONTENT_PREFIX = "cvmfs/"

Parameters = dict[str, Any]


class DeploymentNames(BaseModel):
    """`flow/deployment` names of the runs the API starts."""

    model_config = ConfigDict(frozen=True)

    sync: str = "sync/sync"
    reconcile: str = "reconcile/reconcile"
    rollback: str = "rollback/rollback"


def sync_run(
    repository: Repository, catalog_prefix: str | None, dry_run: bool, names: DeploymentNames
) -> tuple[str, Parameters]:
    """A prefix backfill is a `sync` of every key under it; no prefix reconciles everything."""
    if catalog_prefix:
        bucket_prefix = BUCKET_CONTENT_PREFIX + catalog_prefix.strip("/") + "/"
        return names.sync, {
            "req": {
                "repo": repository.fqrn,
                "bucket": repository.bucket,
                "keys": [],
                "prefix": bucket_prefix,
            }
        }
    return names.reconcile, {
        "req": {"repo": repository.fqrn, "bucket": repository.bucket, "dry_run": dry_run}
    }


def rollback_run(repository: Repository, tag: str, request_id: str, subject: str) -> Parameters:
    return {
        "req": {
            "repo": repository.fqrn,
            "tag": tag,
            "request_id": request_id,
            "requested_by": subject,
        }
    }
