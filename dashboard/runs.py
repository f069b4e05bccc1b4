"""The recent Prefect flow runs of a repository, each with its link into the Prefect UI.

Every flow that changes a repository names its runs `<flow>-<fqrn>` (provision, sync,
reconcile, rollback, tag), so one name filter finds them.
"""

from __future__ import annotations

import datetime as dt
import logging

import httpx
from pydantic import BaseModel

log = logging.getLogger("cvmfs.dashboard")


class FlowRunLink(BaseModel):
    id: str
    name: str
    state: str
    started: dt.datetime | None
    url: str


def run_url(ui_url: str, run_id: str) -> str:
    return f"{ui_url.rstrip('/')}/runs/flow-run/{run_id}"


def recent_runs(
    api_url: str, ui_url: str, fqrn: str, limit: int = 10, timeout_s: float = 3.0
) -> list[FlowRunLink] | None:
    """The newest runs whose name contains `fqrn`; None when Prefect cannot be asked."""
    body = {
        "flow_runs": {"name": {"like_": fqrn}},
        "sort": "EXPECTED_START_TIME_DESC",
        "limit": limit,
    }
    try:
        response = httpx.post(f"{api_url}/flow_runs/filter", json=body, timeout=timeout_s)
        response.raise_for_status()
        found = response.json()
    except (httpx.HTTPError, ValueError) as error:
        log.info("event=runs-unavailable fqrn=%s error=%s", fqrn, type(error).__name__)
        return None
    runs = []
    for run in found:
        state = run.get("state") or {}
        started = run.get("start_time") or run.get("expected_start_time")
        runs.append(
            FlowRunLink(
                id=str(run["id"]),
                name=str(run.get("name", "")),
                state=str(state.get("name") or state.get("type") or "unknown"),
                # Prefect answers in UTC; converted anyway, since the page says UTC.
                started=dt.datetime.fromisoformat(started).astimezone(dt.UTC) if started else None,
                url=run_url(ui_url, str(run["id"])),
            )
        )
    return runs
