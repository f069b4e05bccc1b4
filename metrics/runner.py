"""The deployments runner's endpoint: the sum of what its flow-run subprocesses recorded.

Each runner gets its own directory (`<multiprocess dir>/runner-<host>-<port>`), emptied when it
starts, so two runners on one host never serve (and Prometheus never sums) the same files. A
runner's restart resets its counters, which `rate()` and `increase()` take as any restart.

Every finished run leaves its value files behind (`counter_<pid>.db`, `histogram_<pid>.db`).
Left alone, a scrape reads them all (10,000 runs: 8 s and 196 MiB, bench/metrics_scrape.py), so
each scrape first folds the files of exited processes into `<type>_merged.db` and deletes them.
Only counters and histograms are recorded there (metrics/flows.py), and both are sums, so the
merged file holds exactly what the separate files did.
"""

from __future__ import annotations

import logging
import os
import socket
import threading
from collections.abc import Callable, Iterator
from pathlib import Path

from prometheus_client import CollectorRegistry
from prometheus_client.metrics_core import Metric
from prometheus_client.mmap_dict import MmapedDict
from prometheus_client.multiprocess import MultiProcessCollector
from prometheus_client.registry import Collector

from metrics.endpoint import serve_metrics
from service.settings import Settings

log = logging.getLogger("cvmfs.metrics")
MULTIPROC_ENV = "PROMETHEUS_MULTIPROC_DIR"
# The value files flow runs write (metrics/flows.py records no gauges).
SUMMED_TYPES = ("counter", "histogram")
MERGED = "merged"


def runner_metrics_dir(settings: Settings) -> Path:
    host = socket.gethostname() or "localhost"
    return settings.metrics_multiprocess_dir / f"runner-{host}-{settings.metrics.runner_port}"


def empty_metrics_dir(directory: Path) -> None:
    """Create `directory`, or remove the value files a previous runner left in it."""
    directory.mkdir(parents=True, exist_ok=True)
    for stale in directory.glob("*.db"):
        stale.unlink(missing_ok=True)


def process_alive(pid: int) -> bool:
    """True while `pid` exists (a child not yet reaped counts as alive: merged later)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # someone else's process reusing the number: not ours to merge yet
    return True


def merge_exited_processes(directory: Path, alive: Callable[[int], bool] = process_alive) -> int:
    """Add the values of every exited process's files into `<type>_merged.db`, then delete
    those files; returns how many were merged. Files of live processes are left alone."""
    merged = 0
    for typ in SUMMED_TYPES:
        dead = []
        for path in directory.glob(f"{typ}_*.db"):
            pid_text = path.stem.split("_", 1)[1]
            if pid_text.isdigit() and not alive(int(pid_text)):
                dead.append(path)
        if not dead:
            continue
        target = MmapedDict(str(directory / f"{typ}_{MERGED}.db"))
        try:
            for path in dead:
                for key, value, _timestamp, _pos in MmapedDict.read_all_values_from_file(str(path)):
                    total, _ = target.read_value(key)
                    target.write_value(key, total + value, 0.0)
        finally:
            target.close()
        for path in dead:  # after the merged file holds their values
            path.unlink()
        merged += len(dead)
    # A gauge of an exited process means nothing (libraries may make some; ours do not):
    # drop its file, as prometheus-client's mark_process_dead does for live gauges.
    for path in directory.glob("gauge_*_*.db"):
        pid_text = path.stem.rsplit("_", 1)[1]
        if pid_text.isdigit() and not alive(int(pid_text)):
            path.unlink()
    return merged


class RunnerCollector(Collector):
    """Merges exited runs' files, then reports the sum of all files, one scrape at a time
    (so no scrape sees a value both in a run's file and in the merged one)."""

    def __init__(self, directory: Path) -> None:
        self._directory = directory
        self._lock = threading.Lock()

    def collect(self) -> Iterator[Metric]:
        with self._lock:
            count = merge_exited_processes(self._directory)
            if count:
                log.debug("event=runner-metrics-merged files=%d", count)
            yield from MultiProcessCollector(None, path=str(self._directory)).collect()


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
    registry.register(RunnerCollector(directory))
    os.environ[MULTIPROC_ENV] = str(directory)
    log.info("event=runner-metrics-dir path=%s", directory)
    return directory
