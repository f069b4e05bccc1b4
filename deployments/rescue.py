"""Flow runs whose runner died are scheduled again: a Prefect automation on missing heartbeats.

A runner host that is killed or cut off leaves its runs `Running` (or `Pending`) for ever
(Prefect marks nothing by itself), and the bridge has already acknowledged the events of such a
run. Every flow run sends a heartbeat (settings prefect.heartbeat_s); when one stops for
prefect.rescue_after_s without a final state, the server's trigger puts the run back to
`Scheduled` (AwaitingRetry) and any runner serving the deployment runs it again. That is safe
because every flow re-reads the state it acts on and takes the repository's publish lease
(which the dead run's lease frees when it expires): a run rescued while it was only slow
publishes nothing twice.
"""

from __future__ import annotations

import contextlib
import datetime as dt
from collections.abc import Iterator

from prefect.automations import AutomationCore
from prefect.client.orchestration import SyncPrefectClient
from prefect.client.schemas.objects import StateType
from prefect.events.actions import ChangeFlowRunState
from prefect.events.schemas.automations import EventTrigger, Posture
from prefect.exceptions import PrefectHTTPStatusError

from service.settings import Settings

# Runners starting together settle who keeps the automation within a few reads.
ENSURE_ATTEMPTS = 5
# Raise when the trigger or action below changes, so running runners' automation is replaced.
RESCUE_DEFINITION = 2
RESCUE_AUTOMATION = "cvmfs-svc: run again what a dead runner left running"
_FINAL_EVENTS = {
    "prefect.flow-run.Completed",
    "prefect.flow-run.Failed",
    "prefect.flow-run.Cancelled",
    "prefect.flow-run.Crashed",
}


def rescue_automation(settings: Settings) -> AutomationCore:
    return AutomationCore(
        name=RESCUE_AUTOMATION,
        # Names the window and the definition's version: a runner updates the automation only
        # when this differs (see ensure_rescue_automation).
        description=(
            f"A flow run with no heartbeat for {settings.prefect.rescue_after_s} s "
            "(prefect.rescue_after_s) and no final state is scheduled again (its runner's host "
            f"died); see deployments/rescue.py, definition {RESCUE_DEFINITION}."
        ),
        trigger=EventTrigger(
            # Pending and Running too: a runner that dies between taking a run and its first
            # heartbeat leaves it Pending or Running with no heartbeat ever (seen in
            # tests/test_two_hosts.py: a run killed right after it began stayed Running).
            after={
                "prefect.flow-run.heartbeat",
                "prefect.flow-run.Pending",
                "prefect.flow-run.Running",
            },
            expect={"prefect.flow-run.heartbeat", "prefect.flow-run.Running", *_FINAL_EVENTS},
            match={"prefect.resource.id": "prefect.flow-run.*"},
            for_each={"prefect.resource.id"},
            posture=Posture.Proactive,
            threshold=1,
            within=dt.timedelta(seconds=settings.prefect.rescue_after_s),
        ),
        actions=[
            ChangeFlowRunState(
                state=StateType.SCHEDULED,
                name="AwaitingRetry",
                message="no heartbeat from its runner: scheduled again (deployments/rescue.py)",
                # Pending -> Scheduled is not an orchestrated transition. A run that was only
                # slow, or that finished as the window closed, then runs once more: its flow
                # re-reads the bucket and finds nothing left to publish.
                force=True,
            )
        ],
    )


@contextlib.contextmanager
def _deleted_meanwhile_is_fine() -> Iterator[None]:
    try:
        yield
    except PrefectHTTPStatusError as error:
        if error.response.status_code != 404:
            raise


def ensure_rescue_automation(
    client: SyncPrefectClient, settings: Settings, attempts: int = ENSURE_ATTEMPTS
) -> None:
    """Exactly one rescue automation with the current settings (runners call this at start;
    several starting at once converge on the one with the lowest id).

    Two runners that both found none both create one; the one that then sees both deletes the
    other's, which the other may be updating: that update's 404 means "look again", not
    failure (seen: bench/two_hosts.py's host b exited on it when both hosts started at once).
    """
    wanted = rescue_automation(settings)
    for attempt in range(attempts):
        existing = sorted(
            client.read_automations_by_name(RESCUE_AUTOMATION), key=lambda a: str(a.id)
        )
        if not existing:
            client.create_automation(wanted)
            continue
        keep, *extra = existing
        try:
            for duplicate in extra:
                with _deleted_meanwhile_is_fine():
                    client.delete_automation(duplicate.id)
            # An update replaces the trigger with one of a new id, and the server keeps a
            # proactive trigger's open windows by trigger id: updating at every runner start
            # would forget the runs whose runner died less than rescue_after_s before.
            if keep.description != wanted.description:
                client.update_automation(keep.id, wanted)  # the current settings' window
            return
        except PrefectHTTPStatusError as error:
            if error.response.status_code != 404 or attempt == attempts - 1:
                raise
    raise RuntimeError(f"the rescue automation did not settle after {attempts} attempts")
