"""What a runner's /metrics costs as flow runs accumulate (prometheus-client multiprocess mode).

Every flow run is a process that leaves its value files (`histogram_<pid>.db`,
`counter_<pid>.db`) in the runner's directory until the runner restarts; each scrape reads them
all. This writes the files K finished runs leave (the same metrics and labels as
metrics/flows.py records in a sync run: one latency observation per key, a publish, a lease
wait), then times a scrape (text exposition) and reports the directory's size on disk.
`--plain` scrapes with prometheus-client's MultiProcessCollector as is (every file read at
every scrape); the default scrapes as the runner does (metrics/runner.py RunnerCollector: the
first scrape merges the files of exited runs into one per type, later scrapes read that). No
stack needed:

    .venv/bin/python -m bench.metrics_scrape --runs 100 1000 5000 10000 [--plain]
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


def _scrape_s(directory: Path, plain: bool) -> tuple[float, float, int]:
    """(first scrape, median of the next ones, exposition bytes)."""
    from prometheus_client import CollectorRegistry, generate_latest
    from prometheus_client.multiprocess import MultiProcessCollector

    from metrics.runner import RunnerCollector

    registry = CollectorRegistry()
    if plain:
        MultiProcessCollector(registry, path=str(directory))
    else:
        registry.register(RunnerCollector(directory))
    times = []
    size = 0
    for _ in range(SCRAPES + 1):
        began = time.perf_counter()
        size = len(generate_latest(registry))
        times.append(time.perf_counter() - began)
    return times[0], statistics.median(times[1:]), size


def _disk_kib(directory: Path) -> int:
    out = subprocess.run(["du", "-sk", str(directory)], capture_output=True, text=True, check=True)
    return int(out.stdout.split()[0])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--runs", type=int, nargs="+", default=[100, 1000, 5000])
    parser.add_argument("--plain", action="store_true", help="no merging of exited runs' files")
    args = parser.parse_args()
    directory = Path(tempfile.mkdtemp(prefix="cvmfs-metrics-bench-"))
    os.environ["PROMETHEUS_MULTIPROC_DIR"] = str(directory)  # before prometheus_client loads
    try:
        written = 0
        mode = "plain MultiProcessCollector" if args.plain else "RunnerCollector (merging)"
        print(f"scrapes through {mode}")
        print(
            f"{'runs':>7} {'new files':>9} {'1st scrape':>10} {'next p50':>9} "
            f"{'exposition':>10} {'files after':>11} {'disk':>10}"
        )
        for target in sorted(args.runs):
            _write_runs(directory, 1_000_000 + written, target - written)
            new_files = len(list(directory.iterdir()))
            written = target
            first_s, median_s, size = _scrape_s(directory, args.plain)
            files = len(list(directory.iterdir()))
            print(
                f"{target:>7} {new_files:>9} {first_s * 1000:>7.0f} ms {median_s * 1000:>6.0f} ms "
                f"{size:>8} B {files:>11} {_disk_kib(directory) / 1024:>6.1f} MiB",
                flush=True,
            )
    finally:
        shutil.rmtree(directory, ignore_errors=True)


if __name__ == "__main__":
    main()
