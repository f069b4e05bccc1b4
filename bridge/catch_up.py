"""After the bridge lost its broker, a `reconcile` run catches up with what may be lost.

Events RGW emits while RabbitMQ is unreachable are lost unless its topic is persistent (and a
broker restart drops messages that were not yet persisted), so a reconnect schedules one full
reconcile of every repository shortly after; the scheduled reconcile stays the last resort.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from datetime import UTC, datetime

from bridge.errors import PermanentStartError
from bridge.run_requests import FlowStarter, reconcile_parameters

log = logging.getLogger("cvmfs.bridge")


class CatchUpAfterReconnect:
    """Starts one `reconcile` run `delay_s` after each reconnect (None: never)."""

    retry_delay_s = 5.0

    def __init__(
        self,
        deployment: str,
        delay_s: float | None,
        clock: Callable[[], float],
        wall_clock: Callable[[], datetime] = lambda: datetime.now(UTC),
    ) -> None:
        self.deployment = deployment
        self.delay_s = delay_s
        self.clock = clock
        self.wall_clock = wall_clock
        self._due: float | None = None
        self._key: str | None = None

    @property
    def pending(self) -> bool:
        return self._due is not None

    def reconnected(self) -> None:
        """Called when a connection is up again after a loss: schedule the catch-up."""
        if self.delay_s is None:
            return
        self._due = self.clock() + self.delay_s
        # Copies of the bridge reconnecting in the same minute share one run.
        self._key = f"reconcile-after-reconnect-{self.wall_clock():%Y%m%dT%H%M}"

    def tick(self, starter: FlowStarter) -> None:
        """Start the run when due; a failure to start it is retried, a refusal is logged."""
        if self._due is None or self.clock() < self._due:
            return
        assert self._key is not None
        try:
            run_id = starter(self.deployment, reconcile_parameters(), self._key)
        except PermanentStartError as refused:
            log.error("event=catch-up-refused deployment=%s error=%s", self.deployment, refused)
        except Exception as error:  # Prefect unreachable: try again, the events may be lost
            log.warning("event=catch-up-failed deployment=%s error=%r", self.deployment, error)
            self._due = self.clock() + self.retry_delay_s
            return
        else:
            log.info("event=catch-up-started run=%s key=%s", run_id, self._key)
        self._due = self._key = None
