"""Ends, as Crashed, the `gateway-commit` runs that a dead gateway process left unfinished.

A gateway killed mid-commit leaves its run Pending or Running; the rescue automation
(deployments/rescue.py) later makes it AwaitingRetry, and there it would stay: no deployment
serves a `gateway-commit` run (flows/gateway_commit.py: the publisher's `cvmfs_server publish`
is the retry). Every gateway copy sweeps at start and every `gateway.orphan_sweep_s`: a run of
flow `gateway-commit` without a deployment, not final, whose last state change and last
heartbeat are both older than `prefect.rescue_after_s`, is set Crashed with what happened and
what to do. Live runs send a heartbeat every `prefect.heartbeat_s`, so no copy ends a run
another copy (on any host) is running; copies sweeping at once propose the same state, and the
server keeps the first (a final state is not left for another one).
"""

from __future__ import annotations

import datetime as dt
import logging
import threading
from dataclasses import dataclass
from typing import Any
from uuid import UUID

from prefect import get_client
from prefect.client.orchestration import SyncPrefectClient
from prefect.client.schemas.filters import (
    FlowFilter,
    FlowFilterName,
    FlowRunFilter,
    FlowRunFilterDeploymentId,
    FlowRunFilterState,
    FlowRunFilterStateType,
    TaskRunFilter,
    TaskRunFilterFlowRunId,
)
from prefect.client.schemas.objects import FlowRun, StateType
from prefect.client.schemas.responses import OrchestrationResult, SetStateStatus
from prefect.events.filters import (
    EventFilter,
    EventNameFilter,
    EventOccurredFilter,
    EventResourceFilter,
)
from prefect.states import Crashed

from service.faults import is_transient
from service.settings import Settings

FLOW_NAME = "gateway-commit"  # flows/gateway_commit.py
MERGE_TASK = "merge and publish"  # tasks/gateway_commit.py
HEARTBEAT_EVENT = "prefect.flow-run.heartbeat"
_UNFINISHED = [StateType.PENDING, StateType.RUNNING, StateType.SCHEDULED]
# One sweep looks at this many unfinished runs at most; the next sweep takes the rest.
SWEEP_BATCH = 200

log = logging.getLogger("cvmfs.gateway")


@dataclass(frozen=True)
class EndedCommit:
    run_id: UUID
    repo: str
    message: str


def _repo(run: FlowRun) -> str:
    request = run.parameters.get("req")
    return str(request.get("repo", "?")) if isinstance(request, dict) else "?"


def crash_message(run: FlowRun, merge_state: StateType | None, silent_s: int) -> str:
    """What the run's final state says: what happened to the commit, and what to do."""
    repo = _repo(run)
    if merge_state == StateType.COMPLETED:
        outcome = (
            "after its 'merge and publish' step had completed: the new revision was published, "
            "but the publisher was not told"
        )
    elif merge_state == StateType.RUNNING:
        outcome = (
            "inside its 'merge and publish' step: stratum-0 has the old revision or the complete "
            "new one, never part of one"
        )
    else:
        outcome = "before its 'merge and publish' step: nothing was published"
    return (
        f"the gateway process died during this commit (no heartbeat for {silent_s} s), "
        f"{outcome}. Run `cvmfs_server publish {repo}` again on the publisher: its lease and "
        "objects are kept until the lease expires, and a change already published is published "
        "again unchanged (gateway/orphans.py)"
    )


def _silent_since(client: SyncPrefectClient, run_id: UUID, since: dt.datetime) -> bool:
    """No heartbeat of the run since `since`."""
    page = client.read_events(
        filter=EventFilter(
            occurred=EventOccurredFilter.model_validate({"since": since}),
            event=EventNameFilter(name=[HEARTBEAT_EVENT]),
            resource=EventResourceFilter(id=[f"prefect.flow-run.{run_id}"]),
        ),
        limit=1,
    )
    return not page.events


def _merge_state(client: SyncPrefectClient, run_id: UUID) -> StateType | None:
    runs = client.read_task_runs(
        task_run_filter=TaskRunFilter(flow_run_id=TaskRunFilterFlowRunId(any_=[run_id]))
    )
    merges = [run for run in runs if run.name.startswith(MERGE_TASK) and run.state is not None]
    if not merges:
        return None
    if any(run.state is not None and run.state.is_completed() for run in merges):
        return StateType.COMPLETED
    return StateType.RUNNING


def end_orphaned_commits(
    client: SyncPrefectClient, silent_s: int, now: dt.datetime | None = None
) -> list[EndedCommit]:
    """Crash every unfinished deployment-less `gateway-commit` run silent for `silent_s`."""
    now = now or dt.datetime.now(dt.UTC)
    since = now - dt.timedelta(seconds=silent_s)
    runs = client.read_flow_runs(
        flow_filter=FlowFilter(name=FlowFilterName(any_=[FLOW_NAME])),
        flow_run_filter=FlowRunFilter(
            state=FlowRunFilterState(type=FlowRunFilterStateType(any_=_UNFINISHED)),
            deployment_id=FlowRunFilterDeploymentId(is_null_=True),
        ),
        limit=SWEEP_BATCH,
    )
    ended: list[EndedCommit] = []
    for run in runs:
        if run.deployment_id is not None or run.state is None or run.state.timestamp is None:
            continue
        if run.state.timestamp > since or not _silent_since(client, run.id, since):
            continue
        message = crash_message(run, _merge_state(client, run.id), silent_s)
        result: OrchestrationResult[Any] = client.set_flow_run_state(
            run.id, Crashed(message=message)
        )
        if result.status == SetStateStatus.ACCEPT:  # else another copy ended it first
            ended.append(EndedCommit(run.id, _repo(run), message))
    return ended


class OrphanedCommitSweeper:
    """The gateway's background sweep: at start, then every `gateway.orphan_sweep_s`."""

    def __init__(self, settings: Settings) -> None:
        self._interval_s = settings.gateway.orphan_sweep_s
        self._silent_s = settings.prefect.rescue_after_s
        self._stop = threading.Event()
        self._thread = threading.Thread(
            target=self._run, name="gateway-orphaned-commits", daemon=True
        )

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(timeout=10)

    def sweep_once(self) -> list[EndedCommit]:
        with get_client(sync_client=True) as client:
            ended = end_orphaned_commits(client, self._silent_s)
        for commit in ended:
            log.warning(
                "orphaned gateway commit ended run=%s repo=%s state=Crashed",
                commit.run_id,
                commit.repo,
            )
        return ended

    def _run(self) -> None:
        while True:
            try:
                self.sweep_once()
            except Exception as error:  # Prefect unreachable for now: the next sweep tries again
                # An outage is one line a minute; only an error of unknown kind (a defect)
                # brings its traceback (it printed ~25 lines a minute while Prefect was down).
                log.warning(
                    "sweep for orphaned gateway commits failed (%s: %s); next in %.0f s",
                    type(error).__name__,
                    error,
                    self._interval_s,
                    exc_info=not is_transient(error),
                )
            if self._stop.wait(self._interval_s):
                return
