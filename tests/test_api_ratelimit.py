"""The API's per-subject token buckets in the registry database (SQLite and PostgreSQL).

A controllable clock replaces time so refills are exact; two limiters on one database stand for
two API processes.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
from sqlalchemy import create_engine, text

from service.api.ratelimit import RateLimiter
from tests.test_repositories import postgres_socket_dir  # noqa: F401 - fixture used below


class Clock:
    def __init__(self) -> None:
        self.now = 1_800_000_000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture(params=["sqlite", pytest.param("postgresql", marks=pytest.mark.slow)])
def database_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'registry.sqlite3'}"
    socket_dir: Path = request.getfixturevalue("postgres_socket_dir")
    database = f"t_{uuid.uuid4().hex[:12]}"
    admin = create_engine(
        f"postgresql+psycopg://postgres@/postgres?host={socket_dir}", isolation_level="AUTOCOMMIT"
    )
    with admin.connect() as connection:
        connection.execute(text(f"CREATE DATABASE {database}"))
    admin.dispose()
    return f"postgresql+psycopg://postgres@/{database}?host={socket_dir}"


@pytest.fixture
def clock() -> Clock:
    return Clock()


def limiter(url: str, clock: Clock, capacity: int, per_minute: float) -> RateLimiter:
    opened = RateLimiter.open_url(url, capacity, per_minute)
    opened._clock = clock  # the test's clock instead of time.time
    return opened


@pytest.fixture
def limiters(database_url: str, clock: Clock) -> Iterator[tuple[RateLimiter, RateLimiter]]:
    first = limiter(database_url, clock, capacity=3, per_minute=60.0)
    second = limiter(database_url, clock, capacity=3, per_minute=60.0)
    yield first, second
    first.close()
    second.close()


def test_a_burst_then_one_call_per_refill(
    limiters: tuple[RateLimiter, RateLimiter], clock: Clock
) -> None:
    bucket, _ = limiters
    assert [bucket.take("alice").allowed for _ in range(4)] == [True, True, True, False]
    denied = bucket.take("alice")
    assert denied.retry_after_s == 1  # 60 per minute: one token a second
    clock.now += 1.0
    assert bucket.take("alice").allowed
    assert not bucket.take("alice").allowed
    clock.now += 3600  # refills stop at the burst size
    assert [bucket.take("alice").allowed for _ in range(4)] == [True, True, True, False]


def test_two_api_processes_share_each_subjects_bucket(
    limiters: tuple[RateLimiter, RateLimiter],
) -> None:
    first, second = limiters
    assert first.take("bob").allowed and second.take("bob").allowed
    assert first.take("bob").allowed
    assert not second.take("bob").allowed
    assert not first.take("bob").allowed
    # Other subjects and other action classes have buckets of their own.
    assert second.take("carol").allowed
    assert first.take("bob", action="other").allowed


def test_retry_after_says_when_the_next_token_comes(database_url: str, clock: Clock) -> None:
    slow = limiter(database_url, clock, capacity=1, per_minute=2.0)
    try:
        assert slow.take("dave").allowed
        assert slow.take("dave").retry_after_s == 30
        clock.now += 20
        assert slow.take("dave").retry_after_s == 10
        clock.now += 10
        assert slow.take("dave").allowed
    finally:
        slow.close()


def test_a_limit_needs_a_positive_size_and_rate(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="capacity"):
        RateLimiter.open_url(f"sqlite:///{tmp_path / 'r.sqlite3'}", 0, 1.0)
