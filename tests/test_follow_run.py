"""`cvmfs-svc sync|reconcile --wait` reads how a run ended from the real Prefect server."""

from __future__ import annotations

import pytest
from prefect import flow
from prefect.artifacts import create_table_artifact

from deployments.follow import FollowTimeout, follow_run
from service.settings import Settings

pytestmark = pytest.mark.stack


@flow(name="follow-child")
def child(name: str) -> None:
    create_table_artifact(table=[{"action": "add"}], description=f"{name}: dry run, would add 1")


@flow(name="follow-parent")
def parent() -> None:
    child("a.example.org")
    child("b.example.org")


@flow(name="follow-fails")
def fails() -> None:
    raise ConnectionError("refused")


def test_follow_reports_the_state_and_every_subflows_report(prefect_server: Settings) -> None:
    api_url = prefect_server.prefect.api_url
    done = parent(return_state=True)
    outcome = follow_run(api_url, str(done.state_details.flow_run_id), timeout_s=30)
    assert outcome.completed and outcome.state_name == "Completed"
    assert outcome.reports == [
        "a.example.org: dry run, would add 1",
        "b.example.org: dry run, would add 1",
    ]
    failed = fails(return_state=True)
    outcome = follow_run(api_url, str(failed.state_details.flow_run_id), timeout_s=30)
    assert not outcome.completed and outcome.state_name == "Failed"
    assert "ConnectionError: refused" in str(outcome.message)


def test_follow_gives_up_on_a_run_that_does_not_end(prefect_server: Settings) -> None:
    from prefect import get_client

    with get_client(sync_client=True) as client:
        pending = client.create_flow_run(fails)  # never picked up: stays Pending
    with pytest.raises(FollowTimeout, match="still Pending"):
        follow_run(prefect_server.prefect.api_url, str(pending.id), timeout_s=1, poll_s=0.2)
