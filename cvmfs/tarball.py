"""A safe, streaming reader of tarballs (plain, gzip, xz, zstd) for import into a repository.

Every entry is checked before it is yielded; the importers feed a writer transaction from it.

How a refusal aborts an import: the reader raises `TarballError` *before* yielding the offending
entry, so nothing of it reaches the transaction. Entries yielded earlier may already have been
added to the transaction and their objects uploaded; the importer lets the error propagate and
the caller discards the transaction without publishing. Nothing becomes visible (the manifest is
only written by a publish), and the uploaded objects are unreferenced orphans, harmless and
removed by garbage collection like any other unreferenced object.

Policies (see `TarPolicy`):
* names: a leading './' is dropped, a trailing '/' too; absolute names, '..', '.', empty
  components, NUL, names over 255 bytes and anything under '/.cvmfs' are refused;
* a symlink is never written through: an entry below a path that is a symlink is refused, as is
  an entry below a regular file, and an entry that changes the type of an earlier path;
* hard links must name a regular file seen earlier in the same tarball;
* character and block devices, FIFOs and (in directories) sockets become CVMFS special files
  (flags 20, the device number in `size`), as the stock publisher stores them; images built from
  a root file system carry /dev nodes, and a client shows them without opening anything, so
  they are no reason to refuse a tarball. `skip_special=True` leaves them out instead and lists
  them in `ImportStats.skipped_special`; a hard link to one becomes another special file;
* setuid and setgid bits are stripped (`cvmfs.paths.sanitize_mode`) and the paths listed in
  `ImportStats.stripped_modes`; the sticky bit is kept;
* relative symlinks that climb out of the imported subtree are refused unless allowed;
  absolute targets are kept (they name the client's own file system, e.g. /cvmfs/other.repo);
* declared sizes beyond `max_file_size` or a running total beyond `max_total_size` are refused.
"""

from __future__ import annotations

import enum
import gzip
import io
import lzma
import os
import stat
import tarfile
import zlib
from collections.abc import Iterator
from dataclasses import dataclass, field, replace
from typing import IO, Any, BinaryIO, Protocol, cast

import zstandard

from cvmfs.chunking import ReadableStream
from cvmfs.errors import CvmfsError, InvalidPathError
from cvmfs.paths import (
    has_setid_bits,
    is_within,
    join,
    raw_bytes,
    relative_parts,
    repository_path,
    resolve_symlink,
    sanitize_mode,
    validate_symlink_target,
)

GIB = 1024**3
_MAGIC_GZIP = b"\x1f\x8b"
_MAGIC_XZ = b"\xfd7zXZ\x00"
_MAGIC_ZSTD = b"\x28\xb5\x2f\xfd"
_MAGIC_BZIP2 = b"BZh"
_PEEK = 6
_BUFFER = 1024 * 1024


class TarballError(CvmfsError):
    """A tarball is malformed or contains an entry the import policy refuses."""


# What a corrupt or truncated archive raises from tarfile or a decompressor.
_READ_ERRORS = (
    tarfile.TarError,
    EOFError,
    OSError,
    zlib.error,
    lzma.LZMAError,
    zstandard.ZstdError,
)


class Compression(enum.Enum):
    NONE = "none"
    GZIP = "gzip"
    XZ = "xz"
    ZSTD = "zstd"


class EntryType(enum.Enum):
    FILE = "file"
    DIRECTORY = "dir"
    SYMLINK = "symlink"
    HARDLINK = "hardlink"
    SPECIAL = "special"  # char/block device, FIFO or socket


@dataclass(frozen=True, kw_only=True)
class TarPolicy:
    """What an import accepts; the defaults are the safe choice for untrusted uploads.

    A dataclass, not a pydantic model: it is built by code from validated settings, and a
    one-file `repo import` should not pay for importing pydantic (~25 ms, bench/README.md).
    """

    max_file_size: int = 64 * GIB  # largest single file, bytes
    max_total_size: int = 1024 * GIB  # sum of all file sizes, bytes
    max_entries: int = 10_000_000  # entries in one tarball or tree
    skip_special: bool = False  # leave devices/FIFOs/sockets out, else publish them
    allow_escaping_symlinks: bool = False  # keep relative symlinks that climb out of the subtree
    allow_symlink_variables: bool = False  # keep '$(' in symlink targets (variant symlinks)

    def __post_init__(self) -> None:
        for name in ("max_file_size", "max_total_size", "max_entries"):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value <= 0:
                raise ValueError(f"TarPolicy.{name} must be a positive integer, not {value!r}")


@dataclass(frozen=True)
class TarEntry:
    """One checked entry. `path` is a repository path under the import prefix.

    `link_target` is the symlink target as written, or for a hard link the repository path of
    the regular file it shares content with. `content` is the file's data for FILE entries,
    readable only until the next entry is requested. A SPECIAL entry's `file_type` is its
    `stat.S_IFMT` (S_IFCHR, S_IFBLK, S_IFIFO, S_IFSOCK) and `rdev` its device number.
    """

    path: str
    type: EntryType
    mode: int
    mtime: int
    uid: int
    gid: int
    size: int = 0
    link_target: str = ""
    content: IO[bytes] | None = None
    mode_stripped: bool = False
    file_type: int = 0
    rdev: int = 0


@dataclass
class ImportStats:
    """What an import did (entries by type, bytes, what was skipped or changed), for reports."""

    entries: int = 0
    files: int = 0
    directories: int = 0
    symlinks: int = 0
    hardlinks: int = 0
    special_files: int = 0
    bytes: int = 0
    skipped_special: list[str] = field(default_factory=list)  # left out (policy skip_special)
    stripped_modes: list[str] = field(default_factory=list)  # lost setuid/setgid


class _Prepended(io.RawIOBase):
    """A stream whose first bytes were already read (to sniff the compression)."""

    def __init__(self, head: bytes, rest: ReadableStream) -> None:
        self._head = head
        self._rest = rest

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: Any) -> int:
        view = memoryview(buffer).cast("B")
        data = self._head[: len(view)] if self._head else self._rest.read(len(view))
        self._head = self._head[len(data) :] if self._head else b""
        view[: len(data)] = data
        return len(data)


class _SequentialFile:
    """The plain tar bytes as `tarfile.TarFile` in mode 'r' reads them: `read`, `tell`, and
    `seek` forwards only (reading and dropping the bytes skipped).

    Stream mode ('r|') reads through tarfile's `_Stream`, which gathers 10 KiB reads in Python and
    re-slices its buffer on every read: on the main thread, where the next file waits for it
    (bench/README.md, "The tarball reader"). Mode 'r' over this object reads a member's data
    with one `read` per request from the C buffered reader below. TarFile seeks only forwards
    here: to the next header after a member's data (its padding, or data nobody read) and, inside
    a member, to where the previous read ended.
    """

    def __init__(self, inner: IO[bytes]) -> None:
        self._inner = inner
        self._position = 0

    def read(self, size: int = -1, /) -> bytes:
        data = self._inner.read(size)
        self._position += len(data)
        return data

    def tell(self) -> int:
        return self._position

    def seekable(self) -> bool:
        return False

    def seek(self, offset: int, whence: int = io.SEEK_SET, /) -> int:
        if whence == io.SEEK_CUR:
            offset += self._position
        elif whence != io.SEEK_SET:
            raise tarfile.ReadError("a tar stream cannot be read from its end")
        if offset < self._position:
            raise tarfile.ReadError(
                f"a tar stream cannot be read backwards (to byte {offset} from {self._position})"
            )
        while self._position < offset:
            skipped = self._inner.read(min(offset - self._position, _BUFFER))
            if not skipped:
                break  # the end of the data: TarFile's next read reports it
            self._position += len(skipped)
        return self._position


def detect_compression(head: bytes) -> Compression:
    """Compression of a tarball from its first bytes (magic numbers); anything else is plain."""
    if head.startswith(_MAGIC_GZIP):
        return Compression.GZIP
    if head.startswith(_MAGIC_XZ):
        return Compression.XZ
    if head.startswith(_MAGIC_ZSTD):
        return Compression.ZSTD
    if head.startswith(_MAGIC_BZIP2):
        raise TarballError("bzip2 tarballs are not supported: recompress with gzip, xz or zstd")
    return Compression.NONE


def decompressed(stream: ReadableStream) -> tuple[Compression, IO[bytes]]:
    """Sniff the compression of `stream` and return a stream of the plain tar bytes."""
    head = b""
    while len(head) < _PEEK:
        data = stream.read(_PEEK - len(head))
        if not data:
            break
        head += data
    compression = detect_compression(head)
    raw = io.BufferedReader(_Prepended(head, stream), buffer_size=_BUFFER)
    if compression is Compression.GZIP:
        return compression, cast(IO[bytes], gzip.GzipFile(fileobj=raw, mode="rb"))
    if compression is Compression.XZ:
        return compression, lzma.LZMAFile(raw, mode="rb")
    if compression is Compression.ZSTD:
        reader = zstandard.ZstdDecompressor().stream_reader(raw, read_across_frames=True)
        return compression, cast(IO[bytes], reader)
    return compression, raw


def _member_parts(name: str, what: str) -> tuple[str, ...]:
    """Components of a member name (or hard link target), refusing escapes."""
    if name.startswith("/"):
        raise TarballError(
            f"{what} {name!r} is an absolute path: tarballs for import must hold relative paths"
        )
    while name.startswith("./"):
        name = name[2:]
    name = name.rstrip("/") if name not in ("", "/") else name
    if name in ("", "."):
        return ()
    try:
        return relative_parts(name)
    except InvalidPathError as error:
        raise TarballError(f"{what} {name!r} is refused: {error}") from error


class _Tree:
    """Types of the paths seen so far, to refuse writes through symlinks and type changes."""

    def __init__(self, prefix: str) -> None:
        self.prefix = prefix
        self._kinds: dict[str, EntryType] = {}
        self._hardlink_sources: dict[str, str] = {}
        self._specials: dict[str, tuple[int, int]] = {}  # path -> (file type, rdev)

    def kind(self, path: str) -> EntryType | None:
        return self._kinds.get(path)

    def check_parents(self, path: str, member: str) -> None:
        parent = path
        implied: list[str] = []
        while parent != self.prefix:
            parent = parent.rpartition("/")[0]
            kind = self._kinds.get(parent)
            if kind is EntryType.SYMLINK:
                raise TarballError(
                    f"member {member!r} would be written through the symlink {parent!r} "
                    "defined earlier in the tarball: refused"
                )
            if kind in (EntryType.FILE, EntryType.HARDLINK, EntryType.SPECIAL):
                what = "special file" if kind is EntryType.SPECIAL else "regular file"
                raise TarballError(
                    f"member {member!r} is below {parent!r}, which is a {what} in this "
                    "tarball: refused"
                )
            if kind is EntryType.DIRECTORY:
                break  # its own parents were checked when it was recorded
            implied.append(parent)
        for directory in implied:
            self._kinds[directory] = EntryType.DIRECTORY

    def special(self, path: str) -> tuple[int, int] | None:
        """(file type, rdev) of a special file seen earlier at `path`."""
        return self._specials.get(path) if self._kinds.get(path) is EntryType.SPECIAL else None

    def original(self, path: str) -> str:
        """The regular file a hard link ultimately shares content with (itself if none)."""
        return self._hardlink_sources.get(path, path)

    def record(
        self,
        path: str,
        kind: EntryType,
        member: str,
        hardlink_source: str | None = None,
        special: tuple[int, int] | None = None,
    ) -> None:
        previous = self._kinds.get(path)
        regular = (EntryType.FILE, EntryType.HARDLINK)
        if (
            previous is not None
            and previous != kind
            and not (previous in regular and kind in regular)
        ):
            raise TarballError(
                f"member {member!r} turns {path!r} from a {previous.value} into a "
                f"{kind.value}: refused (a tarball must not change a path's type)"
            )
        self._kinds[path] = kind
        if special is not None:
            self._specials[path] = special
        if hardlink_source is not None:
            self._hardlink_sources[path] = hardlink_source
        else:
            self._hardlink_sources.pop(path, None)


def iter_tar_entries(
    stream: ReadableStream,
    prefix: str = "",
    policy: TarPolicy | None = None,
    stats: ImportStats | None = None,
) -> Iterator[TarEntry]:
    """Stream the checked entries of a tarball, placed under the repository path `prefix`.

    Reads the tarball once, sequentially (never backwards: `_SequentialFile`), bounded memory.
    Raises `TarballError` before yielding anything the policy refuses.
    """
    policy = policy or TarPolicy()
    stats = stats if stats is not None else ImportStats()
    prefix = repository_path(prefix)
    tree = _Tree(prefix)
    _, plain = decompressed(stream)
    try:
        archive = tarfile.TarFile(  # closed by the `with` below
            fileobj=cast(IO[bytes], _SequentialFile(plain)),
            mode="r",
            encoding="utf-8",
            errors="surrogateescape",
        )
    except _READ_ERRORS as error:
        raise TarballError(f"not a readable tarball: {error}") from error
    with archive:
        while True:
            try:
                member = archive.next()
            except _READ_ERRORS as error:
                raise TarballError(f"corrupt or truncated tarball: {error}") from error
            if member is None:
                return
            # TarFile keeps every member it has read; nothing here looks back, so drop them and
            # keep memory flat however many entries the tarball has.
            archive.members.clear()  # type: ignore[attr-defined]  # (missing from typeshed)
            stats.entries += 1
            if stats.entries > policy.max_entries:
                raise TarballError(f"tarball has more than {policy.max_entries} entries: refused")
            name = member.name
            entry = _check_member(member, prefix, policy, stats, tree)
            if entry is None:
                continue
            if entry.type is EntryType.FILE:
                content = archive.extractfile(member)
                if content is None:  # not reachable for regular members; keep mypy honest
                    raise TarballError(f"member {member.name!r} has no content")
                entry = replace(entry, content=cast(IO[bytes], _MemberContent(content, name)))
            yield entry


class _MemberContent:
    """A member's data; a truncated or corrupt archive surfaces as `TarballError` on read."""

    def __init__(self, inner: IO[bytes], member: str) -> None:
        self._inner = inner
        self._member = member

    def read(self, size: int = -1, /) -> bytes:
        try:
            return self._inner.read(size)
        except _READ_ERRORS as error:
            raise TarballError(
                f"corrupt or truncated tarball in member {self._member!r}: {error}"
            ) from error


def _check_member(
    member: tarfile.TarInfo, prefix: str, policy: TarPolicy, stats: ImportStats, tree: _Tree
) -> TarEntry | None:
    name = member.name
    parts = _member_parts(name, "member")
    try:
        path = join(prefix, parts)
    except InvalidPathError as error:
        raise TarballError(f"member {name!r} is refused: {error}") from error

    special_type = _TAR_SPECIAL_TYPES.get(member.type)
    if special_type is not None:
        if policy.skip_special:
            stats.skipped_special.append(path)
            # remembered, so that a hard link to it is left out too instead of refused
            tree.record(path, EntryType.SPECIAL, name, special=(special_type, 0))
            return None
        kind_type = EntryType.SPECIAL
    elif member.isdir():
        kind_type = EntryType.DIRECTORY
    elif member.issym():
        kind_type = EntryType.SYMLINK
    elif member.islnk():
        kind_type = EntryType.HARDLINK
    elif member.isreg():
        kind_type = EntryType.FILE
    else:
        raise TarballError(f"member {name!r} has unsupported tar type {member.type!r}: refused")

    if not parts:
        if kind_type is EntryType.DIRECTORY:
            return None  # './' itself: the import prefix exists or is implied
        raise TarballError(f"member {name!r} names the import root but is not a directory")
    tree.check_parents(path, name)

    mode_stripped = has_setid_bits(member.mode)
    if mode_stripped:
        stats.stripped_modes.append(path)
    entry = TarEntry(
        path=path,
        type=kind_type,
        mode=sanitize_mode(member.mode),
        mtime=int(member.mtime),
        uid=member.uid,
        gid=member.gid,
        mode_stripped=mode_stripped,
    )
    if kind_type is EntryType.DIRECTORY:
        tree.record(path, kind_type, name)
        stats.directories += 1
        return entry
    if kind_type is EntryType.SYMLINK:
        target = _check_symlink(path, member.linkname, prefix, policy, name)
        tree.record(path, kind_type, name)
        stats.symlinks += 1
        return replace(entry, size=len(raw_bytes(target)), link_target=target)
    if kind_type is EntryType.SPECIAL:
        assert special_type is not None
        is_device = special_type in (stat.S_IFCHR, stat.S_IFBLK)
        rdev = os.makedev(member.devmajor, member.devminor) if is_device else 0
        return _special_entry(entry, special_type, rdev, tree, stats, name)
    if kind_type is EntryType.HARDLINK:
        special = _hardlinked_special(member.linkname, prefix, tree, name)
        if special is not None:
            if policy.skip_special:
                stats.skipped_special.append(path)
                return None
            return _special_entry(entry, *special, tree, stats, name)
        source = _check_hardlink(member.linkname, prefix, tree, name)
        tree.record(path, kind_type, name, hardlink_source=source)
        stats.hardlinks += 1
        return replace(entry, link_target=source)

    if member.size > policy.max_file_size:
        raise TarballError(
            f"member {name!r} declares {member.size} bytes, more than the limit of "
            f"{policy.max_file_size}: refused"
        )
    if stats.bytes + member.size > policy.max_total_size:
        raise TarballError(
            f"tarball content exceeds the limit of {policy.max_total_size} bytes at member "
            f"{name!r}: refused"
        )
    tree.record(path, kind_type, name)
    stats.files += 1
    stats.bytes += member.size
    return replace(entry, size=member.size)


# Tar member types that are special files; a socket has no tar type (tar skips sockets).
_TAR_SPECIAL_TYPES = {
    tarfile.CHRTYPE: stat.S_IFCHR,
    tarfile.BLKTYPE: stat.S_IFBLK,
    tarfile.FIFOTYPE: stat.S_IFIFO,
}


def _special_entry(
    entry: TarEntry, file_type: int, rdev: int, tree: _Tree, stats: ImportStats, member: str
) -> TarEntry:
    tree.record(entry.path, EntryType.SPECIAL, member, special=(file_type, rdev))
    stats.special_files += 1
    return replace(entry, type=EntryType.SPECIAL, file_type=file_type, rdev=rdev)


def _hardlinked_special(
    linkname: str, prefix: str, tree: _Tree, member: str
) -> tuple[int, int] | None:
    """(file type, rdev) if the hard link names a special file seen earlier, else None.

    CVMFS has no hard-link groups of special files; the link becomes a second special file with
    the same type and device number, which is what reading either path gives."""
    try:
        source = join(prefix, _member_parts(linkname, f"hard link {member!r} target"))
    except InvalidPathError:
        return None  # _check_hardlink refuses it with the reason
    return tree.special(source)


def _check_symlink(path: str, target: str, prefix: str, policy: TarPolicy, member: str) -> str:
    try:
        validate_symlink_target(target, allow_variables=policy.allow_symlink_variables)
    except InvalidPathError as error:
        raise TarballError(f"symlink {member!r} is refused: {error}") from error
    if target.startswith("/") or policy.allow_escaping_symlinks:
        return target
    resolved = resolve_symlink(path, target)
    if resolved is None or not is_within(resolved, prefix):
        raise TarballError(
            # Said for the person who made the tarball: the policy is the caller's, not theirs.
            f"symlink {member!r} -> {target!r} points outside the imported tree: make it "
            "point inside the tarball's directory, or use an absolute target (kept as written)"
        )
    return target


def _check_hardlink(linkname: str, prefix: str, tree: _Tree, member: str) -> str:
    parts = _member_parts(linkname, f"hard link {member!r} target")
    if not parts:
        raise TarballError(f"hard link {member!r} points at the import root: refused")
    try:
        source = join(prefix, parts)
    except InvalidPathError as error:
        raise TarballError(f"hard link {member!r} is refused: {error}") from error
    if tree.kind(source) not in (EntryType.FILE, EntryType.HARDLINK):
        raise TarballError(
            f"hard link {member!r} -> {linkname!r} does not name a regular file earlier in "
            "the tarball: refused"
        )
    return tree.original(source)


# ------------------------------------------------------------------------------------ importers
class ImportTarget(Protocol):
    """The part of a writer transaction (`cvmfs.transaction.Transaction`) the importers use."""

    def mkdir(
        self,
        path: str,
        *,
        mode: int = ...,
        mtime: int | None = ...,
        uid: int | None = ...,
        gid: int | None = ...,
    ) -> None: ...

    def add_file(
        self,
        path: str,
        content: BinaryIO | bytes,
        *,
        mode: int = ...,
        mtime: int | None = ...,
        uid: int | None = ...,
        gid: int | None = ...,
    ) -> None: ...

    def add_local_file(
        self,
        path: str,
        fd: int,
        *,
        mode: int = ...,
        mtime: int | None = ...,
        uid: int | None = ...,
        gid: int | None = ...,
    ) -> None: ...

    def symlink(
        self,
        path: str,
        target: str,
        *,
        mtime: int | None = ...,
        uid: int | None = ...,
        gid: int | None = ...,
        allow_variables: bool = ...,
    ) -> None: ...

    def link(self, existing: str, new_path: str) -> None: ...

    def add_special_file(
        self,
        path: str,
        mode: int,
        *,
        rdev: int = ...,
        mtime: int | None = ...,
        uid: int | None = ...,
        gid: int | None = ...,
    ) -> None: ...


def import_tarball(
    transaction: ImportTarget,
    stream: ReadableStream,
    prefix: str = "",
    *,
    policy: TarPolicy | None = None,
    preserve_ownership: bool = False,
) -> ImportStats:
    """Add every entry of a tarball (plain, gzip, xz or zstd) below `prefix` to `transaction`.

    Symlinks stay symlinks, hard links become `transaction.link`. Owners are the transaction's
    defaults unless `preserve_ownership`. On `TarballError` the transaction must be discarded
    (see the module docstring): entries before the refused one were already added to it.

    Files are added as they stream past; directories, symlinks and hard links are applied after
    them, because each of those operations waits for every file in flight to be stored (the
    writer drains its compression pipeline) and a tree has thousands of directories. The order
    of operations on distinct paths does not change the result; before a file replaces a path
    seen earlier, the deferred operations are applied, so a hard link keeps the content its
    source had when the link was made.
    """
    policy = policy or TarPolicy()
    stats = ImportStats()
    deferred: list[TarEntry] = []
    seen: set[str] = set()
    for entry in iter_tar_entries(stream, prefix, policy, stats):
        if entry.type is not EntryType.FILE:
            deferred.append(entry)
        else:
            if entry.path in seen:
                _apply_all(transaction, deferred, policy, preserve_ownership)
                deferred.clear()
            assert entry.content is not None  # iter_tar_entries sets it for every FILE
            transaction.add_file(
                entry.path,
                cast(BinaryIO, entry.content),
                mode=entry.mode,
                mtime=entry.mtime,
                uid=entry.uid if preserve_ownership else None,
                gid=entry.gid if preserve_ownership else None,
            )
        seen.add(entry.path)
    _apply_all(transaction, deferred, policy, preserve_ownership)
    return stats


def _apply_all(
    transaction: ImportTarget,
    entries: list[TarEntry] | list[_PlannedEntry],
    policy: TarPolicy,
    preserve_ownership: bool,
) -> None:
    """Apply directory, symlink, hard link and special file entries, in order."""
    for entry in entries:
        uid = entry.uid if preserve_ownership else None
        gid = entry.gid if preserve_ownership else None
        if entry.type is EntryType.DIRECTORY:
            transaction.mkdir(entry.path, mode=entry.mode, mtime=entry.mtime, uid=uid, gid=gid)
        elif entry.type is EntryType.SYMLINK:
            transaction.symlink(
                entry.path,
                entry.link_target,
                mtime=entry.mtime,
                uid=uid,
                gid=gid,
                allow_variables=policy.allow_symlink_variables,
            )
        elif entry.type is EntryType.HARDLINK:
            transaction.link(entry.link_target, entry.path)
        elif entry.type is EntryType.SPECIAL:
            transaction.add_special_file(
                entry.path,
                entry.file_type | entry.mode,
                rdev=entry.rdev,
                mtime=entry.mtime,
                uid=uid,
                gid=gid,
            )
        else:
            raise AssertionError(f"regular file {entry.path} among deferred entries")


@dataclass(frozen=True)
class _PlannedEntry:
    source: str
    path: str
    type: EntryType
    mode: int
    mtime: int
    uid: int
    gid: int
    link_target: str = ""
    identity: tuple[int, int] = (0, 0)  # (st_dev, st_ino), to re-check regular files
    file_type: int = 0  # SPECIAL: stat.S_IFMT
    rdev: int = 0  # SPECIAL: device number


_DIRECTORY_SPECIAL_TYPES = (stat.S_IFCHR, stat.S_IFBLK, stat.S_IFIFO, stat.S_IFSOCK)


def _plan_directory(
    source: str, prefix: str, policy: TarPolicy, stats: ImportStats
) -> list[_PlannedEntry]:
    """Walk `source` without following symlinks and check everything; nothing is written."""
    plan: list[_PlannedEntry] = []
    first_paths: dict[tuple[int, int], str] = {}
    pending = [(source, prefix)]
    while pending:
        directory, directory_path = pending.pop()
        try:
            with os.scandir(directory) as scan:
                children = sorted(scan, key=lambda child: child.name)
        except OSError as error:
            raise TarballError(f"cannot list {directory!r}: {error}") from error
        subdirectories: list[tuple[str, str]] = []
        for child in children:
            try:
                path = join(directory_path, (child.name,))
            except InvalidPathError as error:
                raise TarballError(f"{child.path!r} is refused: {error}") from error
            info = child.stat(follow_symlinks=False)
            mode = info.st_mode
            if has_setid_bits(mode):
                stats.stripped_modes.append(path)
            base = _PlannedEntry(
                source=child.path,
                path=path,
                type=EntryType.DIRECTORY,
                mode=sanitize_mode(mode),
                mtime=int(info.st_mtime),
                uid=info.st_uid,
                gid=info.st_gid,
            )
            stats.entries += 1
            if stat.S_ISDIR(mode):
                plan.append(base)
                stats.directories += 1
                subdirectories.append((child.path, path))
            elif stat.S_ISLNK(mode):
                target = os.readlink(child.path)
                target = _check_symlink(path, target, prefix, policy, child.path)
                plan.append(replace(base, type=EntryType.SYMLINK, link_target=target))
                stats.symlinks += 1
            elif stat.S_ISREG(mode):
                if info.st_size > policy.max_file_size:
                    raise TarballError(
                        f"{child.path!r} has {info.st_size} bytes, more than the limit of "
                        f"{policy.max_file_size}: refused"
                    )
                stats.bytes += info.st_size
                if stats.bytes > policy.max_total_size:
                    raise TarballError(
                        f"the tree exceeds the limit of {policy.max_total_size} bytes at "
                        f"{child.path!r}: refused"
                    )
                identity = (info.st_dev, info.st_ino)
                original = first_paths.get(identity) if info.st_nlink > 1 else None
                if original is not None:
                    plan.append(replace(base, type=EntryType.HARDLINK, link_target=original))
                    stats.hardlinks += 1
                else:
                    first_paths[identity] = path
                    plan.append(replace(base, type=EntryType.FILE, identity=identity))
                    stats.files += 1
            elif stat.S_IFMT(mode) in _DIRECTORY_SPECIAL_TYPES:
                if policy.skip_special:
                    stats.skipped_special.append(path)
                    continue
                is_device = stat.S_ISCHR(mode) or stat.S_ISBLK(mode)
                plan.append(
                    replace(
                        base,
                        type=EntryType.SPECIAL,
                        file_type=stat.S_IFMT(mode),
                        rdev=info.st_rdev if is_device else 0,
                    )
                )
                stats.special_files += 1
            else:
                raise TarballError(f"{child.path!r} has an unknown file type {mode:#o}: refused")
            if stats.entries > policy.max_entries:
                raise TarballError(f"the tree has more than {policy.max_entries} entries: refused")
        pending.extend(reversed(subdirectories))
    return plan


def import_directory(
    transaction: ImportTarget,
    source: str | os.PathLike[str],
    prefix: str = "",
    *,
    policy: TarPolicy | None = None,
    preserve_ownership: bool = False,
) -> ImportStats:
    """Add the tree below the local directory `source` to `transaction` under `prefix`.

    The whole tree is walked and checked first (symlinks are never followed; relative ones that
    climb out of the tree are refused unless the policy allows them), so a refusal happens
    before anything is added. Files are then opened with O_NOFOLLOW and must still be the file
    that was checked. Hard links inside the tree become `transaction.link`.
    """
    policy = policy or TarPolicy()
    stats = ImportStats()
    prefix = repository_path(prefix)
    root = os.fspath(source)
    root_info = os.stat(root)
    if not stat.S_ISDIR(root_info.st_mode):
        raise TarballError(f"{root!r} is not a directory")
    plan = _plan_directory(root, prefix, policy, stats)
    if prefix != "":
        transaction.mkdir(
            prefix,
            mode=sanitize_mode(root_info.st_mode),
            mtime=int(root_info.st_mtime),
            uid=root_info.st_uid if preserve_ownership else None,
            gid=root_info.st_gid if preserve_ownership else None,
        )
    # Directories first, then files, then symlinks and hard links: see `import_tarball` on why
    # directory and link operations are kept away from the stream of files.
    directories = [e for e in plan if e.type is EntryType.DIRECTORY]
    links = [
        e for e in plan if e.type in (EntryType.SYMLINK, EntryType.HARDLINK, EntryType.SPECIAL)
    ]
    _apply_all(transaction, directories, policy, preserve_ownership)
    for entry in plan:
        if entry.type is EntryType.FILE:
            # the transaction takes the descriptor over: small files are read on its workers
            transaction.add_local_file(
                entry.path,
                _open_checked(entry),
                mode=entry.mode,
                mtime=entry.mtime,
                uid=entry.uid if preserve_ownership else None,
                gid=entry.gid if preserve_ownership else None,
            )
    _apply_all(transaction, links, policy, preserve_ownership)
    return stats


def _open_checked(entry: _PlannedEntry) -> int:
    """Open a planned regular file without following symlinks; it must be the one checked.
    Returns the open descriptor."""
    try:
        descriptor = os.open(entry.source, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
    except OSError as error:
        raise TarballError(f"cannot open {entry.source!r}: {error}") from error
    info = os.fstat(descriptor)
    if not stat.S_ISREG(info.st_mode) or (info.st_dev, info.st_ino) != entry.identity:
        os.close(descriptor)
        raise TarballError(f"{entry.source!r} changed while it was being imported: refused")
    return descriptor
