"""A repository's publish lock: a Prefect global concurrency limit of one slot.

The limit lives on the Prefect server, so every worker on every host sees it; the slot is a
lease renewed while held, so a holder that dies frees the repository after `LEASE_S`.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from contextlib import contextmanager

from prefect import get_client, task
from prefect.concurrency.sync import concurrency
from prefect.runtime import flow_run as runtime_flow_run

from metrics.flows import flow_metrics
from service.faults import retry_if_transient

# The shortest lease the server accepts; renewed in the background while the holder lives
# (prefect-notes §4), so a crashed publisher blocks its repository for about a minute.
LEASE_S = 60
WAIT_FOR_LOCK_S = 1800


def publish_lock_name(fqrn: str) -> str:
    return f"repo:{fqrn}"


def create_publish_lock(fqrn: str) -> None:
    """Create the limit; it must exist before any publish (strict acquisition refuses else)."""
    with get_client(sync_client=True) as client:
        client.upsert_global_concurrency_limit_by_name(publish_lock_name(fqrn), limit=1)


@task(
    name="create publish lock",
    retries=3,
    retry_delay_seconds=[1, 5, 15],
    retry_condition_fn=retry_if_transient,
)
def ensure_publish_lock(fqrn: str) -> str:
    create_publish_lock(fqrn)
    return publish_lock_name(fqrn)


@contextmanager
def repository_lease(fqrn: str, wait_s: float = WAIT_FOR_LOCK_S) -> Iterator[None]:
    """Hold the repository's publish lock; fails if the lock was never created.

    The wait for it is recorded per flow (`cvmfs_lease_wait_seconds`).
    """
    asked = time.monotonic()
    with concurrency(
        publish_lock_name(fqrn),
        occupy=1,
        timeout_seconds=wait_s,
        lease_duration=LEASE_S,
        strict=True,
    ):
        flow = runtime_flow_run.flow_name or "none"
        flow_metrics().lease_wait.labels(flow).observe(time.monotonic() - asked)
        yield
