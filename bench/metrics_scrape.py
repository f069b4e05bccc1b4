"""What a runner's /metrics costs as flow runs accumulate (prometheus-client multiprocess mode).

Every flow run is a process that leaves its value files (`histogram_<pid>.db`,
`counter_<pid>.db`) in the runner's directory until the runner restarts; each scrape reads them
all. This writes the files K finished runs leave (the same metrics and labels as
metrics/flows.py records in a sync run: one latency observation per key, a publish, a lease
wait), then times a scrape (MultiProcessCollector + text exposition) and reports the
directory's size on disk. No stack needed:

    .venv/bin/python -m bench.metrics_scrape --runs 100 1000 5000 20000
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import subprocess
import tempfile
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

SCRAPES = 5


def _write_runs(directory: Path, first_pid: int, runs: int) -> None:
    from prometheus_client import values

    from metrics.flows import FlowMetrics

    now = datetime.now(UTC)
    for n in range(runs):
        # A fresh value class per fake process: one class for all would re-open every value
        # it ever made at each "pid change" (quadratic), which no real flow run does.
        pid = first_pid + n
        values.ValueClass = values.MultiProcessValue(lambda pid=pid: pid)
        metrics = FlowMetrics()  # what one flow-run process creates
        metrics.observe_visible([now - timedelta(seconds=3 + n % 7)] * 3, now)
        metrics.publish_duration.labels("sync").observe(0.4)
        metrics.publish_bytes.labels("sync").observe(4096)
        metrics.publish_changes.labels("sync").observe(3)
        metrics.lease_wait.labels("sync").observe(0.05)
        values.close_all_multiprocess_files()  # the process exits: its files are closed, and stay


def _scrape_s(directory: Path) -> tuple[float, int]:
    from prometheus_client import CollectorRegistry, generate_latest
    from prometheus_client.multiprocess import MultiProcessCollector

    times = []
    size = 0
    for _ in range(SCRAPES):
        registry = CollectorRegistry()
        MultiProcessCollector(registry, path=str(directory))
        began = time.perf_counter()
        size = len(generate_latest(registry))
        times.append(time.perf_counter() - began)
    return statistics.median(times), size


def _disk_kib(directory: Path) -> int:
    out = subprocess.run(["du", "-sk", str(directory)], capture_output=True, text=True, check=True)
    return int(out.stdout.split()[0])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--runs", type=int, nargs="+", default=[100, 1000, 5000])
    args = parser.parse_args()
    directory = Path(tempfile.mkdtemp(prefix="cvmfs-metrics-bench-"))
    os.environ["PROMETHEUS_MULTIPROC_DIR"] = str(directory)  # before prometheus_client loads
    try:
        written = 0
        print(f"{'runs':>7} {'files':>7} {'scrape p50':>11} {'exposition':>11} {'disk':>10}")
        for target in sorted(args.runs):
            _write_runs(directory, 1_000_000 + written, target - written)
            written = target
            median_s, size = _scrape_s(directory)
            files = len(list(directory.iterdir()))
            print(
                f"{target:>7} {files:>7} {median_s * 1000:>9.0f} ms {size:>9} B "
                f"{_disk_kib(directory) / 1024:>7.1f} MiB",
                flush=True,
            )
    finally:
        shutil.rmtree(directory, ignore_errors=True)


if __name__ == "__main__":
    main()
