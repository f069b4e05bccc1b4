"""File catalogs: the schema, flag bits, path keys and a read-only `Catalog` over SQLite.

Writers reuse the module-level DDL, flags, `md5path_pair` and encoders (spec §2).
"""

from __future__ import annotations

import hashlib
import os
import sqlite3
import stat
import struct
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType
from typing import Any

from cvmfs.errors import FormatError, InvalidPathError
from cvmfs.objects import ContentHash, HashAlgorithm, ObjectSuffix

# --- schema (spec §2.2) ------------------------------------------------------------------------
SCHEMA_VERSION = "2.5"  # spec §2.2
SCHEMA_REVISION = 7  # spec §2.2: rev 7 adds catalog.mtimens
# Spec §2.2: rev 5 brought special files (flag 16) and the `*_special` counters; a catalog that
# holds one must declare at least this revision or older clients select the wrong columns.
SCHEMA_REVISION_SPECIAL_FILES = 5

DDL_PROPERTIES = (
    "CREATE TABLE properties (key TEXT, value TEXT, CONSTRAINT pk_properties PRIMARY KEY (key));"
)
DDL_CATALOG = (
    "CREATE TABLE catalog (md5path_1 INTEGER, md5path_2 INTEGER, parent_1 INTEGER, "
    "parent_2 INTEGER, hardlinks INTEGER, hash BLOB, size INTEGER, mode INTEGER, mtime INTEGER, "
    "mtimens INTEGER, flags INTEGER, name TEXT, symlink TEXT, uid INTEGER, gid INTEGER, "
    "xattr BLOB, CONSTRAINT pk_catalog PRIMARY KEY (md5path_1, md5path_2));"
)
DDL_CATALOG_INDEX = "CREATE INDEX idx_catalog_parent ON catalog (parent_1, parent_2);"
DDL_CHUNKS = (
    "CREATE TABLE chunks (md5path_1 INTEGER, md5path_2 INTEGER, offset INTEGER, size INTEGER, "
    "hash BLOB, CONSTRAINT pk_chunks PRIMARY KEY (md5path_1, md5path_2, offset, size), "
    "FOREIGN KEY (md5path_1, md5path_2) REFERENCES catalog(md5path_1, md5path_2));"
)
DDL_NESTED_CATALOGS = (
    "CREATE TABLE nested_catalogs (path TEXT, sha1 TEXT, size INTEGER, "
    "CONSTRAINT pk_nested_catalogs PRIMARY KEY (path));"
)
DDL_BIND_MOUNTPOINTS = (
    "CREATE TABLE bind_mountpoints (path TEXT, sha1 TEXT, size INTEGER, "
    "CONSTRAINT pk_bind_mountpoints PRIMARY KEY (path));"
)
DDL_STATISTICS = (
    "CREATE TABLE statistics (counter TEXT, value INTEGER, "
    "CONSTRAINT pk_statistics PRIMARY KEY (counter));"
)
CATALOG_DDL: tuple[str, ...] = (
    DDL_PROPERTIES,
    DDL_CATALOG,
    DDL_CATALOG_INDEX,
    DDL_CHUNKS,
    DDL_NESTED_CATALOGS,
    DDL_BIND_MOUNTPOINTS,
    DDL_STATISTICS,
)

# --- flags (spec §2.6) -------------------------------------------------------------------------
FLAG_DIR = 1
FLAG_DIR_NESTED_MOUNTPOINT = 2  # transition point, row in the parent catalog
FLAG_FILE = 4  # regular files, and also symlinks and special files
FLAG_LINK = 8  # symlinks (with FLAG_FILE: 12)
FLAG_FILE_SPECIAL = 16  # fifo/socket/char/block (with FLAG_FILE: 20)
FLAG_DIR_NESTED_ROOT = 32  # root row of a nested catalog
FLAG_FILE_CHUNK = 64
FLAG_FILE_EXTERNAL = 128
FLAG_HASH_ALGORITHM_SHIFT = 8  # bits 8-10: hash algorithm - 1
FLAG_COMPRESSION_SHIFT = 11  # bits 11-13: 0 zlib, 1 none
FLAG_DIR_BIND_MOUNTPOINT = 0x4000
FLAG_HIDDEN = 0x8000
FLAG_DIRECT_IO = 0x10000
# Spec §2.6 / upstream `SqlDirent::CreateDatabaseFlags`: a special file is FLAG_FILE |
# FLAG_FILE_SPECIAL and nothing else (no hash algorithm or compression bits: it has no content).
SPECIAL_FILE_FLAGS = FLAG_FILE | FLAG_FILE_SPECIAL
# Spec §2.4 `mode`: the client takes the type from the mode, so these are what makes a row a
# char/block device, FIFO or socket; `size` holds makedev(major, minor) for devices, else 0.
SPECIAL_FILE_KINDS: dict[int, str] = {
    stat.S_IFCHR: "char-device",
    stat.S_IFBLK: "block-device",
    stat.S_IFIFO: "fifo",
    stat.S_IFSOCK: "socket",
}
COMPRESSION_ZLIB = 0  # spec §1.4
COMPRESSION_NONE = 1  # spec §1.4

DEFAULT_TTL_S = 240  # spec §2.3: Catalog::kDefaultTTL
DIRECTORY_SIZE = 4096  # spec §2.5: size upstream stores for directories

# --- statistics counters (spec §2.8) -----------------------------------------------------------
STATISTICS_FIELDS: tuple[str, ...] = (
    "regular",
    "symlink",
    "special",
    "dir",
    "nested",
    "chunked",
    "chunks",
    "file_size",
    "chunked_size",
    "xattr",
    "external",
    "external_file_size",
)
STATISTICS_COUNTERS: tuple[str, ...] = tuple(
    sorted(f"{scope}_{name}" for scope in ("self", "subtree") for name in STATISTICS_FIELDS)
)

XATTR_BLOB_VERSION = 1  # spec §2.7
MAX_NAME_BYTES = 255


# --- paths and keys (spec §2.4) ----------------------------------------------------------------
def normalize_path(path: str) -> str:
    """Repository path in catalog form: '' for the root, else '/a/b' (no trailing slash).

    Accepts 'a/b', '/a/b', 'a/b/', '' and '/'. Refuses '.', '..', empty components and NUL.
    """
    if "\0" in path:
        raise InvalidPathError(f"path {path!r} contains NUL")
    stripped = path.strip("/")
    if not stripped:
        return ""
    parts = stripped.split("/")
    for part in parts:
        if part in ("", ".", ".."):
            raise InvalidPathError(f"path {path!r} has an empty, '.' or '..' component")
        if len(path_bytes(part)) > MAX_NAME_BYTES:
            raise InvalidPathError(f"path {path!r} has a name longer than 255 bytes")
    return "/" + "/".join(parts)


def path_bytes(path: str) -> bytes:
    """Raw bytes of a path; non-UTF-8 bytes round-trip through surrogateescape (spec §7)."""
    return path.encode("utf-8", "surrogateescape")


def parent_path(path: str) -> str:
    """Everything before the last '/' ('' for '/a' and for the root)."""
    return path.rsplit("/", 1)[0] if path else ""


def md5path_pair(path: bytes | str) -> tuple[int, int]:
    """MD5 of the full path as two little-endian signed int64 (spec §2.4)."""
    raw = path_bytes(path) if isinstance(path, str) else path
    first, second = struct.unpack("<qq", hashlib.md5(raw).digest())
    return first, second


ROOT_PARENT_PAIR = (0, 0)  # spec §2.4: the repository root's parent key


def parent_pair(path: str) -> tuple[int, int]:
    """Parent key of a catalog-form path; the repository root has (0, 0) (spec §2.4)."""
    return ROOT_PARENT_PAIR if path == "" else md5path_pair(parent_path(path))


def encode_hardlinks(group: int, linkcount: int) -> int:
    """`hardlinks` column: (group << 32) | linkcount (spec §2.4)."""
    if not 0 < linkcount <= 0xFFFFFFFF or not 0 <= group <= 0xFFFFFFFF:
        raise ValueError(f"invalid hardlink group {group} / link count {linkcount}")
    return (group << 32) | linkcount


def decode_hardlinks(value: int) -> tuple[int, int]:
    """(group, linkcount) from the `hardlinks` column."""
    return (value >> 32) & 0xFFFFFFFF, value & 0xFFFFFFFF


def encode_xattrs(xattrs: Mapping[bytes, bytes]) -> bytes | None:
    """The `xattr` blob (spec §2.7), or None when there are no attributes."""
    if not xattrs:
        return None
    if len(xattrs) > 255:
        raise ValueError("at most 255 extended attributes per entry (spec §2.7)")
    out = bytearray([XATTR_BLOB_VERSION, len(xattrs)])
    for key in sorted(xattrs):
        value = xattrs[key]
        if not key or b"\0" in key or len(key) > 255 or len(value) > 255:
            raise ValueError(f"xattr {key!r}: key 1..255 bytes without NUL, value <= 255 bytes")
        out += bytes([len(key), len(value)]) + key + value
    return bytes(out)


def decode_xattrs(blob: bytes | None) -> dict[bytes, bytes]:
    """Parse the `xattr` blob (spec §2.7); None means no attributes."""
    if blob is None:
        return {}
    if len(blob) < 2 or blob[0] != XATTR_BLOB_VERSION:
        raise FormatError("xattr blob: wrong version or truncated (spec §2.7)")
    count, pos, out = blob[1], 2, {}
    for _ in range(count):
        if pos + 2 > len(blob):
            raise FormatError("xattr blob truncated")
        key_len, value_len = blob[pos], blob[pos + 1]
        pos += 2
        if key_len + value_len == 0 or pos + key_len + value_len > len(blob):
            raise FormatError("xattr blob: empty or truncated entry")
        out[blob[pos : pos + key_len]] = blob[pos + key_len : pos + key_len + value_len]
        pos += key_len + value_len
    return out


# --- values ------------------------------------------------------------------------------------
@dataclass(frozen=True, slots=True)
class Chunk:
    """One row of `chunks`: a piece of a chunked file (object suffix P, spec §2.4)."""

    offset: int
    size: int
    content_hash: ContentHash

    @property
    def object_key(self) -> str:
        return self.content_hash.object_key(ObjectSuffix.PARTIAL)


@dataclass(frozen=True, slots=True)
class NestedCatalogRef:
    """One row of `nested_catalogs`: a direct child catalog (spec §2.4)."""

    path: str  # mount point, catalog form ('/nested')
    content_hash: ContentHash
    size: int  # uncompressed SQLite size

    @property
    def object_key(self) -> str:
        return self.content_hash.object_key(ObjectSuffix.CATALOG)


@dataclass(frozen=True, slots=True)
class DirectoryEntry:
    """One row of `catalog`, decoded (spec §2.4)."""

    path: str  # catalog form: '' root, '/a/b'
    name: str
    mode: int
    size: int
    mtime: int
    mtimens: int | None
    uid: int
    gid: int
    flags: int
    content_hash: ContentHash | None
    symlink: str = ""
    hardlink_group: int = 0
    linkcount: int = 1
    xattrs: Mapping[bytes, bytes] = field(default_factory=dict)
    chunks: tuple[Chunk, ...] = ()

    @property
    def is_dir(self) -> bool:
        return stat.S_ISDIR(self.mode)

    @property
    def is_symlink(self) -> bool:
        return stat.S_ISLNK(self.mode)

    @property
    def is_regular(self) -> bool:
        return stat.S_ISREG(self.mode)

    @property
    def is_special(self) -> bool:
        """A char/block device, FIFO or socket (by mode, as the client decides; spec §2.4)."""
        return stat.S_IFMT(self.mode) in SPECIAL_FILE_KINDS

    @property
    def special_kind(self) -> str | None:
        """'char-device', 'block-device', 'fifo' or 'socket'; None for other entries."""
        return SPECIAL_FILE_KINDS.get(stat.S_IFMT(self.mode))

    @property
    def is_device(self) -> bool:
        return stat.S_ISCHR(self.mode) or stat.S_ISBLK(self.mode)

    @property
    def device(self) -> tuple[int, int] | None:
        """(major, minor) of a device node, decoded from `size` (spec §2.4); else None."""
        if not self.is_device:
            return None
        return os.major(self.size), os.minor(self.size)

    @property
    def is_chunked(self) -> bool:
        return bool(self.flags & FLAG_FILE_CHUNK)

    @property
    def is_external(self) -> bool:
        return bool(self.flags & FLAG_FILE_EXTERNAL)

    @property
    def is_nested_mountpoint(self) -> bool:
        return bool(self.flags & FLAG_DIR_NESTED_MOUNTPOINT)

    @property
    def is_nested_root(self) -> bool:
        return bool(self.flags & FLAG_DIR_NESTED_ROOT)

    @property
    def is_hidden(self) -> bool:
        return bool(self.flags & FLAG_HIDDEN)

    @property
    def hash_algorithm(self) -> HashAlgorithm:
        return hash_algorithm_from_flags(self.flags)

    @property
    def compression(self) -> int:
        return compression_from_flags(self.flags)

    @property
    def is_compressed(self) -> bool:
        return self.compression == COMPRESSION_ZLIB

    @property
    def object_key(self) -> str | None:
        """Storage key of the whole-file object, None if there is none."""
        if self.content_hash is None or not self.is_regular or self.is_external:
            return None
        return self.content_hash.object_key(ObjectSuffix.FILE)


def hash_algorithm_from_flags(flags: int) -> HashAlgorithm:
    return HashAlgorithm.from_flags_value((flags >> FLAG_HASH_ALGORITHM_SHIFT) & 7)


def compression_from_flags(flags: int) -> int:
    return (flags >> FLAG_COMPRESSION_SHIFT) & 7


@dataclass(frozen=True, slots=True)
class CatalogRow:
    """Raw key columns of a `catalog` row (for integrity checks: parents, duplicates)."""

    md5path: tuple[int, int]
    parent: tuple[int, int]
    entry: DirectoryEntry


# --- reader ------------------------------------------------------------------------------------
class Catalog:
    """A read-only catalog opened from a decompressed SQLite file.

    Schema revisions before 7 have no `mtimens` column; it reads as None.
    """

    def __init__(self, db_path: str | Path, *, mountpoint: str | None = None) -> None:
        self.db_path = Path(db_path)
        self._conn: sqlite3.Connection | None = None
        try:
            self.properties: dict[str, str] = {
                str(k): str(v) for k, v in self._db.execute("SELECT key, value FROM properties")
            }
            columns = {row[1] for row in self._db.execute("PRAGMA table_info(catalog)")}
        except sqlite3.DatabaseError as exc:
            self.close()
            raise FormatError(f"{self.db_path} is not a catalog database: {exc}") from exc
        if "schema" not in self.properties:
            self.close()
            raise FormatError(f"{self.db_path}: no 'schema' property (spec §2.3)")
        self._has_mtimens = "mtimens" in columns
        self._has_xattr = "xattr" in columns
        self.mountpoint = mountpoint if mountpoint is not None else self.root_prefix or ""

    @property
    def _db(self) -> sqlite3.Connection:
        """The SQLite connection, (re)opened on demand: see `release()`."""
        if self._conn is None:
            self._conn = sqlite3.connect(
                f"file:{self.db_path}?mode=ro&immutable=1", uri=True, check_same_thread=False
            )
            self._conn.text_factory = lambda raw: raw.decode("utf-8", "surrogateescape")
        return self._conn

    @property
    def is_open(self) -> bool:
        return self._conn is not None

    def release(self) -> None:
        """Close the connection to free its file descriptor; the next query reopens it."""
        if self._conn is not None:
            self._conn.close()
            self._conn = None

    def close(self) -> None:
        self.release()

    def __enter__(self) -> Catalog:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    # properties (spec §2.3)
    @property
    def schema(self) -> str:
        return self.properties["schema"]

    @property
    def schema_revision(self) -> int:
        return int(self.properties.get("schema_revision", "0"))

    @property
    def revision(self) -> int:
        return int(self.properties.get("revision", "0"))

    @property
    def root_prefix(self) -> str | None:
        return self.properties.get("root_prefix")

    @property
    def previous_revision(self) -> str | None:
        return self.properties.get("previous_revision")

    @property
    def last_modified(self) -> int:
        return int(self.properties.get("last_modified", "0"))

    @property
    def ttl_s(self) -> int:
        return int(self.properties.get("TTL", DEFAULT_TTL_S))

    def statistics(self) -> dict[str, int]:
        return {
            str(name): int(value)
            for name, value in self._db.execute(
                "SELECT counter, value FROM statistics ORDER BY counter"
            )
        }

    def nested_catalogs(self) -> list[NestedCatalogRef]:
        return [
            NestedCatalogRef(str(path), ContentHash.from_hex(str(sha)), int(size or 0))
            for path, sha, size in self._db.execute(
                "SELECT path, sha1, size FROM nested_catalogs ORDER BY path"
            )
        ]

    def bind_mountpoints(self) -> list[NestedCatalogRef]:
        return [
            NestedCatalogRef(str(path), ContentHash.from_hex(str(sha)), int(size or 0))
            for path, sha, size in self._db.execute(
                "SELECT path, sha1, size FROM bind_mountpoints ORDER BY path"
            )
        ]

    def find_nested_for(self, path: str) -> NestedCatalogRef | None:
        """The direct child catalog whose mount point is a component-wise prefix of `path`."""
        for ref in self.nested_catalogs():
            if path == ref.path or path.startswith(ref.path + "/"):
                return ref
        return None

    # rows
    def _select(self) -> str:
        mtimens = "mtimens" if self._has_mtimens else "NULL"
        xattr = "xattr" if self._has_xattr else "NULL"
        return (
            "SELECT md5path_1, md5path_2, parent_1, parent_2, hardlinks, hash, size, mode, mtime, "
            f"{mtimens}, flags, name, symlink, uid, gid, {xattr} FROM catalog"
        )

    def _chunks(self, key: tuple[int, int], algorithm: HashAlgorithm) -> tuple[Chunk, ...]:
        rows = self._db.execute(
            "SELECT offset, size, hash FROM chunks WHERE md5path_1 = ? AND md5path_2 = ? "
            "ORDER BY offset ASC",
            key,
        )
        return tuple(
            Chunk(int(offset), int(size), ContentHash(bytes(digest), algorithm))
            for offset, size, digest in rows
        )

    def _entry(self, row: tuple[Any, ...], path: str) -> DirectoryEntry:
        (m1, m2, _p1, _p2, hardlinks, digest, size, mode, mtime) = row[:9]
        (mtimens, flags, name, symlink, uid, gid, xattr) = row[9:]
        flags = int(flags)
        algorithm = hash_algorithm_from_flags(flags)
        group, linkcount = decode_hardlinks(int(hardlinks or 0))
        return DirectoryEntry(
            path=path,
            name=str(name or ""),
            mode=int(mode),
            size=int(size or 0),
            mtime=int(mtime or 0),
            mtimens=None if mtimens is None else int(mtimens),
            uid=int(uid or 0),
            gid=int(gid or 0),
            flags=flags,
            content_hash=None if digest is None else ContentHash(bytes(digest), algorithm),
            symlink=str(symlink or ""),
            hardlink_group=group,
            linkcount=linkcount,
            xattrs=decode_xattrs(None if xattr is None else bytes(xattr)),
            chunks=self._chunks((m1, m2), algorithm) if flags & FLAG_FILE_CHUNK else (),
        )

    def lookup(self, path: str) -> DirectoryEntry | None:
        """The row of `path` (catalog form or relative) in this catalog, or None."""
        path = normalize_path(path)
        row = self._db.execute(
            self._select() + " WHERE md5path_1 = ? AND md5path_2 = ?", md5path_pair(path)
        ).fetchone()
        return None if row is None else self._entry(row, path)

    def listdir(self, path: str) -> list[DirectoryEntry]:
        """Rows whose parent is `path`, sorted by name (a transition point lists nothing)."""
        path = normalize_path(path)
        rows = self._db.execute(
            self._select() + " WHERE parent_1 = ? AND parent_2 = ?", md5path_pair(path)
        ).fetchall()
        prefix = path + "/"
        entries = [self._entry(row, prefix + str(row[11])) for row in rows]
        return sorted(entries, key=lambda e: path_bytes(e.name))

    def rows(self, on_problem: Callable[[str], None] | None = None) -> Iterator[CatalogRow]:
        """Every row with its path rebuilt from the parent keys (for walks and fsck).

        A row whose parent directory is not in this catalog raises `FormatError`, or, with
        `on_problem`, is reported there and skipped together with its descendants.
        """
        raw = self._db.execute(self._select()).fetchall()
        by_key = {(r[0], r[1]): r for r in raw}
        paths: dict[tuple[int, int], str | None] = {}

        def problem(message: str) -> None:
            if on_problem is None:
                raise FormatError(f"catalog {self.mountpoint or '/'}: {message}")
            on_problem(message)

        def resolve(start: tuple[int, int]) -> str | None:
            chain: list[tuple[int, int]] = []  # iterative: trees can be deeper than the stack
            key = start
            base: str | None
            while True:
                if key in paths:
                    base = paths[key]
                    break
                row = by_key[key]
                parent = (row[2], row[3])
                if parent == ROOT_PARENT_PAIR:
                    paths[key] = ""  # the repository root (spec §2.4)
                    base = ""
                    break
                if parent not in by_key:
                    if int(row[10]) & FLAG_DIR_NESTED_ROOT:
                        base = self.mountpoint  # root row of a nested catalog (spec §2.5)
                    else:
                        problem(f"row {row[11]!r} has no parent directory in its catalog")
                        base = None
                    paths[key] = base
                    break
                chain.append(key)
                if len(chain) > len(by_key):
                    problem(f"the parent chain of row {row[11]!r} loops")
                    base = None
                    break
                key = parent
            for child in reversed(chain):
                base = None if base is None else f"{base}/{by_key[child][11]}"
                paths[child] = base
            return paths.get(start, base)

        for key, row in by_key.items():
            path = resolve(key)
            if path is not None:
                yield CatalogRow(key, (row[2], row[3]), self._entry(row, path))

    def entries(self) -> Iterator[DirectoryEntry]:
        for row in self.rows():
            yield row.entry

    def entry_count(self) -> int:
        return int(self._db.execute("SELECT COUNT(*) FROM catalog").fetchone()[0])

    def max_rowid(self) -> int:
        return int(self._db.execute("SELECT COALESCE(MAX(rowid), 0) FROM catalog").fetchone()[0])
