"""How long a repository's publish lock takes to acquire in consecutive flow runs of one process.

Usage: .venv/bin/python -m bench.lease_wait [--runs N] [--pause S]
Against the Prefect server of the service's settings (a running `./svc stack up`; set
`CVMFS_SVC_POSTGRES__ENABLED=true` for the PostgreSQL layout). A long-lived process that runs
flows one after another is what the gateway is (every commit is a `gateway-commit` run);
a `sync` run is a process of its own, whose first acquisition this also prints.
"""

from __future__ import annotations

import argparse
import statistics
import time

from service.prefect_env import apply_prefect_environment
from service.settings import Settings

LOCK = "bench.lease-wait.example.org"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=8)
    parser.add_argument("--pause", type=float, default=1.0, help="seconds between runs")
    args = parser.parse_args()
    settings = Settings.load()
    apply_prefect_environment(settings)

    from prefect import flow  # after the environment: Prefect reads it at import

    from tasks.locks import create_publish_lock, repository_lease

    @flow(name="bench-lease-wait")
    def acquire_once() -> float:
        asked = time.perf_counter()
        with repository_lease(LOCK):
            return time.perf_counter() - asked

    create_publish_lock(LOCK)
    waits = []
    for _ in range(args.runs):
        waits.append(acquire_once())
        time.sleep(args.pause)
    database = "PostgreSQL" if settings.prefect_database_url else "SQLite"
    print(f"prefect server {settings.prefect.api_url} ({database})")
    print("lease waits (s): " + " ".join(f"{wait:.3f}" for wait in waits))
    print(f"first {waits[0]:.3f} s; later runs: median {statistics.median(waits[1:]):.3f} s")


if __name__ == "__main__":
    main()
