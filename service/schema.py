"""Creating the service's tables in a shared database, safely from several processes at once.

Every store (registry, gateway leases, rate limits, dashboard sessions) creates its missing
tables when it opens. On PostgreSQL two first starts at once raced in CREATE TABLE and one failed
with a unique violation in pg_type (seen in tests/test_two_hosts.py), so there the creation runs
under a transaction-scoped advisory lock.
"""

from __future__ import annotations

from sqlalchemy import Engine, MetaData, text

# Any constant shared by every process of the service: "cvmfs" in ASCII.
SCHEMA_LOCK_ID = 0x63766D6673


def create_tables(metadata: MetaData, engine: Engine) -> None:
    """`metadata.create_all`, one process at a time on PostgreSQL (SQLite locks the file)."""
    if engine.dialect.name != "postgresql":
        metadata.create_all(engine)
        return
    with engine.begin() as connection:
        connection.execute(text("SELECT pg_advisory_xact_lock(:id)"), {"id": SCHEMA_LOCK_ID})
        metadata.create_all(connection)
