"""How long a repository's publish lock takes to acquire in consecutive flow runs of one process.

Usage: .venv/bin/python -m bench.lease_wait [--runs N] [--pause S] [--offset N [--postgres]]

A long-lived process that runs flows one after another is what the gateway is (every commit is
a `gateway-commit` run). Each round runs two flows, alternating which goes first: one takes
the lock as the service does (`tasks.locks.repository_lease`), the other with Prefect's own
`concurrency(strict=True, lease_duration=60)`, which the service used before (its client
retries a 503 from a busy SQLite server after ~2 s). Prints each one's waits and medians.
The service's rescue automation is made sure of first (deployments/rescue.py), as runners do.

Without `--offset`: against the Prefect server of the service's settings (a running `./svc
stack up`; `CVMFS_SVC_POSTGRES__ENABLED=true` for the PostgreSQL layout). With `--offset N`:
starts its own Prefect server (SQLite; PostgreSQL with `--postgres`) on the dev ports + N in a
temporary directory, holding that test stack's lock, and stops it at the end.
"""

from __future__ import annotations

import argparse
import os
import statistics
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager

from service.prefect_env import apply_prefect_environment
from service.settings import Settings

LOCK = "bench.lease-wait.example.org"


@contextmanager
def own_stack(offset: int, postgres: bool) -> Iterator[Settings]:
    """A Prefect server (and PostgreSQL) of its own on the test ports + `offset`."""
    from bench.private_stack import private_data_dir, running

    with private_data_dir(offset, "bench-lease") as (settings, _data_dir):
        settings = settings.model_copy(
            update={"postgres": settings.postgres.model_copy(update={"enabled": postgres})}
        )
        components = ("postgres", "prefect") if postgres else ("prefect",)
        with running(settings, components) as settings:
            yield settings


def measure(settings: Settings, runs: int, pause_s: float) -> None:
    apply_prefect_environment(settings)
    os.environ["PREFECT_LOGGING_LEVEL"] = "WARNING"

    from prefect import flow, get_client  # after the environment: Prefect reads it at import
    from prefect.concurrency.sync import concurrency

    from deployments.rescue import ensure_rescue_automation
    from tasks.locks import LEASE_S, create_publish_lock, publish_lock_name, repository_lease

    @flow(name="bench-lease-wait")
    def service_lease() -> float:
        asked = time.perf_counter()
        with repository_lease(LOCK):
            return time.perf_counter() - asked

    @flow(name="bench-lease-wait-prefect")
    def prefect_concurrency() -> float:
        asked = time.perf_counter()
        with concurrency(publish_lock_name(LOCK), occupy=1, lease_duration=LEASE_S, strict=True):
            return time.perf_counter() - asked

    create_publish_lock(LOCK)
    # As every runner does at start: its proactive trigger makes the server write on each
    # flow-run event, which is what collides with the lease request on SQLite (without it a
    # fresh server answered Prefect's way in ~0.01 s too).
    with get_client(sync_client=True) as client:
        ensure_rescue_automation(client, settings)
    ways: dict[str, Callable[[], float]] = {
        "repository_lease": service_lease,
        "prefect concurrency()": prefect_concurrency,
    }
    waits: dict[str, list[float]] = {name: [] for name in ways}
    for round_ in range(runs):
        order = list(ways) if round_ % 2 == 0 else list(ways)[::-1]
        for name in order:
            waits[name].append(ways[name]())
            time.sleep(pause_s)
    database = "PostgreSQL" if settings.prefect_database_url else "SQLite"
    print(f"prefect server {settings.prefect.api_url} ({database}), {runs} rounds A B / B A")
    for name, values in waits.items():
        print(f"{name}: lease waits (s): " + " ".join(f"{wait:.3f}" for wait in values))
        print(
            f"{name}: first {values[0]:.3f} s; later runs: median "
            f"{statistics.median(values[1:]):.3f} s, max {max(values[1:]):.3f} s"
        )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=8, help="rounds (each runs both ways)")
    parser.add_argument("--pause", type=float, default=1.0, help="seconds between runs")
    parser.add_argument("--offset", type=int, help="start an own stack on dev ports + N")
    parser.add_argument("--postgres", action="store_true", help="with --offset: PostgreSQL")
    args = parser.parse_args()
    if args.offset is None:
        measure(Settings.load(), args.runs, args.pause)
        return
    with own_stack(args.offset, args.postgres) as settings:
        measure(settings, args.runs, args.pause)


if __name__ == "__main__":
    main()
