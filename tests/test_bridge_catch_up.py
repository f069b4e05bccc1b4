"""The catch-up reconcile after a reconnect: when it starts, retries and refusals."""

from __future__ import annotations

from datetime import UTC, datetime

from bridge.catch_up import CatchUpAfterReconnect
from bridge.errors import PermanentStartError, TransientStartError
from tests.test_bridge_support import RecordingStarter


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def at_noon() -> datetime:
    return datetime(2026, 11, 28, 12, 0, 30, tzinfo=UTC)


def test_one_run_after_the_delay_with_a_per_minute_key() -> None:
    clock, starter = Clock(), RecordingStarter()
    catch_up = CatchUpAfterReconnect("reconcile/reconcile", 10.0, clock, at_noon)
    catch_up.tick(starter)
    assert starter.calls == []  # nothing before a reconnect
    catch_up.reconnected()
    clock.now += 9.9
    catch_up.tick(starter)
    assert starter.calls == []
    clock.now += 0.2
    catch_up.tick(starter)
    catch_up.tick(starter)
    assert [(c.deployment, c.parameters, c.idempotency_key) for c in starter.calls] == [
        (
            "reconcile/reconcile",
            {"req": {"repo": None, "dry_run": False}},
            "reconcile-after-reconnect-20261128T1200",
        )
    ]
    assert not catch_up.pending


def test_a_failed_start_is_retried_and_a_refusal_is_dropped() -> None:
    clock = Clock()
    starter = RecordingStarter(failures=[TransientStartError("Prefect unreachable")])
    catch_up = CatchUpAfterReconnect("reconcile/reconcile", 0.0, clock, at_noon)
    catch_up.reconnected()
    catch_up.tick(starter)
    assert starter.calls == [] and catch_up.pending
    clock.now += catch_up.retry_delay_s
    catch_up.tick(starter)
    assert len(starter.calls) == 1 and not catch_up.pending

    refusing = RecordingStarter(failures=[PermanentStartError("no such deployment")])
    catch_up.reconnected()
    catch_up.tick(refusing)
    assert refusing.calls == [] and not catch_up.pending


def test_disabled_never_starts() -> None:
    clock, starter = Clock(), RecordingStarter()
    catch_up = CatchUpAfterReconnect("reconcile/reconcile", None, clock, at_noon)
    catch_up.reconnected()
    clock.now += 3600
    catch_up.tick(starter)
    assert starter.calls == [] and not catch_up.pending
