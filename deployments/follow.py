"""Follow a flow run an operator started from the command line until it ends.

`cvmfs-svc sync|reconcile --wait` prints the final state, its message and what the run and
its subflow runs reported (their artifacts' one-line descriptions: what a dry run would
change), so a backfill from a shell or a script needs no trip to the UI. Plain HTTP against
the Prefect API: no Prefect import for a command that only reads.
"""

from __future__ import annotations

import time
from typing import Any

import httpx
from pydantic import BaseModel

FINAL_STATE_TYPES = frozenset({"COMPLETED", "FAILED", "CRASHED", "CANCELLED"})


class RunOutcome(BaseModel):
    state_type: str
    state_name: str
    message: str | None
    # One line per artifact of the run and of its subflow runs (a reconcile's sync runs).
    reports: list[str]

    @property
    def completed(self) -> bool:
        return self.state_type == "COMPLETED"


class FollowTimeout(Exception):
    """The run had not ended when the wait ran out; it goes on."""


def follow_run(api_url: str, run_id: str, timeout_s: float, poll_s: float = 1.0) -> RunOutcome:
    """Poll the run until its state is final (or raise FollowTimeout after `timeout_s`)."""
    deadline = time.monotonic() + timeout_s
    with httpx.Client(base_url=api_url, timeout=10.0) as http:
        while True:
            run = _json(http.get(f"/flow_runs/{run_id}"))
            if run["state_type"] in FINAL_STATE_TYPES:
                break
            if time.monotonic() >= deadline:
                raise FollowTimeout(
                    f"flow run {run_id} is still {run['state_name']} after {timeout_s:.0f} s"
                )
            time.sleep(poll_s)
        subflows = _json(
            http.post(
                "/flow_runs/filter",
                json={"flow_runs": {"parent_flow_run_id": {"any_": [run_id]}}},
            )
        )
        ids = [run_id, *(sub["id"] for sub in subflows)]
        artifacts = _json(
            http.post(
                "/artifacts/filter",
                json={"artifacts": {"flow_run_id": {"any_": ids}}, "sort": "CREATED_DESC"},
            )
        )
    state = run.get("state") or {}
    return RunOutcome(
        state_type=run["state_type"],
        state_name=run["state_name"],
        message=state.get("message"),
        reports=[a.get("description") or a.get("key") or "" for a in reversed(artifacts)],
    )


def _json(response: httpx.Response) -> Any:
    response.raise_for_status()
    return response.json()
