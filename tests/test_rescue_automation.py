"""The rescue automation (deployments/rescue.py) is kept exactly once when runners on several
hosts start together, on the real Prefect server."""

from __future__ import annotations

import datetime as dt
import threading

import httpx
import pytest
from prefect import get_client
from prefect.events.schemas.automations import EventTrigger

from deployments.rescue import RESCUE_AUTOMATION, ensure_rescue_automation, rescue_automation
from service.settings import Settings

pytestmark = pytest.mark.stack
RUNNERS = 4


def test_runners_starting_together_leave_one_rescue_automation(prefect_server: Settings) -> None:
    # Seen in bench/two_hosts.py: two runners found none, both created one, and the one that
    # deleted the other's duplicate made the other's update fail with a 404, so its runner
    # exited. Start from duplicates, as after such a start, and let runners race over them.
    with get_client(sync_client=True) as client:
        for _ in range(2):
            client.create_automation(rescue_automation(prefect_server))
    errors: list[BaseException] = []
    start = threading.Barrier(RUNNERS)

    def runner() -> None:
        try:
            with get_client(sync_client=True) as own_client:
                start.wait()
                ensure_rescue_automation(own_client, prefect_server)
        except BaseException as error:
            errors.append(error)

    threads = [threading.Thread(target=runner) for _ in range(RUNNERS)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=120)
    assert errors == []
    with get_client(sync_client=True) as client:
        left = client.read_automations_by_name(RESCUE_AUTOMATION)
    assert len(left) == 1
    trigger = left[0].trigger
    assert isinstance(trigger, EventTrigger)
    assert trigger.within == dt.timedelta(seconds=prefect_server.prefect.rescue_after_s)

    # A runner started later with the same settings leaves the trigger as it is: an update
    # would give it a new id, and the server would forget the windows it holds open.
    def trigger_id() -> str:  # the server's id of the trigger (the client model has none)
        (automation,) = client.read_automations_by_name(RESCUE_AUTOMATION)
        url = f"{prefect_server.prefect.api_url}/automations/{automation.id}"
        return str(httpx.get(url, timeout=10).json()["trigger"]["id"])

    with get_client(sync_client=True) as client:
        before = trigger_id()
        ensure_rescue_automation(client, prefect_server)
        assert trigger_id() == before
        longer = prefect_server.model_copy(
            update={
                "prefect": prefect_server.prefect.model_copy(
                    update={"rescue_after_s": prefect_server.prefect.rescue_after_s + 30}
                )
            }
        )
        ensure_rescue_automation(client, longer)  # new settings: updated
        (updated,) = client.read_automations_by_name(RESCUE_AUTOMATION)
        assert isinstance(updated.trigger, EventTrigger)
        assert updated.trigger.within == dt.timedelta(seconds=longer.prefect.rescue_after_s)
        ensure_rescue_automation(client, prefect_server)  # back as the session's runner has it
