"""Small helpers shared by the SQLite-backed formats (history, reflog).

Opening read-only uses `immutable=1` so a database on a read-only medium never needs a journal.
"""

from __future__ import annotations

import sqlite3
from pathlib import Path
from typing import Self

from cvmfs.errors import FormatError

# Writable databases are working copies in a scratch directory, read back and stored as an
# object after they are closed: a crash loses only the copy, and the storage makes the object
# durable (one sync per publish). SQLite's default FULL cost 4 fdatasyncs per statement.
SCRATCH_SYNCHRONOUS = "OFF"


def connect(path: str | Path, *, writable: bool) -> sqlite3.Connection:
    try:
        if writable:
            db = sqlite3.connect(str(path), isolation_level=None, check_same_thread=False)
            # spec §2.1: rollback journal, never WAL, so the file is self-contained on close
            db.execute("PRAGMA journal_mode=DELETE")
            db.execute(f"PRAGMA synchronous={SCRATCH_SYNCHRONOUS}")
        else:
            db = sqlite3.connect(
                f"file:{path}?mode=ro&immutable=1", uri=True, check_same_thread=False
            )
        db.execute("SELECT count(*) FROM sqlite_master").fetchone()
    except sqlite3.DatabaseError as exc:
        raise FormatError(f"{path} is not an SQLite database: {exc}") from exc
    return db


def read_properties(db: sqlite3.Connection) -> dict[str, str]:
    try:
        return {str(k): str(v) for k, v in db.execute("SELECT key, value FROM properties")}
    except sqlite3.DatabaseError as exc:
        raise FormatError(f"database has no properties table: {exc}") from exc


def set_property(db: sqlite3.Connection, key: str, value: object) -> None:
    db.execute("INSERT OR REPLACE INTO properties (key, value) VALUES (?, ?)", (key, value))


class PropertiesDatabase:
    """An SQLite file with a `properties` table (history, reflog): open, check, close."""

    kind = "database"

    def __init__(self, path: str | Path, *, writable: bool = False) -> None:
        self.path = Path(path)
        self.writable = writable
        self._db = connect(self.path, writable=writable)
        self.properties = read_properties(self._db)
        if "schema" not in self.properties:
            raise FormatError(f"{self.path}: not a {self.kind} (no schema property)")

    def close(self) -> None:
        self._db.close()

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    @property
    def fqrn(self) -> str | None:
        return self.properties.get("fqrn")
