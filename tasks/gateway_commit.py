"""The steps of a gateway commit: merge and publish, then report the change summary."""

from __future__ import annotations

import time
from typing import Annotated

from prefect import task
from prefect.artifacts import create_markdown_artifact, create_table_artifact
from prefect.cache_policies import NO_CACHE
from pydantic import BaseModel, ConfigDict, Field

from gateway.commit import CommitOutcome, commit_merge
from gateway.errors import GatewayError
from gateway.merge import MAX_LISTED_CHANGES
from gateway.paths import LeasePath
from metrics.flows import flow_metrics
from service.faults import retry_if_transient
from service.keystore import KeyOwner, KeyStore
from service.repositories import RepositoryRegistry
from service.settings import Settings
from tasks.storage import repository_storage

FQRN_PATTERN = r"^[a-z0-9][a-z0-9.-]{0,62}$"


class GatewayCommitRequest(BaseModel):
    """One publisher's commit: what the Prefect UI shows for the run (never the token)."""

    model_config = ConfigDict(extra="forbid")

    repo: Annotated[str, Field(pattern=FQRN_PATTERN, description="repository fqrn")]
    path: str = Field(description="the leased path, '/' or '/a/b'")
    key_id: str = Field(description="the gateway key that signed the commit")
    hostname: str = Field(default="", description="the publisher's host")
    old_root_hash: str = Field(description="the publisher's base root catalog")
    new_root_hash: str = Field(description="the publisher's new root catalog")
    lease_base_root_hash: str = Field(description="the root catalog when the lease was granted")
    lease_base_revision: int = Field(description="the revision when the lease was granted")
    tag_name: str = ""
    tag_description: str = ""

    @property
    def lease_path(self) -> LeasePath:
        return LeasePath(self.repo, self.path)


@task(
    name="merge and publish",
    retries=2,
    retry_delay_seconds=[2, 10],
    retry_condition_fn=retry_if_transient,
    cache_policy=NO_CACHE,
)
def merge_and_publish(settings: Settings, req: GatewayCommitRequest) -> CommitOutcome:
    registry = RepositoryRegistry.open(settings)
    try:
        repository = registry.require(req.repo)
    finally:
        registry.close()
    owner = KeyOwner.for_repository(repository.kind, repository.owner_subject, repository.group)
    keys = KeyStore.from_settings(settings.vault).read(owner, req.repo)
    started = time.monotonic()
    outcome = commit_merge(
        repository_storage(settings, req.repo),
        keys,
        req.lease_path,
        old_root_hash=req.old_root_hash,
        new_root_hash=req.new_root_hash,
        lease_base_root_hash=req.lease_base_root_hash,
        tag_name=req.tag_name,
        tag_description=req.tag_description,
    )
    metrics = flow_metrics()  # the gateway process serves them (metrics/gateway.py)
    metrics.publish_duration.labels("gateway-commit").observe(time.monotonic() - started)
    metrics.publish_changes.labels("gateway-commit").observe(len(outcome.plan.changes))
    registry = RepositoryRegistry.open(settings)
    try:
        registry.record_publish(req.repo, outcome.revision)
    finally:
        registry.close()
    return outcome


@task(name="report changes", cache_policy=NO_CACHE)
def report_commit(req: GatewayCommitRequest, outcome: CommitOutcome) -> None:
    """The change summary as the run's table artifact (the first MAX_LISTED_CHANGES rows);
    after the publisher's reply, so its cost is not the publisher's."""
    rows: list[dict[str, object]] = [
        {"change": change.kind, "path": change.path or "/"}
        for change in outcome.plan.changes[:MAX_LISTED_CHANGES]
    ]
    counts = ", ".join(f"{n} {kind}" for kind, n in sorted(outcome.plan.counts().items()))
    create_table_artifact(
        key=f"gateway-commit-{req.repo.replace('.', '-')}",
        table=rows or [{"change": "none", "path": str(req.lease_path)}],
        description=(
            f"{req.repo}{'' if req.path == '/' else req.path}: revision {outcome.old_revision} → "
            f"{outcome.revision} by key {req.key_id} from {req.hostname or 'unknown host'}; "
            f"{counts or 'no changes'}"
            + (f" (first {MAX_LISTED_CHANGES} listed)" if len(rows) == MAX_LISTED_CHANGES else "")
        ),
    )


def commit_failure_reason(error: BaseException) -> str:
    """What the publisher is told when its commit failed (it prints it)."""
    if isinstance(error, GatewayError):
        return error.reason
    return (
        f"commit failed ({type(error).__name__}: {error}); nothing was published and the "
        "lease is kept: run `cvmfs_server publish` again"
    )


@task(name="explain failure", cache_policy=NO_CACHE)
def explain_failed_commit(req: GatewayCommitRequest, reason: str) -> None:
    """A failed run says why, and why the UI's Retry is not how it is retried."""
    where = f"{req.repo}{'' if req.path == '/' else req.path}"
    create_markdown_artifact(
        key=f"gateway-commit-failed-{req.repo.replace('.', '-')}",
        markdown=(
            f"**Not published**: {reason}\n\n"
            f"The repository is unchanged. Do not retry this run from the Prefect UI: a "
            f"gateway commit runs inside the gateway while its publisher waits for the reply "
            f"(there is no deployment to run it again), and only the publisher knows whether "
            f"it still wants this change. The publisher ({req.hostname or 'unknown host'}, key "
            f"{req.key_id}) got the reason above; its lease on {where} and the objects it sent "
            f"stay until the lease expires, so `cvmfs_server publish {req.repo}` on it retries "
            f"the commit, and `cvmfs_server abort {req.repo}` gives it up."
        ),
        description=f"gateway commit of {where} failed: not published",
    )
