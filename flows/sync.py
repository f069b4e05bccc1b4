"""Flows `sync` (bucket changes → a published revision) and `reconcile` (full diff, repair).

`sync` runs for the keys a batch of bucket events named, or as a backfill of a prefix;
`reconcile` runs `sync` over every repository's whole `cvmfs/` area on a schedule.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import TypeVar, cast

from prefect import flow, get_run_logger
from prefect.runtime import flow_run as runtime_flow_run
from prefect.utilities.annotations import quote
from pydantic import BaseModel, ConfigDict, Field

from flows.failure_hint import explain_failure
from metrics.flows import flow_metrics, visible_event_times
from service.repositories import RepositoryRegistry
from service.runtime import load_settings
from tasks.locks import repository_lease
from tasks.sync import (
    RunClients,
    SyncOutcome,
    SyncRequest,
    dead_letter_refusals,
    look_up_repository,
    plan_sync,
    publish_changes,
    read_bucket_state,
    record_provenance,
    record_refusals,
    report_changes,
)

T = TypeVar("T")


def opaque(value: T) -> T:
    """A task argument Prefect passes as is, without walking it for upstream futures.

    There are none in these values, and walking a reconcile's 20,000 bucket objects took
    2.3 s before the plan task started.
    """
    return cast(T, quote(value))


@flow(name="sync", flow_run_name="sync-{req.repo}", on_failure=[explain_failure])
def sync(req: SyncRequest) -> int | None:
    """Make the repository show what the bucket has now for the named keys (or prefix).

    Returns the published revision, or None when nothing changed (or on a dry run).
    """
    settings = load_settings()
    logger = get_run_logger()
    # The lease comes first. Taken right after a task ended, the lease request got HTTP 503
    # (the SQLite-backed server's retryable "database is locked") in a third of the runs, and
    # Prefect's client retries only after ~2 s (bench/README.md, sync latency). An unknown
    # repository fails here too: its lock does not exist.
    clients = opaque(RunClients(settings))  # one S3 client for the run's tasks
    with repository_lease(req.repo):
        repository = look_up_repository(settings, req)
        truth = read_bucket_state(settings, repository, req, clients)
        plan = plan_sync(settings, repository, opaque(truth), clients)
        outcome = SyncOutcome(fqrn=req.repo, revision=None, plan=plan)
        if plan.changes and not req.dry_run:
            outcome = publish_changes(settings, repository, opaque(plan), clients)
            if outcome.revision is not None:
                record_provenance(settings, opaque(outcome))
            plan = outcome.plan  # with the changes refused while applying it
        if not req.dry_run:  # the repository now shows what the bucket had for these keys
            flow_metrics().observe_visible(
                visible_event_times(req.event_times, (r.key for r in plan.refused)),
                datetime.now(UTC),
            )
            new_refusals = record_refusals(settings, repository, opaque(plan))
            if new_refusals:
                dead_letter_refusals(settings, repository, opaque(new_refusals))
    report_changes(opaque(outcome), req.dry_run)
    for refused in plan.refused:
        logger.warning(
            "refused key repo=%s key=%r other_key=%r reason=%s",
            req.repo,
            refused.key,
            refused.other_key,
            refused.reason,
        )
    logger.info(
        "sync repo=%s revision=%s changes=%d unchanged=%d refused=%d",
        req.repo,
        outcome.revision,
        len(plan.changes),
        plan.unchanged,
        len(plan.refused),
    )
    return outcome.revision


class ReconcileRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    repo: str | None = Field(default=None, description="one repository; all ready ones if empty")
    dry_run: bool = Field(default=False, description="only report the drift as artifacts")


def reconcile_run_name() -> str:
    """`reconcile-<fqrn>`, or `reconcile-all` for a run without parameters (the schedule's)."""
    req = runtime_flow_run.parameters.get("req")
    repo = req.get("repo") if isinstance(req, dict) else getattr(req, "repo", None)
    return f"reconcile-{repo or 'all'}"


@flow(name="reconcile", flow_run_name=reconcile_run_name, on_failure=[explain_failure])
def reconcile(req: ReconcileRequest | None = None) -> dict[str, int | None]:
    """A full diff of each bucket's `cvmfs/` against its repository, repairing the drift."""
    req = req or ReconcileRequest()
    settings = load_settings()
    registry = RepositoryRegistry.open(settings)
    try:
        # A ready repository whose bucket is not wired (not yet, or deleted since) has
        # nothing to reconcile: its bucket may not even exist.
        ready = registry.repositories("ready")
        states = registry.bucket_states(r.fqrn for r in ready)
        wired = [
            r.fqrn
            for r in ready
            if r.bucket_owner_id and (r.fqrn not in states or states[r.fqrn].state == "wired")
        ]
        names = [req.repo] if req.repo else wired
    finally:
        registry.close()
    results: dict[str, int | None] = {}
    failed: list[str] = []
    for name in names:  # one repository's failure must not stop the others
        state = sync(SyncRequest(repo=name, dry_run=req.dry_run), return_state=True)
        if state.is_completed():
            results[name] = state.result()
        else:
            failed.append(name)
    if failed:
        raise RuntimeError(f"reconcile failed for {', '.join(failed)}: see their sync runs")
    return results
