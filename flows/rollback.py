"""Flow `rollback`: publish a new revision whose content is a tagged revision's, under the lock.

Idempotent: the new revision's description names the request, so a retried or repeated run finds
its own revision and publishes nothing more.
"""

from __future__ import annotations

from typing import Annotated

from prefect import flow, task
from pydantic import BaseModel, ConfigDict, Field

from cvmfs.errors import CvmfsError
from flows.failure_hint import explain_failure
from service.api.stratum0 import open_writer
from service.faults import retry_if_transient
from service.messages import RequestId
from service.repositories import RepositoryRegistry
from service.runtime import load_settings
from service.settings import Settings
from tasks.locks import repository_lease


class RollbackRequest(BaseModel):
    """What the API (or an operator in the Prefect UI) asks for."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    repo: Annotated[str, Field(min_length=3, max_length=253)]
    tag: Annotated[str, Field(min_length=1, max_length=255)]
    request_id: RequestId
    requested_by: str | None = None


class RollbackResult(BaseModel):
    repo: str
    tag: str
    revision: int
    already_done: bool


def rollback_description(req: RollbackRequest) -> str:
    return f"rollback to {req.tag} (request {req.request_id})"


def roll_back(settings: Settings, req: RollbackRequest) -> RollbackResult:
    """The rollback itself (no Prefect): keys from Vault, write to stratum-0, record it."""
    registry = RepositoryRegistry.open(settings)
    try:
        writer = open_writer(settings, registry.require(req.repo))
        marker = rollback_description(req)
        done = [tag.revision for tag in writer.tags() if tag.description == marker]
        if done:
            revision, already_done = max(done), True
        else:
            try:
                revision = writer.rollback(req.tag, description=marker).revision
            except CvmfsError as error:
                registry.record_error(req.repo, f"rollback to {req.tag!r} failed: {error}")
                raise
            already_done = False
        registry.record_publish(req.repo, revision)
        return RollbackResult(
            repo=req.repo, tag=req.tag, revision=revision, already_done=already_done
        )
    finally:
        registry.close()


@task(
    name="roll back to tag",
    retries=2,
    retry_delay_seconds=[5, 30],
    retry_condition_fn=retry_if_transient,
)
def roll_back_to_tag(req: RollbackRequest) -> RollbackResult:
    return roll_back(load_settings(), req)


@flow(
    name="rollback",
    flow_run_name="rollback-{req.repo}",
    log_prints=True,
    on_failure=[explain_failure],
)
def rollback(req: RollbackRequest) -> RollbackResult:
    """Roll `req.repo` back to tag `req.tag`, holding the repository's publish lock."""
    with repository_lease(req.repo):
        result = roll_back_to_tag(req)
    print(
        f"{result.repo}: revision {result.revision} has the content of tag {result.tag!r}"
        + (" (already done by an earlier run)" if result.already_done else "")
    )
    return result
