"""Flow `tag`: name the current revision of a repository, under its publish lock.

A tag is what a rollback returns to. Idempotent: a tag already naming the current revision is
left as it is; an existing tag of that name on another revision is moved, as `cvmfs_server tag
-a` does.
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


class TagRequest(BaseModel):
    """What the API or the dashboard (or an operator in the Prefect UI) asks for."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    repo: Annotated[str, Field(min_length=3, max_length=253)]
    tag: Annotated[str, Field(min_length=1, max_length=255)]
    description: Annotated[str, Field(max_length=1024)] = ""
    request_id: RequestId
    requested_by: str | None = None


class TagResult(BaseModel):
    repo: str
    tag: str
    revision: int
    already_done: bool


def add_tag(settings: Settings, req: TagRequest) -> TagResult:
    """The tagging itself (no Prefect): keys from Vault, a re-signed manifest in stratum-0."""
    registry = RepositoryRegistry.open(settings)
    try:
        writer = open_writer(settings, registry.require(req.repo))
        current = writer.current_manifest()
        if any(
            t.name == req.tag and t.root_hash == current.root_catalog_hash for t in writer.tags()
        ):
            return TagResult(
                repo=req.repo, tag=req.tag, revision=current.revision, already_done=True
            )
        try:
            revision = writer.tag(req.tag, description=req.description).revision
        except CvmfsError as error:
            registry.record_error(req.repo, f"tagging {req.tag!r} failed: {error}")
            raise
        return TagResult(repo=req.repo, tag=req.tag, revision=revision, already_done=False)
    finally:
        registry.close()


@task(
    name="tag the current revision",
    retries=2,
    retry_delay_seconds=[5, 30],
    retry_condition_fn=retry_if_transient,
)
def tag_current_revision(req: TagRequest) -> TagResult:
    return add_tag(load_settings(), req)


@flow(name="tag", flow_run_name="tag-{req.repo}", log_prints=True, on_failure=[explain_failure])
def tag(req: TagRequest) -> TagResult:
    """Tag the current revision of `req.repo` as `req.tag`, holding the publish lock."""
    with repository_lease(req.repo):
        result = tag_current_revision(req)
    print(
        f"{result.repo}: tag {result.tag!r} names revision {result.revision}"
        + (" (it already did)" if result.already_done else "")
    )
    return result
