"""Read and verify a CVMFS repository: whitelist, certificate, manifest, then catalogs and files.

Every object is hash-verified before any of its bytes are used; catalogs are cached on disk.
"""

from __future__ import annotations

import datetime as dt
import io
import os
import tempfile
from collections import OrderedDict
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from types import TracebackType
from typing import IO, Any, BinaryIO, cast

from cvmfs.catalog import (
    Catalog,
    DirectoryEntry,
    NestedCatalogRef,
    normalize_path,
)
from cvmfs.errors import (
    CvmfsError,
    FormatError,
    IntegrityError,
    InvalidPathError,
    NotFoundError,
    RepositoryNameMismatchError,
)
from cvmfs.history import HistoryDb, Tag
from cvmfs.manifest import ROOT_PATH_MD5, Manifest, SignedManifest
from cvmfs.objects import ContentHash, ObjectSuffix, VerifyingDecoder, hash_bytes, new_hasher
from cvmfs.reflog import REFLOG_KEY, Ref, ReflogDb
from cvmfs.storage import HttpStorage, LocalStorage, Storage
from cvmfs.whitelist import SignedWhitelist, Whitelist

MANIFEST_KEY = ".cvmfspublished"  # spec §1.1
WHITELIST_KEY = ".cvmfswhitelist"  # spec §1.1
READ_PIECE = 1 << 20
SPOOL_IN_MEMORY = 16 << 20  # objects up to the maximum chunk size stay in memory
DEFAULT_MAX_OPEN_CATALOGS = 128  # SQLite connections kept open; others reopen on demand


def open_storage(location: str | os.PathLike[str]) -> Storage:
    """`HttpStorage` for http(s) URLs, else `LocalStorage` for a stratum-0 directory."""
    text = os.fspath(location)
    if text.startswith(("http://", "https://")):
        return HttpStorage(text)
    if not Path(text).is_dir():
        raise NotFoundError(f"{text} is neither an http(s) URL nor a repository directory")
    return LocalStorage(text)


def read_public_keys(keys: Sequence[str | os.PathLike[str]]) -> list[str]:
    """PEM texts from PEM strings, key files, or directories of `*.pub` files."""
    pems: list[str] = []
    for key in keys:
        if isinstance(key, str) and "-----BEGIN" in key:
            pems.append(key)
            continue
        path = Path(key)
        if path.is_dir():
            pems.extend(p.read_text() for p in sorted(path.glob("*.pub")))
        elif path.is_file():
            pems.append(path.read_text())
        else:
            raise NotFoundError(f"public key {path} not found: pass the <fqrn>.pub file")
    return pems


@dataclass(frozen=True)
class CatalogInfo:
    """One catalog of a revision, as `catalogs()` lists it."""

    mountpoint: str  # catalog form: '' for the root catalog
    content_hash: ContentHash
    size_recorded_by_parent: int | None  # parent's nested_catalogs.size; manifest B for the root
    uncompressed_size: int
    stored_size: int
    properties: dict[str, str]
    nested_catalogs: tuple[NestedCatalogRef, ...]
    statistics: dict[str, int]

    @property
    def object_key(self) -> str:
        return self.content_hash.object_key(ObjectSuffix.CATALOG)

    @property
    def revision(self) -> int:
        return int(self.properties.get("revision", "0"))


@dataclass(frozen=True)
class _LoadedCatalog:
    catalog: Catalog
    uncompressed_size: int
    stored_size: int


class _ObjectCache:
    """Verified, inflated catalogs and databases kept as files, shared by revision views."""

    def __init__(self, cache_dir: str | os.PathLike[str] | None) -> None:
        if cache_dir is None:
            self._tmp: tempfile.TemporaryDirectory[str] | None = tempfile.TemporaryDirectory(
                prefix="cvmfs-reader-"
            )
            self.root = Path(self._tmp.name)
        else:
            self._tmp = None
            self.root = Path(cache_dir)
            self.root.mkdir(parents=True, exist_ok=True)
        self.catalogs: dict[tuple[ContentHash, str], _LoadedCatalog] = {}
        self.max_open = DEFAULT_MAX_OPEN_CATALOGS
        self._recently_used: OrderedDict[tuple[ContentHash, str], None] = OrderedDict()

    def touch(self, key: tuple[ContentHash, str]) -> None:
        """Mark a catalog used; release the connections of the least recently used ones so a
        walk over thousands of nested catalogs stays within the file-descriptor limit."""
        self._recently_used[key] = None
        self._recently_used.move_to_end(key)
        while len(self._recently_used) > self.max_open:
            stale, _ = self._recently_used.popitem(last=False)
            self.catalogs[stale].catalog.release()

    def close(self) -> None:
        for loaded in self.catalogs.values():
            loaded.catalog.close()
        self.catalogs.clear()
        if self._tmp is not None:
            self._tmp.cleanup()


class RepositoryReader:
    """A verified, read-only view of one revision of a repository.

    `RepositoryReader.open(url_or_dir, fqrn, public_keys)` checks the whitelist signature with
    the master public key(s) and its expiry against `now`, the certificate object and its
    fingerprint in the whitelist, and the manifest signature. `at_tag()` / `at_root_hash()` /
    `at_revision()` give views of older revisions sharing the same trust and caches.
    """

    def __init__(
        self,
        storage: Storage,
        fqrn: str,
        public_keys: Sequence[str | os.PathLike[str]],
        *,
        now: dt.datetime | None = None,
        cache_dir: str | os.PathLike[str] | None = None,
        manifest_data: bytes | None = None,
        verify_signatures: bool = True,
        max_open_catalogs: int = DEFAULT_MAX_OPEN_CATALOGS,
    ) -> None:
        self.storage = storage
        self.fqrn = fqrn
        self.now = now or dt.datetime.now(dt.UTC)
        self._cache = _ObjectCache(cache_dir)
        self._cache.max_open = max(1, max_open_catalogs)
        self._owns_cache = True
        self._owns_storage = False  # set by open(), which made the storage
        self.signatures_verified = False
        try:
            data = manifest_data if manifest_data is not None else storage.get(MANIFEST_KEY)
            self.signed_manifest = SignedManifest.parse(data)
            self._check_manifest_identity(self.signed_manifest.manifest)
            self.signed_whitelist: SignedWhitelist | None = None
            self.certificate_pem: bytes | None = None
            if verify_signatures:
                pems = read_public_keys(public_keys)
                if not pems:
                    raise CvmfsError("no public master key given: pass the <fqrn>.pub file")
                self._verify_chain(pems)
                self.signatures_verified = True
        except BaseException:
            self._cache.close()
            raise
        self.root_hash: ContentHash = self.manifest.root_catalog_hash
        self.root_size: int | None = self.manifest.root_catalog_size
        try:
            self.root_catalog  # noqa: B018 - fetch and verify the root catalog now, as a client does
        except BaseException:
            self._cache.close()
            raise

    @classmethod
    def open(
        cls,
        location: str | os.PathLike[str],
        fqrn: str,
        public_keys: Sequence[str | os.PathLike[str]],
        **kwargs: Any,
    ) -> RepositoryReader:
        """Open a repository by URL (`http://host/cvmfs/<fqrn>`) or stratum-0 directory."""
        storage = open_storage(location)
        try:
            reader = cls(storage, fqrn, public_keys, **kwargs)
        except BaseException:
            if isinstance(storage, HttpStorage):
                storage.close()
            raise
        reader._owns_storage = True
        return reader

    # lifecycle
    def close(self) -> None:
        if self._owns_cache:
            self._cache.close()
            if self._owns_storage and isinstance(self.storage, HttpStorage):
                self.storage.close()

    def __enter__(self) -> RepositoryReader:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    # trust chain (spec §3.6)
    @property
    def manifest(self) -> Manifest:
        return self.signed_manifest.manifest

    def _check_manifest_identity(self, manifest: Manifest) -> None:
        if manifest.repository_name != self.fqrn:
            raise RepositoryNameMismatchError(
                f"the manifest is for {manifest.repository_name!r}, not {self.fqrn!r}: "
                "check the repository name and URL"
            )
        if manifest.root_path_md5 != ROOT_PATH_MD5:
            raise FormatError(f"manifest R is {manifest.root_path_md5}, must be md5('')")

    def _verify_chain(self, master_public_pems: list[str]) -> None:
        signed_whitelist = SignedWhitelist.parse(self.storage.get(WHITELIST_KEY))
        signed_whitelist.verify(master_public_pems)
        whitelist = signed_whitelist.whitelist
        whitelist.check_repository_name(self.fqrn)
        whitelist.check_not_expired(self.now)
        certificate_hash = self.manifest.certificate_hash
        if certificate_hash is None:
            raise FormatError("the manifest has no certificate (X) field")
        certificate = self.fetch_object(certificate_hash, ObjectSuffix.CERTIFICATE)
        whitelist.check_certificate(certificate)
        self.signed_manifest.verify(certificate)
        self.signed_whitelist = signed_whitelist
        self.certificate_pem = certificate

    @property
    def whitelist(self) -> Whitelist:
        if self.signed_whitelist is None:
            self.signed_whitelist = SignedWhitelist.parse(self.storage.get(WHITELIST_KEY))
        return self.signed_whitelist.whitelist

    # objects
    def fetch_stored(self, key: str, expected: ContentHash) -> IO[bytes]:
        """Download an object's stored bytes into a spooled file and verify its hash."""
        # Returned open to the caller, who closes it.
        spool = tempfile.SpooledTemporaryFile(max_size=SPOOL_IN_MEMORY)  # noqa: SIM115
        hasher = new_hasher(expected.algorithm)
        try:
            with self.storage.open(key) as body:
                while piece := body.read(READ_PIECE):
                    hasher.update(piece)
                    spool.write(piece)
        except NotFoundError:
            spool.close()
            raise NotFoundError(f"object {key} is missing from {self.storage!r}") from None
        except BaseException:
            spool.close()
            raise
        actual = ContentHash(hasher.digest(), expected.algorithm)
        if actual != expected:
            spool.close()
            raise IntegrityError(
                f"object {key}: content hash {actual.hex} does not match its name; "
                "the stored object is corrupt, restore it from a replica"
            )
        spool.seek(0)
        return cast(IO[bytes], spool)

    def iter_object(
        self,
        content_hash: ContentHash,
        suffix: ObjectSuffix | str = ObjectSuffix.FILE,
        *,
        compressed: bool = True,
        expected_size: int | None = None,
    ) -> Iterator[bytes]:
        """Inflated bytes of a verified object (the hash is checked before the first byte)."""
        key = content_hash.object_key(suffix)
        with self.fetch_stored(key, content_hash) as stored:
            decoder = VerifyingDecoder(
                content_hash, compressed=compressed, expected_size=expected_size, what=key
            )
            while piece := stored.read(READ_PIECE):
                out = decoder.update(piece)
                if out:
                    yield out
            decoder.finish()

    def fetch_object(
        self,
        content_hash: ContentHash,
        suffix: ObjectSuffix | str = ObjectSuffix.FILE,
        *,
        compressed: bool = True,
        expected_size: int | None = None,
    ) -> bytes:
        return b"".join(
            self.iter_object(
                content_hash, suffix, compressed=compressed, expected_size=expected_size
            )
        )

    def _fetch_to_file(
        self, content_hash: ContentHash, suffix: str, target: Path
    ) -> tuple[int, int]:
        """Inflate a verified object into `target` (kept as a cache, named by hash).

        Returns (uncompressed, stored) sizes; the stored size is remembered in a side file.
        """
        stored_note = target.with_name(target.name + ".stored-size")
        if target.exists() and stored_note.exists():
            return target.stat().st_size, int(stored_note.read_text())
        tmp = target.with_name(target.name + ".tmp")
        stored_size = 0
        key = content_hash.object_key(suffix)
        with tmp.open("wb") as out, self.fetch_stored(key, content_hash) as stored:
            decoder = VerifyingDecoder(content_hash, what=key)
            while piece := stored.read(READ_PIECE):
                stored_size += len(piece)
                out.write(decoder.update(piece))
            decoder.finish()
        stored_note.write_text(str(stored_size))
        os.replace(tmp, target)
        return target.stat().st_size, stored_size

    # catalogs
    def load_catalog(self, content_hash: ContentHash, mountpoint: str = "") -> Catalog:
        return self._load(content_hash, mountpoint).catalog

    def _load(self, content_hash: ContentHash, mountpoint: str) -> _LoadedCatalog:
        key = (content_hash, mountpoint)
        loaded = self._cache.catalogs.get(key)
        if loaded is None:
            target = self._cache.root / f"{content_hash.hex}.catalog"
            size, stored_size = self._fetch_to_file(content_hash, ObjectSuffix.CATALOG, target)
            loaded = _LoadedCatalog(Catalog(target, mountpoint=mountpoint), size, stored_size)
            root_prefix = loaded.catalog.root_prefix
            if mountpoint and root_prefix != mountpoint:
                raise FormatError(
                    f"catalog {content_hash.hex} mounted at {mountpoint} has root_prefix "
                    f"{root_prefix!r} (spec §2.3)"
                )
            self._cache.catalogs[key] = loaded
        self._cache.touch(key)
        return loaded

    @property
    def root_catalog(self) -> Catalog:
        return self.load_catalog(self.root_hash, "")

    def catalog_for(self, path: str) -> Catalog:
        """The deepest catalog holding `path` (catalog form), loading nested ones lazily."""
        current = self.root_catalog
        while True:
            ref = current.find_nested_for(path)
            if ref is None:
                return current
            current = self.load_catalog(ref.content_hash, ref.path)

    def stat(self, path: str) -> DirectoryEntry:
        """The entry at `path` (a nested mount point is read from its own catalog's root row)."""
        path = normalize_path(path)
        entry = self.catalog_for(path).lookup(path)
        if entry is None:
            raise NotFoundError(f"{path or '/'} does not exist in revision {self.revision}")
        return entry

    def exists(self, path: str) -> bool:
        try:
            self.stat(path)
        except NotFoundError:
            return False
        return True

    def listdir(self, path: str = "") -> list[DirectoryEntry]:
        """Entries of a directory, sorted by name."""
        entry = self.stat(path)
        if not entry.is_dir:
            raise InvalidPathError(f"{entry.path} is not a directory")
        return self.catalog_for(entry.path).listdir(entry.path)

    def readlink(self, path: str) -> str:
        entry = self.stat(path)
        if not entry.is_symlink:
            raise InvalidPathError(f"{entry.path} is not a symlink")
        return entry.symlink

    def iter_content(self, path_or_entry: str | DirectoryEntry) -> Iterator[bytes]:
        """The content of a regular file in pieces; chunked files are reassembled in order."""
        entry = (
            path_or_entry if isinstance(path_or_entry, DirectoryEntry) else self.stat(path_or_entry)
        )
        if not entry.is_regular:
            raise InvalidPathError(f"{entry.path} is not a regular file")
        if entry.is_external:
            raise CvmfsError(
                f"{entry.path} is an external file: fetch it from the external data URL"
            )
        if entry.is_chunked:
            yield from self._iter_chunks(entry)
        elif entry.content_hash is None:
            raise FormatError(f"{entry.path}: regular file without content hash or chunks")
        else:
            yield from self.iter_object(
                entry.content_hash, compressed=entry.is_compressed, expected_size=entry.size
            )

    def _iter_chunks(self, entry: DirectoryEntry, start: int = 0) -> Iterator[bytes]:
        offset = start
        for chunk in entry.chunks:
            if chunk.offset != offset:
                raise IntegrityError(
                    f"{entry.path}: chunk at {chunk.offset} does not follow the previous one "
                    f"(expected offset {offset})"
                )
            yield from self.iter_object(
                chunk.content_hash,
                ObjectSuffix.PARTIAL,
                compressed=entry.is_compressed,
                expected_size=chunk.size,
            )
            offset += chunk.size
        if offset - start != entry.size:
            raise IntegrityError(
                f"{entry.path}: chunks cover {offset - start} of {entry.size} bytes"
            )

    def read(self, path: str) -> bytes:
        return b"".join(self.iter_content(path))

    def iter_content_from(self, entry: DirectoryEntry, offset: int) -> Iterator[bytes]:
        """Content of a regular file from `offset` on; a chunked file skips whole chunks."""
        if offset >= entry.size:
            return
        if not entry.is_chunked:
            yield from _skip(self.iter_content(entry), offset)
            return
        for index, chunk in enumerate(entry.chunks):
            if chunk.offset <= offset < chunk.offset + chunk.size:
                rest = replace(entry, chunks=entry.chunks[index:], size=entry.size - chunk.offset)
                yield from _skip(self._iter_chunks(rest, start=chunk.offset), offset - chunk.offset)
                return
        raise IntegrityError(f"{entry.path}: no chunk covers offset {offset}")

    def open_file(self, path: str) -> BinaryIO:
        """A binary file object over a regular file's content: streaming, and seekable (a seek
        in a chunked file fetches only the chunks from the new position on)."""
        entry = self.stat(path)
        if not entry.is_regular:
            raise InvalidPathError(f"{entry.path} is not a regular file")
        return cast(BinaryIO, io.BufferedReader(_FileReader(self, entry)))

    def walk_with_catalogs(self, path: str = "") -> Iterator[tuple[str, DirectoryEntry]]:
        """(catalog mount point, entry) for `path` and everything below it, depth first.

        A nested mount point is yielded once, with its row in the parent catalog.
        """
        top = normalize_path(path)
        catalog = self.catalog_for(parent_of(top)) if top else self.root_catalog
        entry = catalog.lookup(top)
        if entry is None:
            raise NotFoundError(f"{top or '/'} does not exist in revision {self.revision}")
        yield catalog.mountpoint, entry
        if entry.is_dir:
            yield from self._walk_dir(top)

    def _walk_dir(self, path: str) -> Iterator[tuple[str, DirectoryEntry]]:
        catalog = self.catalog_for(path)
        for child in catalog.listdir(path):
            yield catalog.mountpoint, child
            if child.is_dir:
                yield from self._walk_dir(child.path)

    def walk(self, path: str = "") -> Iterator[DirectoryEntry]:
        for _, entry in self.walk_with_catalogs(path):
            yield entry

    def catalogs(self) -> list[CatalogInfo]:
        """Every catalog of this revision, root first, then depth first by mount point."""
        infos: list[CatalogInfo] = []
        stack: list[tuple[ContentHash, str, int | None]] = [(self.root_hash, "", self.root_size)]
        while stack:
            content_hash, mountpoint, recorded = stack.pop()
            loaded = self._load(content_hash, mountpoint)
            nested = tuple(loaded.catalog.nested_catalogs())
            infos.append(
                CatalogInfo(
                    mountpoint=mountpoint,
                    content_hash=content_hash,
                    size_recorded_by_parent=recorded,
                    uncompressed_size=loaded.uncompressed_size,
                    stored_size=loaded.stored_size,
                    properties=dict(loaded.catalog.properties),
                    nested_catalogs=nested,
                    statistics=loaded.catalog.statistics(),
                )
            )
            stack.extend((ref.content_hash, ref.path, ref.size) for ref in reversed(nested))
        return infos

    # history, tags, reflog
    @property
    def revision(self) -> int:
        return self.root_catalog.revision

    def history(self) -> HistoryDb | None:
        """The tag database named by the manifest (H), or None if the manifest has none."""
        history_hash = self.manifest.history_hash
        if history_hash is None:
            return None
        target = self._cache.root / f"{history_hash.hex}.history"
        self._fetch_to_file(history_hash, ObjectSuffix.HISTORY, target)
        return HistoryDb(target)

    def tags(self) -> list[Tag]:
        db = self.history()
        if db is None:
            return []
        with db:
            return db.tags()

    def find_tag(self, name: str) -> Tag:
        db = self.history()
        if db is None:
            raise NotFoundError(f"{self.fqrn} has no history database, so no tag {name!r}")
        with db:
            return db.get(name)

    def reflog(self) -> list[Ref]:
        """The refs of `.cvmfsreflog`, checked against the manifest's `Y` hash when present."""
        raw = self.storage.get(REFLOG_KEY)
        expected = self.manifest.reflog_hash
        if expected is not None and hash_bytes(raw, expected.algorithm) != expected:
            raise IntegrityError(
                f"{REFLOG_KEY} does not match the manifest's reflog hash {expected.hex}"
            )
        target = self._cache.root / f"reflog-{hash_bytes(raw).hex}.db"
        if not target.exists():
            target.write_bytes(raw)
        with ReflogDb(target) as db:
            return db.refs()

    def metainfo(self) -> bytes | None:
        if self.manifest.metainfo_hash is None:
            return None
        return self.fetch_object(self.manifest.metainfo_hash, ObjectSuffix.METAINFO)

    # revisions
    def at_root_hash(
        self, root_hash: ContentHash | str, root_size: int | None = None
    ) -> RepositoryReader:
        """A view of the revision whose root catalog is `root_hash` (same trust, same caches)."""
        if isinstance(root_hash, str):
            root_hash = ContentHash.from_hex(root_hash)
        view = object.__new__(RepositoryReader)
        view.__dict__.update(self.__dict__)
        view._owns_cache = False
        view.root_hash = root_hash
        view.root_size = root_size
        view.root_catalog  # noqa: B018 - load (and verify) the root catalog now
        return view

    def at_tag(self, name: str) -> RepositoryReader:
        tag = self.find_tag(name)
        return self.at_root_hash(tag.root_hash, tag.size or None)

    def at_revision(self, revision: int) -> RepositoryReader:
        if revision == self.manifest.revision:
            return self.at_root_hash(
                self.manifest.root_catalog_hash, self.manifest.root_catalog_size
            )
        for tag in self.tags():
            if tag.revision == revision:
                return self.at_root_hash(tag.root_hash, tag.size or None)
        raise NotFoundError(f"no tag records revision {revision} of {self.fqrn}")


def parent_of(path: str) -> str:
    return path.rsplit("/", 1)[0] if path else ""


def _skip(pieces: Iterator[bytes], count: int) -> Iterator[bytes]:
    """The pieces without their first `count` bytes."""
    for piece in pieces:
        if count >= len(piece):
            count -= len(piece)
            continue
        yield piece[count:] if count else piece
        count = 0


class _FileReader(io.RawIOBase):
    """Seekable raw reader over one file; a seek restarts the content stream at the offset."""

    def __init__(self, reader: RepositoryReader, entry: DirectoryEntry) -> None:
        self._reader = reader
        self._entry = entry
        self._position = 0
        self._pieces: Iterator[bytes] | None = None
        self._pending = b""

    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return True

    def tell(self) -> int:
        return self._position

    def seek(self, offset: int, whence: int = io.SEEK_SET) -> int:
        base = {io.SEEK_SET: 0, io.SEEK_CUR: self._position, io.SEEK_END: self._entry.size}
        position = base[whence] + offset
        if position < 0:
            raise ValueError(f"negative seek position {position}")
        if position != self._position:
            self._close_pieces()
            self._position = position
        return self._position

    def readinto(self, buffer: memoryview) -> int:  # type: ignore[override]
        if self._pieces is None:
            self._pieces = self._reader.iter_content_from(self._entry, self._position)
        while not self._pending:
            try:
                self._pending = next(self._pieces)
            except StopIteration:
                return 0
        n = min(len(buffer), len(self._pending))
        buffer[:n] = self._pending[:n]
        self._pending = self._pending[n:]
        self._position += n
        return n

    def _close_pieces(self) -> None:
        if self._pieces is not None:
            close = getattr(self._pieces, "close", None)
            if close is not None:
                close()
        self._pieces = None
        self._pending = b""

    def close(self) -> None:
        self._close_pieces()
        super().close()
