"""Per-subject token buckets for the API's mutating calls, kept in the registry's database.

Every API process shares the buckets (one row per subject and action class), so running several
API processes does not multiply anyone's allowance. Each check is one conditional UPDATE.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from sqlalchemy import Engine, Float, String, func, select, update
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.orm import DeclarativeBase, Mapped, Session, mapped_column

from service.schema import create_tables, open_engine


class _Base(DeclarativeBase):
    pass


class RateBucketRow(_Base):
    __tablename__ = "api_rate_buckets"

    key: Mapped[str] = mapped_column(String(320), primary_key=True)
    tokens: Mapped[float] = mapped_column(Float)
    # Seconds since the epoch (float): the refill arithmetic happens inside the UPDATE.
    updated_at: Mapped[float] = mapped_column(Float)


@dataclass(frozen=True)
class RateDecision:
    allowed: bool
    retry_after_s: int = 0


class RateLimiter:
    """`capacity` calls at once, refilled at `per_minute`; state in a SQL table."""

    def __init__(
        self,
        engine: Engine,
        capacity: int,
        per_minute: float,
        clock: Callable[[], float] = time.time,
    ) -> None:
        if capacity < 1 or per_minute <= 0:
            raise ValueError("a rate limit needs capacity >= 1 and per_minute > 0")
        self._engine = engine
        self._capacity = float(capacity)
        self._rate_per_s = per_minute / 60.0
        self._clock = clock
        create_tables(_Base.metadata, engine)

    @classmethod
    def open_url(cls, url: str, capacity: int, per_minute: float) -> RateLimiter:
        engine = open_engine(url)
        return cls(engine, capacity, per_minute)

    def close(self) -> None:
        self._engine.dispose()

    def _least(self, *values: Any) -> Any:
        # SQLite's two-argument min() is scalar; PostgreSQL spells it LEAST.
        return func.min(*values) if self._engine.dialect.name == "sqlite" else func.least(*values)

    def take(self, subject: str, action: str = "mutate") -> RateDecision:
        """Take one token from the subject's bucket, or say how long until one is there."""
        key = f"{action}:{subject}"
        now = self._clock()
        table = RateBucketRow
        refilled = self._least(
            self._capacity, table.tokens + (now - table.updated_at) * self._rate_per_s
        )
        dialect = sqlite if self._engine.dialect.name == "sqlite" else postgresql
        with Session(self._engine) as session, session.begin():
            # Twice at most: a first call for a subject may race another process's insert.
            for _ in range(2):
                taken = session.execute(
                    update(table)
                    .where(table.key == key, refilled >= 1.0)
                    .values(tokens=refilled - 1.0, updated_at=now)
                )
                if taken.rowcount:  # type: ignore[attr-defined]
                    return RateDecision(allowed=True)
                inserted = session.execute(
                    dialect.insert(table)
                    .values(key=key, tokens=self._capacity - 1.0, updated_at=now)
                    .on_conflict_do_nothing()
                    .returning(table.key)
                ).first()
                if inserted is not None:
                    return RateDecision(allowed=True)
            tokens = session.execute(select(refilled).where(table.key == key)).scalar_one()
        missing = max(1.0 - float(tokens), 0.0)
        # Less a microsecond, so float noise (10.000000001 s) does not round up a whole second.
        return RateDecision(
            allowed=False, retry_after_s=max(1, math.ceil(missing / self._rate_per_s - 1e-6))
        )
