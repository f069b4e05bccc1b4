"""A write transaction on a CVMFS repository: file, directory, symlink and removal operations.

Content objects are uploaded while files are added; catalogs are rewritten at publish, bottom-up.

Invariants (spec §2.5, §2.9, §2.11, §7):
* objects go to storage as soon as they are encoded, catalogs only at `finalize_catalogs`, and the
  manifest (written by `cvmfs.writer`) after that, so no manifest ever points at a missing object;
* only catalogs on changed paths are rewritten; untouched nested catalogs keep their hash;
* a nested mount point appears twice with the same metadata and link count: flags 3 in the
  parent catalog and 33 as the child's root row;
* directory link count = 2 + number of subdirectories; `self_*` counters are recomputed from the
  rows of each rewritten catalog and `subtree_*` = old value + the changes reported by children.

Nested catalogs: a `.cvmfscatalog` file in a directory makes it a mount point at once (its
subtree moves into a new catalog); removing the file merges the catalog back into its parent.
At publish, any changed catalog above `max_catalog_entries` rows is split at its heaviest
directory that fits, marked with `.cvmfscatalog` + `.cvmfsautocatalog`; automatic catalogs are
not merged back when they shrink (remove the marker to do that).

Working copies of catalogs live in a temporary directory on local disk; compression and hashing
of file content run in a thread pool (zlib and hashlib release the GIL) behind a bounded number
of in-flight pieces, so memory stays bounded however large the import.
"""

from __future__ import annotations

import collections
import functools
import io
import os
import shutil
import stat
import tempfile
import threading
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import IO, TYPE_CHECKING, Any, BinaryIO, TypeVar, cast

from cvmfs.catalog import (
    COMPRESSION_NONE,
    DIRECTORY_SIZE,
    FLAG_COMPRESSION_SHIFT,
    FLAG_DIR,
    FLAG_DIR_NESTED_MOUNTPOINT,
    FLAG_FILE,
    FLAG_FILE_CHUNK,
    FLAG_HASH_ALGORITHM_SHIFT,
    FLAG_LINK,
    SPECIAL_FILE_FLAGS,
    SPECIAL_FILE_KINDS,
    encode_xattrs,
    parent_path,
)
from cvmfs.catalog_writer import (
    CatalogWriteError,
    CatalogWriter,
    ChunkRow,
    Counters,
    EntryExistsError,
    NestedRef,
    Row,
    add_counters,
    base_name,
    is_below,
    zero_counters,
)
from cvmfs.chunking import ChunkingParams, iter_chunks
from cvmfs.codecs import CATALOG_COMPRESSION, Compression
from cvmfs.errors import CvmfsError, InvalidPathError, NotFoundError
from cvmfs.objects import (
    ContentHash,
    HashAlgorithm,
    ObjectEncoder,
    ObjectSuffix,
    compress_and_hash,
    decode_verified,
    hash_bytes,
    object_path,
)
from cvmfs.paths import repository_path, sanitize_mode, validate_symlink_target
from cvmfs.scratch import make_scratch_dir
from cvmfs.storage import Storage

if TYPE_CHECKING:
    from cvmfs.manifest import Manifest
    from cvmfs.writer import PublishResult, RepositoryWriter

CATALOG_MARKER = ".cvmfscatalog"  # spec §2.9
AUTO_CATALOG_MARKER = ".cvmfsautocatalog"  # spec §2.9
DIR_MODE = stat.S_IFDIR | 0o755
SYMLINK_MODE = stat.S_IFLNK | 0o777
_READ_BLOCK = 1 << 20


class TransactionError(CvmfsError):
    """An operation does not fit the current tree (e.g. a file where a directory is needed)."""


@dataclass(frozen=True)
class IngestOptions:
    """How file content is stored: hash, compression, chunking, thread pool size."""

    hash_algorithm: HashAlgorithm = HashAlgorithm.SHA1
    compress: bool = True
    # Deflate of content objects (catalogs: CATALOG_COMPRESSION; history, certificate: zlib)
    compression: Compression = Compression.ZLIB
    chunking: ChunkingParams | None = field(default_factory=ChunkingParams)
    # Threads compressing, hashing and uploading (zlib and hashlib release the GIL). One per
    # core by default; raise it for high-latency storage (S3), where uploads mostly wait.
    workers: int = field(default_factory=lambda: os.cpu_count() or 2)
    # Bound on the plain bytes handed to the pool and not yet stored (one piece may exceed it
    # when nothing else is in flight), and on the number of pieces in flight.
    max_bytes_in_flight: int = 64 << 20
    max_pieces_in_flight: int = 64


class _Budget:
    """Blocks `acquire(n)` while `n` more bytes or one more piece would exceed the limits."""

    def __init__(self, max_bytes: int, max_items: int) -> None:
        self._cond = threading.Condition()
        self._bytes = 0
        self._items = 0
        self._max_bytes = max_bytes
        self._max_items = max(1, max_items)

    def acquire(self, size: int) -> None:
        with self._cond:
            while self._items and (
                self._items >= self._max_items or self._bytes + size > self._max_bytes
            ):
                self._cond.wait()
            self._items += 1
            self._bytes += size

    def release(self, size: int) -> None:
        with self._cond:
            self._items -= 1
            self._bytes -= size
            self._cond.notify_all()


# --------------------------------------------------------------------------- content pipeline
class _ContentPipeline:
    """Compress, hash and upload object pieces on a thread pool with bounded memory."""

    def __init__(self, storage: Storage, options: IngestOptions) -> None:
        self.storage = storage
        self.options = options
        self._pool = ThreadPoolExecutor(max_workers=max(1, options.workers))
        self._budget = _Budget(options.max_bytes_in_flight, options.max_pieces_in_flight)
        self._lock = threading.Lock()
        self._known: set[str] = set()
        self._inflight: dict[str, threading.Event] = {}
        self.objects_uploaded = 0
        self.bytes_uploaded = 0
        self.objects_deduplicated = 0

    def submit(self, data: bytes, suffix: ObjectSuffix) -> Future[ContentHash]:
        size = len(data)
        self._budget.acquire(size)
        try:
            future = self._pool.submit(self.store, data, suffix)
        except BaseException:
            self._budget.release(size)
            raise
        future.add_done_callback(lambda _f: self._budget.release(size))
        return future

    def submit_local_file(self, fd: int, size: int, limit: int) -> Future[tuple[ContentHash, int]]:
        """Read the open file `fd` (which this takes over and closes) on a worker, then store it
        as one whole-file object; the future gives its hash and the bytes read."""
        self._budget.acquire(size)
        try:
            future = self._pool.submit(self._read_and_store, fd, limit)
        except BaseException:
            self._budget.release(size)
            os.close(fd)
            raise

        def settle(done: Future[tuple[ContentHash, int]]) -> None:
            self._budget.release(size)
            if done.cancelled():  # an aborted transaction: never read, so close it here
                os.close(fd)

        future.add_done_callback(settle)
        return future

    def _read_and_store(self, fd: int, limit: int) -> tuple[ContentHash, int]:
        try:
            pieces = []
            have = 0
            while have <= limit:
                piece = os.read(fd, limit + 1 - have)
                if not piece:
                    break
                pieces.append(piece)
                have += len(piece)
        finally:
            os.close(fd)
        if have > limit:
            raise TransactionError(
                f"a file grew beyond {limit} bytes while it was being imported: import it again"
            )
        data = pieces[0] if len(pieces) == 1 else b"".join(pieces)
        return self.store(data, ObjectSuffix.FILE), len(data)

    def encode(self, data: bytes) -> tuple[bytes, ContentHash]:
        if self.options.compress:
            return compress_and_hash(data, self.options.hash_algorithm, self.options.compression)
        return data, hash_bytes(data, self.options.hash_algorithm)

    def store(self, data: bytes, suffix: ObjectSuffix) -> ContentHash:
        stored, content_hash = self.encode(data)
        self.upload(object_path(content_hash, suffix), stored)
        return content_hash

    def upload(self, key: str, stored: bytes | IO[bytes], size: int | None = None) -> None:
        """Upload unless the object is already there (content-addressed: same name, same bytes).

        Two workers encoding the same content wait for one upload instead of racing.
        """
        while True:
            with self._lock:
                if key in self._known:
                    self.objects_deduplicated += 1
                    return
                busy = self._inflight.get(key)
                if busy is None:
                    self._inflight[key] = threading.Event()
                    break
            busy.wait()  # then re-check: known on success, free to retry on failure
        stored_now = False
        try:
            if self.storage.exists(key):
                with self._lock:
                    self.objects_deduplicated += 1
            else:
                self.storage.put(key, stored)
                stored_now = True
            with self._lock:
                self._known.add(key)
                if stored_now:
                    self.objects_uploaded += 1
                    self.bytes_uploaded += len(stored) if isinstance(stored, bytes) else (size or 0)
        finally:
            with self._lock:
                self._inflight.pop(key).set()

    def close(self) -> None:
        self._pool.shutdown(wait=True, cancel_futures=True)


@dataclass
class _PendingFile:
    """A file whose pieces are being encoded; its row is written when all are done."""

    row: Row
    whole: Future[ContentHash] | None = None
    content_hash: ContentHash | None = None
    chunks: list[tuple[int, int, Future[ContentHash]]] = field(default_factory=list)
    # read and stored on a worker (`add_local_file`): the hash and the size read
    local: Future[tuple[ContentHash, int]] | None = None

    def done(self) -> bool:
        if self.local is not None:
            return self.local.done()
        futures = [f for _o, _s, f in self.chunks]
        if self.whole is not None:
            futures.append(self.whole)
        return all(f.done() for f in futures)


# ---------------------------------------------------------------------------- catalog tree
@dataclass(eq=False)
class _Node:
    """One catalog loaded into the transaction."""

    mountpoint: str
    writer: CatalogWriter
    parent: _Node | None
    old_hash: str | None  # hex of the catalog before this transaction; None if new
    old_revision: int
    old_subtree: Counters
    reported_total: Counters  # what the parent's subtree_* currently includes for us
    refs: dict[str, NestedRef]
    subtree_delta: Counters = field(default_factory=zero_counters)
    dirty: bool = False

    @property
    def depth(self) -> int:
        return 0 if not self.mountpoint else self.mountpoint.count("/")


@dataclass(frozen=True)
class FinalizedCatalog:
    """A catalog written at publish: mount point, content hash and uncompressed size."""

    mountpoint: str
    content_hash: ContentHash
    size: int
    revision: int


_F = TypeVar("_F", bound=Callable[..., Any])
# Refusals raised before anything changed; every other error leaves the transaction unusable.
_REFUSALS = (InvalidPathError, NotFoundError, TransactionError)


def _guarded(method: _F) -> _F:
    """Mark the transaction broken when an operation fails part-way (storage error, crash)."""

    @functools.wraps(method)
    def wrapper(self: Transaction, *args: Any, **kwargs: Any) -> Any:
        try:
            return method(self, *args, **kwargs)
        except _REFUSALS:
            raise
        except BaseException as exc:
            if self._broken is None:
                self._broken = exc
            raise

    return cast(_F, wrapper)


class Transaction:
    """Changes against one base revision; `publish()` makes them the next revision.

    Get one from `RepositoryWriter.transaction()`. Paths are repository paths (`a/b`, `/a/b`);
    parent directories are created as needed (mode 0755, the transaction's timestamp). Use as a
    context manager: leaving the block without publishing discards the working copies (objects
    already uploaded stay, unreferenced, as after any interrupted publish).
    """

    def __init__(
        self,
        repo: RepositoryWriter,
        *,
        base_root_hash: ContentHash,
        base_revision: int,
        base_timestamp: int,
        options: IngestOptions,
        max_catalog_entries: int | None,
        default_uid: int = 0,
        default_gid: int = 0,
        work_dir: str | Path | None = None,
    ) -> None:
        self.repo = repo
        self.storage = repo.storage
        self.base_root_hash = base_root_hash
        self.base_revision = base_revision
        self.base_timestamp = base_timestamp
        self.base_manifest: Manifest | None = None  # None only while creating the repository
        self.options = options
        self.max_catalog_entries = max_catalog_entries
        self.default_uid = default_uid
        self.default_gid = default_gid
        self.now = max(int(time.time()), base_timestamp)
        self._tmp = make_scratch_dir("txn", work_dir)
        self._serial = 0
        self._pipeline = _ContentPipeline(self.storage, options)
        self._pending: collections.deque[_PendingFile] = collections.deque()
        self._nodes: dict[str, _Node] = {}
        self._closed = False
        self._broken: BaseException | None = None
        self._known_dirs: set[str] = set()
        self.files_added = 0
        try:
            self.root = self._load("", base_root_hash, None)
        except BaseException:
            self.abort()
            raise

    # ------------------------------------------------------------------------ lifecycle
    def __enter__(self) -> Transaction:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.abort()

    def abort(self) -> None:
        """Discard the working copies (nothing published)."""
        if self._closed:
            return
        self._closed = True
        self._pipeline.close()
        for node in self._nodes.values():
            if not node.writer.closed:
                node.writer.abort()
        shutil.rmtree(self._tmp, ignore_errors=True)

    def _check_open(self) -> None:
        if self._closed:
            raise TransactionError("this transaction is closed: start a new one")
        if self._broken is not None:
            raise TransactionError(
                f"an earlier operation of this transaction failed ({self._broken}); its working "
                "catalogs may be half-changed, so it cannot be published: start a new one"
            ) from self._broken

    def publish(
        self, *, tag: str | None = None, description: str = "", auto_tag: bool | None = None
    ) -> PublishResult:
        """Finish the transaction: catalogs, history, reflog, then the signed manifest.

        Raises `ConflictError` (writing no manifest) if another revision was published since
        this transaction's base revision.
        """
        self._check_open()
        try:
            return self.repo._publish_transaction(
                self, tag=tag, description=description, auto_tag=auto_tag
            )
        finally:
            self.abort()

    # -------------------------------------------------------------------- catalog loading
    def _new_db_path(self) -> Path:
        self._serial += 1
        return self._tmp / f"catalog-{self._serial}.sqlite"

    def _load(self, mountpoint: str, content_hash: ContentHash, parent: _Node | None) -> _Node:
        key = object_path(content_hash, ObjectSuffix.CATALOG)
        data = decode_verified(self.storage.get(key), content_hash, what=f"catalog {key}")
        db_path = self._new_db_path()
        db_path.write_bytes(data)
        del data
        writer = CatalogWriter.open(db_path, mountpoint)
        self_counters = writer.read_counters("self")
        subtree = writer.read_counters("subtree")
        node = _Node(
            mountpoint=mountpoint,
            writer=writer,
            parent=parent,
            old_hash=content_hash.hex,
            old_revision=writer.revision,
            old_subtree=subtree,
            reported_total=add_counters(self_counters, subtree),
            refs={ref.path: ref for ref in writer.nested()},
        )
        self._nodes[mountpoint] = node
        return node

    def _child(self, node: _Node, mountpoint: str) -> _Node:
        loaded = self._nodes.get(mountpoint)
        if loaded is not None:
            return loaded
        ref = node.refs[mountpoint]
        return self._load(mountpoint, ContentHash.from_hex(ref.hash_hex), node)

    def _catalog_for(self, path: str) -> _Node:
        """The catalog holding `path`'s row (for a mount point: the child, whose root it is)."""
        node = self.root
        while node.refs:
            prefix = node.mountpoint
            rest = path[len(prefix) :].split("/")[1:] if path != prefix else []
            found = None
            for part in rest:
                prefix = f"{prefix}/{part}"
                if prefix in node.refs:
                    found = prefix
                    break
            if found is None:
                break
            node = self._child(node, found)
        return node

    def _mark_dirty(self, node: _Node) -> None:
        current: _Node | None = node
        while current is not None and not current.dirty:
            current.dirty = True
            current = current.parent

    # ------------------------------------------------------------------------ row helpers
    def _lookup(self, path: str) -> tuple[_Node, Row | None]:
        node = self._catalog_for(path)
        return node, node.writer.lookup(path)

    def _write_dir_row(self, node: _Node, row: Row) -> None:
        """Update a directory row; a nested root also updates its transition point (§2.9)."""
        node.writer.update(row)
        self._mark_dirty(node)
        if row.is_nested_root and node.parent is not None:
            flags = FLAG_DIR | FLAG_DIR_NESTED_MOUNTPOINT
            node.parent.writer.update(replace(row, flags=flags))
            self._mark_dirty(node.parent)

    def _adjust_linkcount(self, dir_path: str, delta: int) -> None:
        node, row = self._lookup(dir_path)
        if row is None:
            raise CatalogWriteError(f"directory {dir_path!r} vanished from its catalog")
        self._write_dir_row(node, replace(row, linkcount=row.linkcount + delta))

    def _ensure_dir(self, path: str) -> None:
        # Directories seen in this transaction stay directories until `remove` (which forgets
        # them): a file or symlink cannot replace a directory without removing it first.
        if path == "" or path in self._known_dirs:
            return
        _node, row = self._lookup(path)
        if row is not None:
            if not row.is_dir:
                raise TransactionError(
                    f"/{path.lstrip('/')} exists and is not a directory: remove it first"
                )
            self._known_dirs.add(path)
            return
        self._ensure_dir(parent_path(path))
        self._insert_dir(path, DIR_MODE, self.now, self.default_uid, self.default_gid, None)
        self._known_dirs.add(path)

    def _insert_dir(
        self, path: str, mode: int, mtime: int, uid: int, gid: int, xattr: bytes | None
    ) -> None:
        node = self._catalog_for(path)
        row = Row(
            path=path,
            mode=stat.S_IFDIR | sanitize_mode(mode),
            mtime=mtime,
            flags=FLAG_DIR,
            size=DIRECTORY_SIZE,
            uid=uid,
            gid=gid,
            linkcount=2,
            xattr=xattr,
        )
        node.writer.insert(row)
        self._mark_dirty(node)
        self._adjust_linkcount(parent_path(path), +1)

    def _file_flags(self, chunked: bool) -> int:
        flags = FLAG_FILE | (self.options.hash_algorithm.flags_value << FLAG_HASH_ALGORITHM_SHIFT)
        if not self.options.compress:
            flags |= COMPRESSION_NONE << FLAG_COMPRESSION_SHIFT
        if chunked:
            flags |= FLAG_FILE_CHUNK
        return flags

    def _remove_leaf(self, node: _Node, row: Row) -> None:
        node.writer.delete(row.path)
        self._mark_dirty(node)
        if row.hardlink_group:
            self._shrink_hardlink_group(node, row)

    def _put_leaf(self, row: Row, chunks: list[ChunkRow] | None = None) -> None:
        """Insert or replace a non-directory row, then honour catalog markers."""
        parent = parent_path(row.path)
        self._ensure_dir(parent)
        node = self._catalog_for(row.path)
        try:
            node.writer.insert(row)  # new paths (the common case) cost one statement
        except EntryExistsError:
            existing = node.writer.lookup(row.path)
            assert existing is not None
            if existing.is_dir:
                raise TransactionError(
                    f"{row.path} is a directory: remove it before writing a file there"
                ) from None
            self._remove_leaf(node, existing)
            node.writer.insert(row)
        if chunks:
            node.writer.set_chunks(row.path, chunks)
        self._mark_dirty(node)
        if base_name(row.path) == CATALOG_MARKER and parent != "":
            self._make_mountpoint(parent)

    # ----------------------------------------------------------------------- public: read
    @property
    def has_changes(self) -> bool:
        """True once any operation changed a catalog (publish anyway makes a new revision)."""
        return bool(self._pending) or any(n.dirty for n in self._nodes.values())

    def stat(self, path: str) -> Row | None:
        """The row `path` has in this transaction (pending changes included), or None."""
        self._check_open()
        self._drain(block=True)
        return self._lookup(repository_path(path))[1]

    def exists(self, path: str) -> bool:
        return self.stat(path) is not None

    def listdir(self, path: str) -> list[str]:
        """Names in directory `path` (nested catalogs followed; markers included)."""
        self._check_open()
        self._drain(block=True)
        path = repository_path(path)
        node, row = self._lookup(path)
        if row is None or not row.is_dir:
            raise NotFoundError(f"{path or '/'} is not a directory in this transaction")
        return [child.name for child in node.writer.children(path)]

    # ---------------------------------------------------------------------- public: write
    @_guarded
    def mkdir(
        self,
        path: str,
        *,
        mode: int = 0o755,
        mtime: int | None = None,
        uid: int | None = None,
        gid: int | None = None,
        xattrs: Mapping[bytes, bytes] | None = None,
    ) -> None:
        """Create a directory (parents implied); an existing one gets the given metadata."""
        self._check_open()
        self._drain(block=True)
        path = repository_path(path)
        uid = self.default_uid if uid is None else uid
        gid = self.default_gid if gid is None else gid
        mtime = self.now if mtime is None else int(mtime)
        xattr = encode_xattrs(xattrs or {})
        node, existing = self._lookup(path)
        if existing is None:
            self._ensure_dir(parent_path(path))
            self._insert_dir(path, mode, mtime, uid, gid, xattr)
            return
        if not existing.is_dir:
            raise TransactionError(f"{path} exists and is not a directory: remove it first")
        updated = replace(
            existing,
            mode=stat.S_IFDIR | sanitize_mode(mode),
            mtime=mtime,
            uid=uid,
            gid=gid,
            xattr=xattr,
        )
        if updated != existing:
            self._write_dir_row(node, updated)

    @_guarded
    def symlink(
        self,
        path: str,
        target: str,
        *,
        mtime: int | None = None,
        uid: int | None = None,
        gid: int | None = None,
        allow_variables: bool = False,
    ) -> None:
        """Create or replace a symlink (flags 12, mode 0120777, size = target length)."""
        self._check_open()
        self._drain(block=True)
        path = repository_path(path)
        if path == "":
            raise InvalidPathError("the repository root cannot be a symlink")
        validate_symlink_target(target, allow_variables=allow_variables)
        self._put_leaf(
            Row(
                path=path,
                mode=SYMLINK_MODE,
                mtime=self.now if mtime is None else int(mtime),
                flags=FLAG_FILE | FLAG_LINK,
                size=len(target.encode("utf-8", "surrogateescape")),
                symlink=target,
                uid=self.default_uid if uid is None else uid,
                gid=self.default_gid if gid is None else gid,
            )
        )

    @_guarded
    def add_special_file(
        self,
        path: str,
        mode: int,
        *,
        rdev: int = 0,
        mtime: int | None = None,
        uid: int | None = None,
        gid: int | None = None,
    ) -> None:
        """Create or replace a char/block device, FIFO or socket (spec §2.4, §2.6).

        `mode` is a full st_mode whose type is S_IFCHR, S_IFBLK, S_IFIFO or S_IFSOCK; `rdev` is
        the device number (`os.makedev(major, minor)`), stored in `size` for devices, ignored
        for FIFOs and sockets (size 0), as the stock publisher stores them. Flags are 20, there
        is no content object. setuid/setgid are stripped like everywhere else.
        """
        self._check_open()
        self._drain(block=True)
        path = repository_path(path)
        kind = stat.S_IFMT(mode)
        if kind not in SPECIAL_FILE_KINDS:
            raise TransactionError(
                f"{path}: mode {mode:#o} is not a char/block device, FIFO or socket: use "
                "add_file, mkdir or symlink for other types"
            )
        if path == "":
            raise InvalidPathError("the repository root is a directory, not a special file")
        is_device = kind in (stat.S_IFCHR, stat.S_IFBLK)
        if is_device and not 0 <= rdev < 1 << 64:
            raise TransactionError(f"{path}: device number {rdev} does not fit a dev_t")
        self._put_leaf(
            Row(
                path=path,
                mode=kind | sanitize_mode(mode),
                mtime=self.now if mtime is None else int(mtime),
                flags=SPECIAL_FILE_FLAGS,
                size=rdev if is_device else 0,
                uid=self.default_uid if uid is None else uid,
                gid=self.default_gid if gid is None else gid,
            )
        )

    @_guarded
    def add_file(
        self,
        path: str,
        content: BinaryIO | bytes,
        *,
        mode: int = 0o644,
        mtime: int | None = None,
        uid: int | None = None,
        gid: int | None = None,
        xattrs: Mapping[bytes, bytes] | None = None,
    ) -> None:
        """Add or replace a regular file with the bytes of `content` (a stream or bytes).

        The stream is read here, in the caller's thread; compression, hashing and upload run
        on the pool and the catalog row is written once every piece is stored. setuid and setgid
        bits are stripped, the sticky bit is kept (`cvmfs.paths.sanitize_mode`).
        """
        self._check_open()
        path = repository_path(path)
        if path == "":
            raise InvalidPathError("the repository root is a directory, not a file")
        stream: BinaryIO = io.BytesIO(content) if isinstance(content, bytes) else content
        self._ensure_dir(parent_path(path))
        row = Row(
            path=path,
            mode=stat.S_IFREG | sanitize_mode(mode),
            mtime=self.now if mtime is None else int(mtime),
            flags=0,
            uid=self.default_uid if uid is None else uid,
            gid=self.default_gid if gid is None else gid,
            xattr=encode_xattrs(xattrs or {}),
        )
        pending = _PendingFile(row)
        size = 0
        if self.options.chunking is not None:
            for piece in iter_chunks(stream, self.options.chunking):
                size += piece.size
                if piece.offset == 0 and piece.last:
                    pending.whole = self._pipeline.submit(piece.data, ObjectSuffix.FILE)
                else:
                    future = self._pipeline.submit(piece.data, ObjectSuffix.PARTIAL)
                    pending.chunks.append((piece.offset, piece.size, future))
        else:
            pending.content_hash, size = self._store_unchunked(stream)
        pending.row = replace(row, size=size, flags=self._file_flags(bool(pending.chunks)))
        self._pending.append(pending)
        self.files_added += 1
        self._drain(block=False)

    @_guarded
    def add_local_file(
        self,
        path: str,
        fd: int,
        *,
        mode: int = 0o644,
        mtime: int | None = None,
        uid: int | None = None,
        gid: int | None = None,
    ) -> None:
        """Add or replace a regular file from the open local file `fd`, which the transaction
        takes over (it closes it, whatever happens).

        A file that is not chunked (at most the minimum chunk size) is read on a worker, with
        its compression, so the caller's thread only hands it over: an import of a directory
        then keeps its main thread for the catalog (bench/README.md, "Reading on the workers").
        Larger files are read here, as `add_file` does.
        """
        try:
            self._check_open()
            path = repository_path(path)
            if path == "":
                raise InvalidPathError("the repository root is a directory, not a file")
            size = os.fstat(fd).st_size
            limit = self._whole_file_limit()
        except BaseException:
            os.close(fd)
            raise
        if limit is None or size > limit:
            with os.fdopen(fd, "rb") as stream:
                self.add_file(path, stream, mode=mode, mtime=mtime, uid=uid, gid=gid)
            return
        try:
            self._ensure_dir(parent_path(path))
        except BaseException:
            os.close(fd)
            raise
        row = Row(
            path=path,
            mode=stat.S_IFREG | sanitize_mode(mode),
            mtime=self.now if mtime is None else int(mtime),
            flags=self._file_flags(False),
            uid=self.default_uid if uid is None else uid,
            gid=self.default_gid if gid is None else gid,
            xattr=None,
        )
        pending = _PendingFile(row, local=self._pipeline.submit_local_file(fd, size, limit))
        self._pending.append(pending)
        self.files_added += 1
        self._drain(block=False)

    def _whole_file_limit(self) -> int | None:
        """Files up to this size are stored whole (spec §1.5: never cut below the minimum)."""
        if self.options.chunking is None:
            return None  # streamed through `_store_unchunked`, any size
        return self.options.chunking.min_size

    @_guarded
    def add_stored_file(
        self,
        path: str,
        *,
        size: int,
        content_hash: ContentHash | None,
        chunks: Sequence[tuple[int, int, ContentHash]] = (),
        compressed: bool = True,
        mode: int = 0o644,
        mtime: int | None = None,
        mtimens: int | None = None,
        uid: int | None = None,
        gid: int | None = None,
        xattrs: Mapping[bytes, bytes] | None = None,
    ) -> None:
        """Add or replace a regular file whose objects are already stored (a gateway commit,
        where the publisher uploaded them); `chunks` are (offset, size, hash of the P object).

        Nothing is read or uploaded: the caller checks that the objects exist.
        """
        self._check_open()
        self._drain(block=True)
        path = repository_path(path)
        if path == "":
            raise InvalidPathError("the repository root is a directory, not a file")
        if content_hash is None and not chunks:
            raise TransactionError(f"{path}: a file needs a content hash or chunks")
        algorithm = content_hash.algorithm if content_hash is not None else chunks[0][2].algorithm
        flags = FLAG_FILE | (algorithm.flags_value << FLAG_HASH_ALGORITHM_SHIFT)
        if not compressed:
            flags |= COMPRESSION_NONE << FLAG_COMPRESSION_SHIFT
        if chunks:
            flags |= FLAG_FILE_CHUNK
        row = Row(
            path=path,
            mode=stat.S_IFREG | sanitize_mode(mode),
            mtime=self.now if mtime is None else int(mtime),
            flags=flags,
            size=size,
            content_hash=None if content_hash is None else content_hash.digest,
            uid=self.default_uid if uid is None else uid,
            gid=self.default_gid if gid is None else gid,
            mtimens=mtimens,
            xattr=encode_xattrs(xattrs or {}),
        )
        self._put_leaf(row, [ChunkRow(offset, length, h.digest) for offset, length, h in chunks])
        self.files_added += 1

    def _store_unchunked(self, stream: BinaryIO) -> tuple[ContentHash, int]:
        """Stream one whole-file object through a spooled temp file (no size limit)."""
        encoder = ObjectEncoder(
            self.options.hash_algorithm,
            compressed=self.options.compress,
            compression=self.options.compression,
        )
        with tempfile.SpooledTemporaryFile(max_size=16 << 20, dir=str(self._tmp)) as spool:
            while block := stream.read(_READ_BLOCK):
                spool.write(encoder.update(block))
            spool.write(encoder.finish())
            spool.seek(0)
            key = object_path(encoder.content_hash, ObjectSuffix.FILE)
            self._pipeline.upload(key, spool, size=encoder.stored_size)
        return encoder.content_hash, encoder.plain_size

    def _drain(self, *, block: bool) -> None:
        """Write the rows of finished files, in the order they were added."""
        while self._pending and (block or self._pending[0].done()):
            pending = self._pending.popleft()
            if pending.local is not None:
                local_hash, local_size = pending.local.result()
                self._put_leaf(
                    replace(pending.row, size=local_size, content_hash=local_hash.digest)
                )
                continue
            chunks: list[ChunkRow] = []
            content_hash = pending.content_hash
            if pending.whole is not None:
                content_hash = pending.whole.result()
            for offset, size, future in pending.chunks:
                chunks.append(ChunkRow(offset, size, future.result().digest))
            digest = None if chunks or content_hash is None else content_hash.digest
            row = replace(pending.row, content_hash=digest)
            self._put_leaf(row, chunks)

    @_guarded
    def link(self, existing: str, new_path: str) -> None:
        """Hard link `new_path` to the regular file `existing`.

        CVMFS keeps hard-link groups only inside one directory (spec §7); a link into another
        directory is stored as an independent copy (same content object, link count 1).
        """
        self._check_open()
        self._drain(block=True)
        existing, new_path = repository_path(existing), repository_path(new_path)
        if existing == new_path:
            raise TransactionError(f"cannot hard link {existing} to itself")
        node, row = self._lookup(existing)
        if row is None or not row.is_regular:
            raise NotFoundError(f"{existing} is not a regular file in this transaction")
        chunks = node.writer.get_chunks(existing) if row.is_chunked else []
        if parent_path(existing) != parent_path(new_path) or base_name(new_path) in (
            CATALOG_MARKER,
            AUTO_CATALOG_MARKER,
        ):
            self._put_leaf(replace(row, path=new_path, linkcount=1, hardlink_group=0), chunks)
            return
        target_node, current = self._lookup(new_path)
        if current is not None:
            if current.is_dir:
                raise TransactionError(f"{new_path} is a directory: remove it first")
            self._remove_leaf(target_node, current)
            node, row = self._lookup(existing)
            assert row is not None
        group = row.hardlink_group or node.writer.max_hardlink_group() + 1
        members = self._group_members(node, row) if row.hardlink_group else [row]
        count = len(members) + 1
        for member in members:
            node.writer.update(replace(member, hardlink_group=group, linkcount=count))
        node.writer.insert(replace(row, path=new_path, hardlink_group=group, linkcount=count))
        if chunks:
            node.writer.set_chunks(new_path, chunks)
        self._mark_dirty(node)

    def _group_members(self, node: _Node, row: Row) -> list[Row]:
        return [
            r
            for r in node.writer.children(parent_path(row.path))
            if r.hardlink_group == row.hardlink_group and not r.is_dir
        ]

    def _shrink_hardlink_group(self, node: _Node, removed: Row) -> None:
        members = [r for r in self._group_members(node, removed) if r.path != removed.path]
        for member in members:
            if len(members) == 1:
                node.writer.update(replace(member, hardlink_group=0, linkcount=1))
            else:
                node.writer.update(replace(member, linkcount=len(members)))

    # --------------------------------------------------------------------- public: remove
    @_guarded
    def remove(self, path: str, *, missing_ok: bool = False) -> None:
        """Remove a file, symlink or directory tree (nested catalogs below it included)."""
        self._check_open()
        self._drain(block=True)
        path = repository_path(path)
        if path == "":
            raise InvalidPathError("the repository root cannot be removed")
        node, row = self._lookup(path)
        if row is None:
            if missing_ok:
                return
            raise NotFoundError(f"{path} does not exist in this transaction")
        if not row.is_dir:
            self._remove_leaf(node, row)
            name = base_name(path)
            parent = parent_path(path)
            if name == CATALOG_MARKER and node.mountpoint == parent and parent != "":
                # the catalog is gone, so it is no longer an automatic one either
                auto = node.writer.lookup(f"{parent}/{AUTO_CATALOG_MARKER}")
                if auto is not None:
                    self._remove_leaf(node, auto)
                self._merge_into_parent(node)
            return
        self._known_dirs = {d for d in self._known_dirs if not is_below(d, path)}
        if row.is_nested_root:
            assert node.parent is not None
            self._drop_catalog(node)
            node.parent.writer.delete(path)
        else:
            self._remove_subtree(node, path)
            node.writer.delete(path)
            self._mark_dirty(node)
        self._adjust_linkcount(parent_path(path), -1)

    def _remove_subtree(self, node: _Node, path: str) -> None:
        for row in list(node.writer.iter_subtree(path)):
            if row.is_mountpoint:
                self._drop_catalog(self._child(node, row.path))
            node.writer.delete(row.path)
        self._mark_dirty(node)

    def _drop_catalog(self, child: _Node) -> None:
        """Detach a nested catalog and everything below it from its parent."""
        parent = child.parent
        assert parent is not None
        parent.subtree_delta = add_counters(parent.subtree_delta, child.reported_total, -1)
        parent.writer.remove_nested(child.mountpoint)
        del parent.refs[child.mountpoint]
        self._mark_dirty(parent)
        for mountpoint in [m for m in self._nodes if is_below(m, child.mountpoint)]:
            dropped = self._nodes.pop(mountpoint)
            if not dropped.writer.closed:
                dropped.writer.abort()

    # --------------------------------------------------------------- nested catalogs (§2.9)
    def _make_mountpoint(self, path: str) -> None:
        """Move the subtree at directory `path` into a new nested catalog."""
        parent = self._catalog_for(path)
        if parent.mountpoint == path:
            return  # already a mount point
        row = parent.writer.lookup(path)
        if row is None or not row.is_dir:
            raise CatalogWriteError(f"cannot make {path} a nested catalog: not a directory")
        child_writer = CatalogWriter.create(self._new_db_path(), row)
        child = _Node(
            mountpoint=path,
            writer=child_writer,
            parent=parent,
            old_hash=None,
            old_revision=0,
            old_subtree=zero_counters(),
            reported_total=zero_counters(),
            refs={},
        )
        self._nodes[path] = child
        for moved in list(parent.writer.iter_subtree(path)):
            child.writer.insert(moved)
            if moved.is_chunked:
                child.writer.set_chunks(moved.path, parent.writer.get_chunks(moved.path))
            parent.writer.delete(moved.path)
        for mountpoint in [m for m in parent.refs if is_below(m, path)]:
            self._reparent(parent.refs[mountpoint], parent, child)
        parent.writer.update(replace(row, flags=FLAG_DIR | FLAG_DIR_NESTED_MOUNTPOINT))
        ref = NestedRef(path, "", 0)  # filled in when the child is finalized
        parent.writer.set_nested(ref)
        parent.refs[path] = ref
        self._mark_dirty(child)

    def _reparent(self, ref: NestedRef, old: _Node, new: _Node) -> None:
        grandchild = self._child(old, ref.path)
        old.writer.remove_nested(ref.path)
        del old.refs[ref.path]
        new.writer.set_nested(ref)
        new.refs[ref.path] = ref
        old.subtree_delta = add_counters(old.subtree_delta, grandchild.reported_total, -1)
        new.subtree_delta = add_counters(new.subtree_delta, grandchild.reported_total)
        grandchild.parent = new
        self._mark_dirty(old)
        self._mark_dirty(new)

    def _merge_into_parent(self, child: _Node) -> None:
        """The marker is gone: fold the nested catalog back into its parent catalog."""
        parent = child.parent
        assert parent is not None
        root = child.writer.lookup(child.mountpoint)
        assert root is not None
        group_offset = parent.writer.max_hardlink_group()
        for moved in list(child.writer.iter_subtree(child.mountpoint)):
            if moved.hardlink_group:
                moved = replace(moved, hardlink_group=moved.hardlink_group + group_offset)
            parent.writer.insert(moved)
            if moved.is_chunked:
                parent.writer.set_chunks(moved.path, child.writer.get_chunks(moved.path))
        for ref in list(child.refs.values()):
            self._reparent(ref, child, parent)
        parent.subtree_delta = add_counters(parent.subtree_delta, child.reported_total, -1)
        parent.writer.remove_nested(child.mountpoint)
        del parent.refs[child.mountpoint]
        parent.writer.update(replace(root, flags=FLAG_DIR))
        child.writer.abort()
        del self._nodes[child.mountpoint]
        self._mark_dirty(parent)

    # ------------------------------------------------------------------- automatic policy
    def _apply_catalog_limit(self) -> None:
        """Split catalogs above `max_catalog_entries` at their heaviest fitting directories.

        Directory weights (rows at and below each directory in the catalog) are computed once
        per catalog and updated after each split, so splitting is linear in the catalog size.
        """
        limit = self.max_catalog_entries
        if limit is None:
            return
        for node in [n for n in self._nodes.values() if n.dirty]:
            count = node.writer.entry_count()
            if count <= limit:
                continue
            weights = dict(self._subtree_weights(node, node.mountpoint))
            del weights[node.mountpoint]  # the catalog's own root cannot be split off
            while count > limit:
                # room for the two marker files the new catalog gets
                fitting = [(w, p) for p, w in weights.items() if 1 < w <= limit - 2]
                if not fitting:
                    break  # one flat directory above the limit: nothing to split at
                weight, target = max(fitting)
                self._insert_marker(target, AUTO_CATALOG_MARKER)
                self._insert_marker(target, CATALOG_MARKER)
                moved = weight - 1  # the directory row stays, as the transition point
                count -= moved
                ancestor = parent_path(target)
                while ancestor in weights:
                    weights[ancestor] -= moved
                    ancestor = parent_path(ancestor)
                below = target + "/"
                for path in [p for p in weights if p == target or p.startswith(below)]:
                    del weights[path]

    def _insert_marker(self, directory: str, name: str) -> None:
        stored, content_hash = self._pipeline.encode(b"")
        self._pipeline.upload(object_path(content_hash, ObjectSuffix.FILE), stored)
        self._put_leaf(
            Row(
                path=f"{directory}/{name}",
                mode=stat.S_IFREG | 0o644,
                mtime=self.now,
                flags=self._file_flags(False),
                content_hash=content_hash.digest,
                uid=self.default_uid,
                gid=self.default_gid,
            )
        )

    def _subtree_weights(self, node: _Node, path: str) -> Iterator[tuple[str, int]]:
        """(directory, number of rows at and below it in this catalog), post-order."""
        total = 1
        for row in list(node.writer.children(path)):
            if row.is_dir and not row.is_mountpoint:
                for sub_path, weight in self._subtree_weights(node, row.path):
                    yield sub_path, weight
                    if sub_path == row.path:
                        total += weight
            else:
                total += 1
        yield path, total

    # ------------------------------------------------------------------------ finalizing
    @_guarded
    def finalize_catalogs(self, *, last_modified: int) -> list[FinalizedCatalog]:
        """Write every changed catalog bottom-up; the root (last in the list) last of all."""
        self._check_open()
        self._drain(block=True)
        self._apply_catalog_limit()
        self._mark_dirty(self.root)  # the root always gets the new revision number
        written: list[FinalizedCatalog] = []
        dirty = sorted(
            (n for n in self._nodes.values() if n.dirty), key=lambda n: (-n.depth, n.mountpoint)
        )
        for node in dirty:
            self_counters = node.writer.compute_self_counters()
            subtree = add_counters(node.old_subtree, node.subtree_delta)
            revision = self.base_revision + 1 if node.parent is None else node.old_revision + 1
            db_path = node.writer.finalize(
                revision=revision,
                last_modified=last_modified,
                previous_revision=node.old_hash,
                subtree=subtree,
                self_counters=self_counters,
            )
            data = db_path.read_bytes()
            stored, content_hash = compress_and_hash(
                data, self.options.hash_algorithm, CATALOG_COMPRESSION
            )
            self._pipeline.upload(object_path(content_hash, ObjectSuffix.CATALOG), stored)
            written.append(FinalizedCatalog(node.mountpoint, content_hash, len(data), revision))
            db_path.unlink()
            if node.parent is not None:
                ref = NestedRef(node.mountpoint, content_hash.hex, len(data))
                node.parent.writer.set_nested(ref)
                node.parent.refs[node.mountpoint] = ref
                total = add_counters(self_counters, subtree)
                node.parent.subtree_delta = add_counters(
                    add_counters(node.parent.subtree_delta, total),
                    node.reported_total,
                    -1,
                )
                node.reported_total = total
        return written

    @property
    def objects_uploaded(self) -> int:
        return self._pipeline.objects_uploaded

    @property
    def bytes_uploaded(self) -> int:
        return self._pipeline.bytes_uploaded
