"""The deployments runner's endpoint: the sum of what its flow-run subprocesses recorded.

Each runner gets its own directory (`<multiprocess dir>/runner-<host>-<port>`), emptied when it
starts, so two runners on one host never serve (and Prometheus never sums) the same files. A
runner's restart resets its counters, which `rate()` and `increase()` take as any restart.
"""

from __future__ import annotations

import logging
import os
import socket
from pathlib import Path

from prometheus_client import CollectorRegistry
from prometheus_client.multiprocess import MultiProcessCollector

from metrics.endpoint import serve_metrics
from service.settings import Settings

log = logging.getLogger("cvmfs.metrics")
MULTIPROC_ENV = "PROMETHEUS_MULTIPROC_DIR"


def runner_metrics_dir(settings: Settings) -> Path:
    host = socket.gethostname() or "localhost"
    return settings.metrics_multiprocess_dir / f"runner-{host}-{settings.metrics.runner_port}"


def empty_metrics_dir(directory: Path) -> None:
    """Create `directory`, or remove the value files a previous runner left in it."""
    directory.mkdir(parents=True, exist_ok=True)
    for stale in directory.glob("*.db"):
        stale.unlink(missing_ok=True)


def serve_runner_metrics(settings: Settings) -> Path | None:
    """Serve the runner's endpoint and make its future children record into its directory.

    Call before the runner starts flow runs (they inherit the environment). Returns the
    directory, or None when metrics are off or the port is taken (children then keep their
    values to themselves, and the log says so).
    """
    if not settings.metrics.enabled:
        return None
    directory = runner_metrics_dir(settings)
    registry = CollectorRegistry()
    # Bound first: a second runner with the same port must not empty or share the first
    # one's directory.
    port = settings.metrics.runner_port
    if not serve_metrics(registry, port, "runner", "runner_port", settings.metrics.bind_host):
        return None
    empty_metrics_dir(directory)
    MultiProcessCollector(registry, path=str(directory))
    os.environ[MULTIPROC_ENV] = str(directory)
    log.info("event=runner-metrics-dir path=%s", directory)
    return directory
