"""A slot of a Prefect global concurrency limit, held as a lease: acquire, renew, release.

What `prefect.concurrency.sync.concurrency(strict=True)` does, with one difference: a request
the server answers HTTP 503 is asked again after tens of milliseconds, not after Prefect's
client back-off of ~2 s.

Why: the SQLite-backed server answers the lease request 503 ("database is locked": a deferred
transaction that cannot upgrade to a write) whenever another write lands at the same moment;
with the service's rescue automation every flow-run event is such a write, so most lease
requests of a flow run's start collided (bench/lease_wait.py). The server answers at once, but
Prefect's client sleeps 2**1 s (with jitter) before asking again, and even with
PREFECT_CLIENT_MAX_RETRIES=0 it sleeps once before handing back the 503
(prefect/client/base.py, `_send_with_retry`): that sleep was most of a stock publisher's wait
on the gateway (median 1.936 s per acquisition). So the two lease calls here go through the
Prefect client's own HTTP client (its base URL, headers and TLS) without that retry loop. The
renewal while held is Prefect's (`maintain_concurrency_lease`, off the critical path). The
Prefect internals this relies on are pinned by tests/test_publish_lock.py.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any, TypeVar
from uuid import UUID

import httpx
from prefect import get_client
from prefect.client.orchestration import SyncPrefectClient
from prefect.client.schemas.objects import ConcurrencyLeaseHolder
from prefect.client.schemas.responses import ConcurrencyLimitWithLeaseResponse
from prefect.concurrency._events import (
    emit_concurrency_acquisition_events,
    emit_concurrency_release_events,
)
from prefect.concurrency._leases import maintain_concurrency_lease

from service.faults import BadInput, Transient

# A busy server is asked again after 20 ms (a SQLite write takes a few ms), doubling up to
# 0.5 s while it stays busy, instead of Prefect's 2**n s.
BUSY_FIRST_DELAY_S = 0.02
BUSY_MAX_DELAY_S = 0.5
# Statuses Prefect's client retries (base.py `send`); 423 (the limit is full) is the wait.
_BUSY_STATUSES = frozenset({408, 429, 502, 503})
_LOCKED = 423
# A connection fault (server restarting) is retried as often as Prefect's client would
# (PREFECT_CLIENT_MAX_RETRIES' default, 5), with the same short, doubling delays.
CONNECTION_ATTEMPTS = 6

# The server's routes, as Prefect's client calls them (increment_concurrency_slots_with_lease,
# release_concurrency_slots_with_lease).
INCREMENT_PATH = "/v2/concurrency_limits/increment-with-lease"
RELEASE_PATH = "/v2/concurrency_limits/decrement-with-lease"

T = TypeVar("T")


class LeaseTimeout(Transient):
    """The limit stayed full for the whole wait."""


class LimitMissing(BadInput):
    """The limit does not exist on the Prefect server (nothing was acquired)."""


def post_once(client: SyncPrefectClient, path: str, body: dict[str, Any]) -> httpx.Response:
    """One POST to the Prefect API, answered as the server answers it (no client retry)."""
    http: httpx.Client = client._client  # Prefect's httpx.Client: base URL, headers, TLS
    response = httpx.Client.send(http, http.build_request("POST", path, json=body))
    if response.status_code == 403 and "CSRF" in response.text:
        # A server with CSRF protection wants the token Prefect's own send fetches and adds
        # (with its retry loop: correct, only slower on a busy SQLite server).
        response = http.send(http.build_request("POST", path, json=body))
    response.raise_for_status()
    return response


def _retried(call: Callable[[], T], deadline: float, what: str) -> T:
    """`call()` again while the server is busy (quickly) or the limit is full (as the server's
    Retry-After says), until `deadline` (time.monotonic())."""
    delay = BUSY_FIRST_DELAY_S
    connection_faults = 0
    while True:
        try:
            return call()
        except httpx.HTTPStatusError as error:
            status = error.response.status_code
            if status == _LOCKED:
                wait_s = float(error.response.headers.get("Retry-After", 1.0))
            elif status in _BUSY_STATUSES:
                wait_s, delay = delay, min(delay * 2, BUSY_MAX_DELAY_S)
            else:
                raise
        except httpx.TransportError:
            connection_faults += 1
            if connection_faults >= CONNECTION_ATTEMPTS:
                raise
            wait_s, delay = delay, min(delay * 2, BUSY_MAX_DELAY_S)
        left = deadline - time.monotonic()
        if left <= 0:
            raise LeaseTimeout(f"{what}: still busy after the whole wait; retry later")
        time.sleep(min(wait_s, left))


def acquire_lease(
    client: SyncPrefectClient,
    name: str,
    *,
    lease_s: float,
    wait_s: float,
    holder: ConcurrencyLeaseHolder | None = None,
) -> ConcurrencyLimitWithLeaseResponse:
    """One slot of the limit `name` for `lease_s`, waiting up to `wait_s` while it is full."""

    body: dict[str, Any] = {
        "names": [name],
        "slots": 1,
        "mode": "concurrency",
        "lease_duration": lease_s,
    }
    if holder is not None:
        body["holder"] = holder.model_dump(mode="json")

    def increment() -> httpx.Response:
        return post_once(client, INCREMENT_PATH, body)

    what = f"the concurrency limit {name!r}"
    response = _retried(increment, time.monotonic() + wait_s, what)
    granted = ConcurrencyLimitWithLeaseResponse.model_validate(response.json())
    if not granted.limits:
        raise LimitMissing(
            f"{what} does not exist on the Prefect server: create it first "
            "(tasks.locks.create_publish_lock; provisioning does)"
        )
    return granted


def release_lease(client: SyncPrefectClient, lease_id: UUID, wait_s: float) -> None:
    """Free the slot now (a lease not released expires by itself after its duration)."""

    def release() -> httpx.Response:
        return post_once(client, RELEASE_PATH, {"lease_id": str(lease_id)})

    _retried(release, time.monotonic() + wait_s, f"releasing the concurrency lease {lease_id}")


@contextmanager
def held_lease(
    name: str,
    *,
    lease_s: float,
    wait_s: float,
    holder: ConcurrencyLeaseHolder | None = None,
) -> Iterator[ConcurrencyLimitWithLeaseResponse]:
    """Hold one slot of `name`: renewed in the background every 3/4 of `lease_s` (a renewal
    that fails for good stops the holder, as Prefect's strict mode does), released on exit."""
    with get_client(sync_client=True) as client:
        granted = acquire_lease(client, name, lease_s=lease_s, wait_s=wait_s, holder=holder)
        events = emit_concurrency_acquisition_events(granted.limits, 1)
        try:
            with maintain_concurrency_lease(
                granted.lease_id, lease_s, raise_on_lease_renewal_failure=True
            ):
                yield granted
        finally:
            release_lease(client, granted.lease_id, wait_s=lease_s)
            emit_concurrency_release_events(granted.limits, 1, events)
