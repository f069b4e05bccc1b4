"""Console logging of the bridge, API and gateway processes (what `./svc up` shows): the
service's own loggers at INFO, libraries at WARNING.

Without it the bridge printed pika's connection chatter (a dozen lines per connect and close)
and one httpx line per Prefect API call, burying its own `event=...` lines.
"""

from __future__ import annotations

import logging

# Loggers of this project: named "cvmfs.*", or by module (`logging.getLogger(__name__)`).
SERVICE_LOGGERS = (
    "cvmfs",
    "service",
    "bridge",
    "gateway",
    "flows",
    "tasks",
    "images",
    "deployments",
)
# Libraries that log every connection step or request at INFO; their warnings still show.
QUIET_LIBRARIES = ("pika", "httpx", "httpcore", "botocore", "boto3", "s3transfer", "urllib3")
# pika's connect path logs a failed connection as five ERROR lines and a traceback, every
# reconnect attempt (49 lines in 40 s of RabbitMQ down on `./svc up`); the bridge logs the
# same failure as one `event=broker-lost` line with the retry delay, so these stay silent.
SILENT_LIBRARY_LOGGERS = (
    "pika.adapters.utils.connection_workflow",
    "pika.adapters.utils.io_services_utils",
    "pika.adapters.blocking_connection",
)
CONSOLE_FORMAT = "%(asctime)s %(levelname)s %(name)s %(message)s"


def configure_console_logging(level: int = logging.INFO) -> None:
    """Root at WARNING with one console handler; the service's loggers at `level`."""
    root = logging.getLogger()
    if not root.handlers:
        logging.basicConfig(format=CONSOLE_FORMAT)
    root.setLevel(logging.WARNING)
    for name in SERVICE_LOGGERS:
        logging.getLogger(name).setLevel(level)
    for name in QUIET_LIBRARIES:
        logging.getLogger(name).setLevel(logging.WARNING)
    for name in SILENT_LIBRARY_LOGGERS:
        logging.getLogger(name).setLevel(logging.CRITICAL)
