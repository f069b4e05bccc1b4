"""What the service processes print to the console when a dependency is down."""

from __future__ import annotations

import logging
from collections.abc import Iterator

import pika
import pika.exceptions
import pytest

from service.console_logging import (
    QUIET_LIBRARIES,
    SERVICE_LOGGERS,
    SILENT_LIBRARY_LOGGERS,
    configure_console_logging,
)


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
