"""A repository's publish lock: a Prefect global concurrency limit of one slot.

The limit lives on the Prefect server, so every worker on every host sees it; the slot is a
lease renewed while held, so a holder that dies frees the repository after `LEASE_S`. Every
writer takes it here (sync, unpack, gateway commits, tags, rollbacks), through
tasks/concurrency_lease.py (a busy SQLite server costs tens of ms there, not Prefect's 2 s).
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from contextlib import contextmanager
from uuid import UUID

from prefect import get_client, task
from prefect.client.schemas.objects import ConcurrencyLeaseHolder
from prefect.runtime import flow_run as runtime_flow_run

from metrics.flows import flow_metrics
from service.faults import retry_if_transient
from tasks.concurrency_lease import held_lease

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
    """Hold the repository's publish lock; fails if the lock was never created
    (`LimitMissing`) or stays taken for `wait_s` (`LeaseTimeout`, transient).

    The wait for it is recorded per flow (`cvmfs_lease_wait_seconds`); the lease names the
    flow run holding it.
    """
    asked = time.monotonic()
    run_id = runtime_flow_run.id
    holder = ConcurrencyLeaseHolder(type="flow_run", id=UUID(run_id)) if run_id else None
    with held_lease(publish_lock_name(fqrn), lease_s=LEASE_S, wait_s=wait_s, holder=holder):
        flow = runtime_flow_run.flow_name or "none"
        flow_metrics().lease_wait.labels(flow).observe(time.monotonic() - asked)
        yield
