"""Opening the service's shared database and creating its tables, safely from several processes.

Every store (registry, gateway leases, rate limits, dashboard sessions) creates its missing
tables when it opens. On PostgreSQL two first starts at once raced in CREATE TABLE and one failed
with a unique violation in pg_type (seen in tests/test_two_hosts.py), so there the creation runs
under a transaction-scoped advisory lock.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from sqlalchemy import Engine, MetaData, create_engine, event, text

# Any constant shared by every process of the service: "cvmfs" in ASCII.
SCHEMA_LOCK_ID = 0x63766D6673


def open_engine(url: str) -> Engine:
    """An engine for `url`, configured alike for every store that shares the database.

    SQLite: the file's directory is made; WAL lets readers run beside the writer, busy_timeout
    makes a second writer wait for the lock instead of failing at once with "database is
    locked", and foreign keys are enforced (SQLite leaves them off by default).
    """
    if url.startswith("sqlite:///"):
        Path(url.removeprefix("sqlite:///")).parent.mkdir(parents=True, exist_ok=True)
    engine = create_engine(url, pool_pre_ping=True)
    if engine.dialect.name == "sqlite":

        @event.listens_for(engine, "connect")
        def _on_connect(dbapi_connection: Any, _record: Any) -> None:
            cursor = dbapi_connection.cursor()
            cursor.execute("PRAGMA journal_mode=WAL")
            cursor.execute("PRAGMA busy_timeout=30000")
            cursor.execute("PRAGMA foreign_keys=ON")
            cursor.close()

    return engine


def create_tables(metadata: MetaData, engine: Engine) -> None:
    """`metadata.create_all`, one process at a time on PostgreSQL (SQLite locks the file)."""
    if engine.dialect.name != "postgresql":
        metadata.create_all(engine)
        return
    with engine.begin() as connection:
        connection.execute(text("SELECT pg_advisory_xact_lock(:id)"), {"id": SCHEMA_LOCK_ID})
        metadata.create_all(connection)
