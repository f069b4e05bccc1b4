"""The history (tag) database: named tags pointing at root catalogs (spec §4.1).

Read it from an `H` object, or create/modify it for a new revision; object suffix `H`.
"""

from __future__ import annotations

import datetime as dt
import sqlite3
from dataclasses import dataclass
from pathlib import Path

from cvmfs._sqlite import SCRATCH_SYNCHRONOUS, PropertiesDatabase, set_property
from cvmfs.catalog import DDL_PROPERTIES
from cvmfs.errors import NotFoundError
from cvmfs.objects import ContentHash

HISTORY_SCHEMA = "1.0"  # spec §4.1
HISTORY_SCHEMA_REVISION = 3  # spec §4.1
HISTORY_DDL: tuple[str, ...] = (  # spec §4.1
    DDL_PROPERTIES,
    "CREATE TABLE branches (branch TEXT, parent TEXT, initial_revision INTEGER, "
    "CONSTRAINT pk_branch PRIMARY KEY (branch), "
    "FOREIGN KEY (parent) REFERENCES branches (branch), "
    "CHECK ((branch <> '') OR (parent IS NULL)), "
    "CHECK ((branch = '') OR (parent IS NOT NULL)));",
    "INSERT INTO branches (branch, parent, initial_revision) VALUES ('', NULL, 0);",
    "CREATE TABLE tags (name TEXT, hash TEXT, revision INTEGER, timestamp INTEGER, "
    "channel INTEGER, description TEXT, size INTEGER, branch TEXT, "
    "CONSTRAINT pk_tags PRIMARY KEY (name), "
    "FOREIGN KEY (branch) REFERENCES branches (branch));",
    "CREATE TABLE recycle_bin (hash TEXT, flags INTEGER, CONSTRAINT pk_hash PRIMARY KEY (hash));",
)
TAG_TRUNK = "trunk"  # spec §4.1: automatic tag of the current head
TAG_TRUNK_PREVIOUS = "trunk-previous"  # spec §4.1
TRUNK_DESCRIPTION = "current HEAD"
TRUNK_PREVIOUS_DESCRIPTION = "default undo target"


@dataclass(frozen=True, slots=True)
class Tag:
    """One row of `tags`."""

    name: str
    root_hash: ContentHash
    revision: int
    timestamp: int
    description: str = ""
    size: int = 0  # uncompressed size of the root catalog
    channel: int = 0  # spec §4.1: always 0
    branch: str = ""


def generic_tag_name(timestamp: int) -> str:
    """Upstream's automatic tag name `generic-YYYY-MM-DDThh:mm:ssZ` (spec §4.1)."""
    moment = dt.datetime.fromtimestamp(timestamp, dt.UTC)
    return moment.strftime("generic-%Y-%m-%dT%H:%M:%SZ")


def create_history_db(
    path: str | Path, fqrn: str, previous_revision: ContentHash | None = None
) -> None:
    """Create an empty history database with upstream's schema and properties."""
    db = sqlite3.connect(str(path), isolation_level=None)
    try:
        db.execute("PRAGMA journal_mode=DELETE")
        db.execute(f"PRAGMA synchronous={SCRATCH_SYNCHRONOUS}")
        db.execute("BEGIN")
        for statement in HISTORY_DDL:
            db.execute(statement)
        set_property(db, "schema", HISTORY_SCHEMA)
        set_property(db, "schema_revision", HISTORY_SCHEMA_REVISION)
        set_property(db, "fqrn", fqrn)
        if previous_revision is not None:
            set_property(db, "previous_revision", previous_revision.hex)
        db.execute("COMMIT")
    finally:
        db.close()


class HistoryDb(PropertiesDatabase):
    """A history database file; read-only unless opened with `writable=True`."""

    kind = "history database"

    @property
    def previous_revision(self) -> str | None:
        return self.properties.get("previous_revision")

    def set_previous_revision(self, history_hash: ContentHash) -> None:
        """Record the hash of the history object this one replaces (spec §4.1)."""
        set_property(self._db, "previous_revision", history_hash.hex)
        self.properties["previous_revision"] = history_hash.hex

    @staticmethod
    def _tag(row: tuple[object, ...]) -> Tag:
        name, digest, revision, timestamp, channel, description, size, branch = row
        return Tag(
            name=str(name),
            root_hash=ContentHash.from_hex(str(digest)),
            revision=int(revision),  # type: ignore[call-overload]
            timestamp=int(timestamp),  # type: ignore[call-overload]
            description=str(description or ""),
            size=int(size or 0),  # type: ignore[call-overload]
            channel=int(channel or 0),  # type: ignore[call-overload]
            branch=str(branch or ""),
        )

    _COLUMNS = "name, hash, revision, timestamp, channel, description, size, branch"

    def tags(self) -> list[Tag]:
        """All tags, oldest first (by timestamp, then name)."""
        rows = self._db.execute(f"SELECT {self._COLUMNS} FROM tags ORDER BY timestamp, name")
        return [self._tag(row) for row in rows]

    def find(self, name: str) -> Tag | None:
        row = self._db.execute(
            f"SELECT {self._COLUMNS} FROM tags WHERE name = ?", (name,)
        ).fetchone()
        return None if row is None else self._tag(row)

    def get(self, name: str) -> Tag:
        tag = self.find(name)
        if tag is None:
            raise NotFoundError(f"no tag named {name!r}: list the tags with `repo info`")
        return tag

    def tags_for(self, root_hash: ContentHash) -> list[Tag]:
        return [tag for tag in self.tags() if tag.root_hash == root_hash]

    def put(self, tag: Tag) -> None:
        """Insert or replace a tag (tag names are unique)."""
        self._db.execute(
            f"INSERT OR REPLACE INTO tags ({self._COLUMNS}) VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
            (
                tag.name,
                tag.root_hash.hex,
                tag.revision,
                tag.timestamp,
                tag.channel,
                tag.description,
                tag.size,
                tag.branch,
            ),
        )

    def delete(self, name: str) -> None:
        if self._db.execute("DELETE FROM tags WHERE name = ?", (name,)).rowcount == 0:
            raise NotFoundError(f"no tag named {name!r}")
