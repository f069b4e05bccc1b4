"""The reflog: every catalog, certificate, history and meta-info hash ever published (spec §4.2).

Stored uncompressed at `.cvmfsreflog`; manifest `Y` is the hash of the raw file.
"""

from __future__ import annotations

import enum
import sqlite3
from dataclasses import dataclass
from pathlib import Path

from cvmfs._sqlite import SCRATCH_SYNCHRONOUS, PropertiesDatabase, set_property
from cvmfs.catalog import DDL_PROPERTIES
from cvmfs.objects import ContentHash, ObjectSuffix

REFLOG_KEY = ".cvmfsreflog"  # spec §1.1
REFLOG_SCHEMA = "1.0"  # spec §4.2
REFLOG_SCHEMA_REVISION = 0  # spec §4.2
REFLOG_DDL: tuple[str, ...] = (  # spec §4.2
    DDL_PROPERTIES,
    "CREATE TABLE refs (hash TEXT, type INTEGER, timestamp INTEGER, "
    "CONSTRAINT pk_refs PRIMARY KEY (hash));",
)


class RefType(enum.IntEnum):
    """`refs.type` (spec §4.2)."""

    CATALOG = 0
    CERTIFICATE = 1
    HISTORY = 2
    METAINFO = 3

    @property
    def label(self) -> str:
        return self.name.lower()

    @property
    def suffix(self) -> ObjectSuffix:
        return {
            RefType.CATALOG: ObjectSuffix.CATALOG,
            RefType.CERTIFICATE: ObjectSuffix.CERTIFICATE,
            RefType.HISTORY: ObjectSuffix.HISTORY,
            RefType.METAINFO: ObjectSuffix.METAINFO,
        }[self]


@dataclass(frozen=True, slots=True)
class Ref:
    content_hash: ContentHash
    type: RefType
    timestamp: int

    @property
    def object_key(self) -> str:
        return self.content_hash.object_key(self.type.suffix)


def create_reflog_db(path: str | Path, fqrn: str) -> None:
    """Create an empty reflog with upstream's schema and properties."""
    db = sqlite3.connect(str(path), isolation_level=None)
    try:
        db.execute("PRAGMA journal_mode=DELETE")
        db.execute(f"PRAGMA synchronous={SCRATCH_SYNCHRONOUS}")
        db.execute("BEGIN")
        for statement in REFLOG_DDL:
            db.execute(statement)
        set_property(db, "schema", REFLOG_SCHEMA)
        set_property(db, "schema_revision", REFLOG_SCHEMA_REVISION)
        set_property(db, "fqrn", fqrn)
        db.execute("COMMIT")
    finally:
        db.close()


class ReflogDb(PropertiesDatabase):
    """A reflog file; read-only unless opened with `writable=True`."""

    kind = "reflog database"

    def refs(self) -> list[Ref]:
        """All references in insertion order."""
        rows = self._db.execute("SELECT hash, type, timestamp FROM refs ORDER BY rowid")
        return [Ref(ContentHash.from_hex(str(h)), RefType(int(t)), int(ts)) for h, t, ts in rows]

    def contains(self, content_hash: ContentHash) -> bool:
        row = self._db.execute("SELECT 1 FROM refs WHERE hash = ?", (content_hash.hex,))
        return row.fetchone() is not None

    def add(self, content_hash: ContentHash, ref_type: RefType, timestamp: int) -> None:
        """Record a published object; re-adding refreshes its timestamp (as upstream does)."""
        self._db.execute(
            "INSERT OR REPLACE INTO refs (hash, type, timestamp) VALUES (?, ?, ?)",
            (content_hash.hex, int(ref_type), timestamp),
        )

    def remove(self, content_hash: ContentHash) -> None:
        self._db.execute("DELETE FROM refs WHERE hash = ?", (content_hash.hex,))
