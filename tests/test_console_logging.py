"""What the service processes print to the console when a dependency is down."""

from __future__ import annotations

import logging
from collections.abc import Iterator
from pathlib import Path

import pika
import pika.exceptions
import pytest
from prefect.settings import PREFECT_API_URL, PREFECT_CLIENT_MAX_RETRIES, temporary_settings

from gateway.orphans import OrphanedCommitSweeper
from service.console_logging import (
    QUIET_LIBRARIES,
    SERVICE_LOGGERS,
    SILENT_LIBRARY_LOGGERS,
    configure_console_logging,
)
from service.settings import Settings


@pytest.fixture
def console_levels() -> Iterator[None]:
    """Give back the loggers' levels the configuration changes (it is process-wide)."""
    names = ("", *SERVICE_LOGGERS, *QUIET_LIBRARIES, *SILENT_LIBRARY_LOGGERS)
    levels = {name: logging.getLogger(name).level for name in names}
    yield
    for name, level in levels.items():
        logging.getLogger(name).setLevel(level)


def test_a_refused_broker_connection_is_not_logged_by_pika(
    console_levels: None, caplog: pytest.LogCaptureFixture
) -> None:
    """A real refused connection (nothing listens on port 9): pika logged five ERROR lines and
    a traceback per attempt; the bridge's own `event=broker-lost` line says it once."""
    configure_console_logging()
    with pytest.raises(pika.exceptions.AMQPConnectionError):
        pika.BlockingConnection(
            pika.ConnectionParameters(host="127.0.0.1", port=9, connection_attempts=1)
        )
    pika_lines = [r for r in caplog.records if r.name.startswith("pika")]
    assert pika_lines == [], [r.getMessage() for r in pika_lines]
    assert logging.getLogger("pika").isEnabledFor(logging.WARNING)  # other warnings still show


def test_a_sweep_while_prefect_is_down_is_one_line(
    caplog: pytest.LogCaptureFixture, tmp_path: Path
) -> None:
    """The gateway's orphan sweep against a Prefect API where nothing listens (port 9): one
    warning naming the error, no traceback (it printed ~25 lines a minute in an outage)."""
    settings = Settings(data_dir=tmp_path)
    sweeper = OrphanedCommitSweeper(settings)
    sweeper._stop.set()  # one sweep, then _run returns instead of waiting for the next
    updates = {PREFECT_API_URL: "http://127.0.0.1:9/api", PREFECT_CLIENT_MAX_RETRIES: 0}
    with temporary_settings(updates=updates), caplog.at_level(logging.WARNING):
        sweeper._run()
    [line] = [r for r in caplog.records if r.name == "cvmfs.gateway"]
    assert "sweep for orphaned gateway commits failed (ConnectError" in line.getMessage()
    assert not line.exc_info  # no traceback
