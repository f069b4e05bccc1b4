"""The repository publish lock (tasks/locks.py, tasks/concurrency_lease.py) on the test Prefect
server: strict refusal of a missing limit, waiting for a held lock and timing out, renewal while
held, release on exit, and a busy server (HTTP 503) asked again at once; plus pins of the
Prefect internals the lease code relies on.
"""

from __future__ import annotations

import inspect
import threading
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager

import httpx
import pytest
from prefect import get_client
from prefect.client.orchestration import SyncPrefectClient
from prefect.concurrency import _events, _leases

from service.settings import Settings
from tasks.concurrency_lease import (
    INCREMENT_PATH,
    LeaseTimeout,
    LimitMissing,
    acquire_lease,
    release_lease,
)
from tasks.locks import LEASE_S, create_publish_lock, publish_lock_name, repository_lease

pytestmark = [pytest.mark.stack]


@pytest.fixture
def fqrn(prefect_server: Settings) -> str:
    name = f"lock-{uuid.uuid4().hex[:8]}.test.example.org"
    create_publish_lock(name)
    return name


def _slots_in_use(fqrn: str) -> int:
    with get_client(sync_client=True) as client:
        return client.read_global_concurrency_limit_by_name(publish_lock_name(fqrn)).active_slots


def _renewal_threads() -> list[str]:
    return [t.name for t in threading.enumerate() if t.name.startswith("concurrency-lease-renewal")]


def test_a_lock_never_created_is_refused(prefect_server: Settings) -> None:
    with (
        pytest.raises(LimitMissing, match="does not exist on the Prefect server"),
        repository_lease(f"never-created-{uuid.uuid4().hex[:8]}.example.org", wait_s=5),
    ):
        pytest.fail("acquired a lock that does not exist")


def test_the_lock_is_renewed_while_held_released_on_exit_and_waited_for(fqrn: str) -> None:
    with repository_lease(fqrn):
        assert _slots_in_use(fqrn) == 1
        assert len(_renewal_threads()) == 1  # Prefect's renewal loop for this lease
        # a second holder waits, and gives up after its wait
        with pytest.raises(LeaseTimeout, match="still busy"), repository_lease(fqrn, wait_s=1.5):
            pytest.fail("two holders at once")
    assert _slots_in_use(fqrn) == 0
    assert _renewal_threads() == []

    # a waiter gets the lock as soon as the holder lets go (the server's 423 and Retry-After)
    held = threading.Event()
    let_go = threading.Event()

    def hold() -> None:
        with repository_lease(fqrn):
            held.set()
            let_go.wait(30)

    holder = threading.Thread(target=hold)
    holder.start()
    try:
        assert held.wait(30)
        threading.Timer(0.5, let_go.set).start()
        with repository_lease(fqrn, wait_s=30):
            assert let_go.is_set()
            assert _slots_in_use(fqrn) == 1
    finally:
        let_go.set()
        holder.join(30)
    assert _slots_in_use(fqrn) == 0


class _BusyOnce(httpx.BaseTransport):
    """Test double for the one fault that cannot be caused on demand: the SQLite server's 503
    ("database is locked") to a lease request, which the real server gives only when another
    write collides with it (bench/lease_wait.py). The first increment is answered 503 here (or
    `first`); everything else goes to the real test server."""

    def __init__(self, first: httpx.Response | None = None) -> None:
        self._real = httpx.HTTPTransport()
        self._first = first or httpx.Response(503, json={"exception_message": "Unavailable"})
        self.increments: list[float] = []

    def handle_request(self, request: httpx.Request) -> httpx.Response:
        if request.url.path.endswith(INCREMENT_PATH):
            self.increments.append(time.monotonic())
            if len(self.increments) == 1:
                return self._first
        return self._real.handle_request(request)


@contextmanager
def _client_through(transport: _BusyOnce) -> Iterator[SyncPrefectClient]:
    with get_client(sync_client=True, httpx_settings={"transport": transport}) as client:
        yield client


@pytest.fixture
def busy_once() -> Iterator[tuple[SyncPrefectClient, _BusyOnce]]:
    transport = _BusyOnce()
    with _client_through(transport) as client:
        yield client, transport


def test_a_server_wanting_a_csrf_token_gets_it(fqrn: str) -> None:
    """The test server has CSRF protection off (the stack's default); its refusal when on is
    played by the double: the lease request then goes through Prefect's own send, which asks
    the real server for a token (and learns it needs none)."""
    transport = _BusyOnce(httpx.Response(403, json={"detail": "Invalid CSRF token or client"}))
    with _client_through(transport) as client:
        granted = acquire_lease(client, publish_lock_name(fqrn), lease_s=LEASE_S, wait_s=30)
        assert len(transport.increments) == 2
        assert _slots_in_use(fqrn) == 1
        release_lease(client, granted.lease_id, wait_s=30)
    assert _slots_in_use(fqrn) == 0


def test_a_busy_server_is_asked_again_at_once(
    fqrn: str, busy_once: tuple[SyncPrefectClient, _BusyOnce]
) -> None:
    client, transport = busy_once
    granted = acquire_lease(client, publish_lock_name(fqrn), lease_s=LEASE_S, wait_s=30)
    try:
        assert [limit.name for limit in granted.limits] == [publish_lock_name(fqrn)]
        assert len(transport.increments) == 2
        # asked again after BUSY_FIRST_DELAY_S (20 ms), not after Prefect's ~2 s
        assert transport.increments[1] - transport.increments[0] < 1.0
    finally:
        release_lease(client, granted.lease_id, wait_s=30)
    assert _slots_in_use(fqrn) == 0


def test_pin_prefect_client_backs_off_seconds_on_503(
    fqrn: str, busy_once: tuple[SyncPrefectClient, _BusyOnce]
) -> None:
    """Why tasks/concurrency_lease.py posts past Prefect's client: the client sleeps ~2 s
    after a 503 before asking again. If this fails, Prefect changed its back-off and
    `post_once` may go back to `client.increment_concurrency_slots_with_lease`."""
    client, transport = busy_once
    response = client.increment_concurrency_slots_with_lease(
        names=[publish_lock_name(fqrn)], slots=1, mode="concurrency", lease_duration=LEASE_S
    )
    release_lease(client, uuid.UUID(response.json()["lease_id"]), wait_s=30)
    assert len(transport.increments) == 2
    assert transport.increments[1] - transport.increments[0] >= 1.0


def test_pin_prefect_internals_the_lease_code_uses(prefect_server: Settings) -> None:
    """tasks/concurrency_lease.py drives these; a Prefect upgrade that changes them fails
    here rather than in a publish."""
    with get_client(sync_client=True) as client:
        assert isinstance(client._client, httpx.Client)
        assert str(client._client.base_url).rstrip("/") == prefect_server.prefect.api_url
    renew = inspect.signature(_leases.maintain_concurrency_lease).parameters
    assert list(renew)[:2] == ["lease_id", "lease_duration"]
    assert "raise_on_lease_renewal_failure" in renew
    assert list(inspect.signature(_events.emit_concurrency_acquisition_events).parameters) == [
        "limits",
        "occupy",
    ]
    assert list(inspect.signature(_events.emit_concurrency_release_events).parameters) == [
        "limits",
        "occupy",
        "events",
    ]
