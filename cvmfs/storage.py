"""Stratum-0 storage behind one small interface: a local directory, an S3 bucket, or HTTP (read).

Keys are relative to the repository base (`.cvmfspublished`, `data/ab/cdef...C`, spec §1.1).

Durability: `put` may return before its object is durable; `sync()` makes every object `put`
so far durable, and writers call it once per publish, before the manifest that names them
(`put_atomic` is durable when it returns). Paying one batched sync per publish instead of one
fsync per object is what keeps the compressing threads busy (bench/README.md, "Where the time
goes").
"""

from __future__ import annotations

import contextlib
import io
import itertools
import os
import threading
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import IO, TYPE_CHECKING, Any, BinaryIO, Protocol, cast, runtime_checkable

from cvmfs.errors import InvalidPathError, NotFoundError, StorageError
from cvmfs.http_cache import content_headers

if TYPE_CHECKING:
    import httpx  # imported when an HttpStorage is made: local publishes never load it

OBJECT_PREFIX = "data/"  # content-addressed objects (spec §1.1)
TXN_DIR = "data/txn"  # upload staging directory (spec §1.1, §7)
PUBLIC_MODE = 0o644  # objects are served as-is by the web server
READ_CHUNK = 1 << 20
MULTIPART_THRESHOLD = 8 << 20
# ext4 commits concurrent fsyncs in one journal transaction: 1,000 freshly written files took
# 1.26 s to fsync one after another and 0.10 s on 16 threads (measured on the dev VM).
SYNC_THREADS = 16
# A sync of more files than this is one syncfs(2) of the repository's filesystem instead: 10,000
# new objects took 0.71 s wall and 0.8 s CPU as fsyncs on 16 threads, 0.23 s and no CPU as one
# syncfs (dev VM, bench/README.md "Durability"). Below it, per-file fsyncs leave other writers'
# dirty data on the same filesystem alone.
SYNCFS_ABOVE = 256


@runtime_checkable
class Storage(Protocol):
    """What readers and writers need from stratum-0 storage."""

    def get(self, key: str) -> bytes: ...

    def open(self, key: str) -> BinaryIO: ...

    def exists(self, key: str) -> bool: ...

    def put(self, key: str, data: bytes | IO[bytes]) -> None: ...

    def put_atomic(self, key: str, data: bytes) -> None: ...

    def sync(self) -> None:
        """Make everything `put` so far durable (call it before writing a manifest)."""
        ...

    def delete(self, key: str) -> None: ...

    def list(self, prefix: str = "") -> Iterator[str]: ...


def check_key(key: str) -> str:
    """Refuse keys that could escape the repository base."""
    parts = key.split("/")
    if not key or key.startswith("/") or any(p in ("", ".", "..") for p in parts) or "\0" in key:
        raise InvalidPathError(f"invalid storage key {key!r}: use a relative key such as data/ab/…")
    return key


def is_object_key(key: str) -> bool:
    return key.startswith(OBJECT_PREFIX) and not key.startswith(TXN_DIR + "/")


class LocalStorage:
    """A stratum-0 directory (what `cvmfs_server` keeps under /srv/cvmfs/<fqrn>).

    `put` writes to `data/txn/` and renames without fsync, remembering the file and its
    directory; `sync()` fsyncs them all at once. `put_atomic` fsyncs the file and its directory
    before it returns. A reader never sees a half-written object (rename), a crash of the
    process loses nothing written (page cache), and a power loss can only lose objects that no
    manifest names yet, provided each publish calls `sync()` before its manifest.
    """

    def __init__(self, root_dir: str | os.PathLike[str]) -> None:
        self.root = Path(root_dir)
        self._lock = threading.Lock()
        self._unsynced_files: set[Path] = set()
        self._unsynced_dirs: set[Path] = set()
        self._made_dirs: set[Path] = set()
        self._tmp_names = itertools.count()

    def __repr__(self) -> str:
        return f"LocalStorage({str(self.root)!r})"

    def _path(self, key: str) -> Path:
        return self.root / check_key(key)

    def get(self, key: str) -> bytes:
        try:
            return self._path(key).read_bytes()
        except FileNotFoundError:
            raise NotFoundError(f"{key} not found in {self.root}") from None
        except OSError as exc:
            raise StorageError(f"cannot read {key} in {self.root}: {exc}") from exc

    def open(self, key: str) -> BinaryIO:
        try:
            return self._path(key).open("rb")
        except FileNotFoundError:
            raise NotFoundError(f"{key} not found in {self.root}") from None
        except OSError as exc:
            raise StorageError(f"cannot read {key} in {self.root}: {exc}") from exc

    def exists(self, key: str) -> bool:
        return self._path(key).is_file()

    def put(self, key: str, data: bytes | IO[bytes]) -> None:
        """Write via data/txn then rename; an existing object is left alone (content-addressed).

        Not durable until `sync()`.
        """
        target = self._path(key)
        if is_object_key(key) and target.exists():
            return
        self._write_then_rename(target, data, self.root / TXN_DIR, durable=False)
        with self._lock:
            self._unsynced_files.add(target)
            self._unsynced_dirs.add(target.parent)

    def put_atomic(self, key: str, data: bytes) -> None:
        """Replace a file atomically (temp file in the same directory, then rename); durable
        (file and directory fsynced) when it returns."""
        target = self._path(key)
        self._write_then_rename(target, data, target.parent, durable=True)

    def sync(self) -> None:
        """Make every file `put` since the last sync durable, with its rename: one fsync per
        file and directory, or one syncfs of the filesystem for more than SYNCFS_ABOVE files."""
        with self._lock:
            files, self._unsynced_files = self._unsynced_files, set()
            dirs, self._unsynced_dirs = self._unsynced_dirs, set()
        try:
            if len(files) > SYNCFS_ABOVE and _syncfs(self.root):
                return
            if len(files) + len(dirs) <= 2:
                for path in [*files, *dirs]:
                    _fsync_path(path)
                return
            with ThreadPoolExecutor(min(SYNC_THREADS, len(files) or 1)) as pool:
                list(pool.map(_fsync_path, files))
                list(pool.map(_fsync_path, dirs))
        except OSError as exc:
            with self._lock:  # not durable: the next sync tries them again
                self._unsynced_files |= files
                self._unsynced_dirs |= dirs
            raise StorageError(
                f"cannot make the objects written to {self.root} durable ({exc}); nothing was "
                "published: check the disk, then publish again"
            ) from exc

    def _make_dir(self, directory: Path) -> None:
        if directory not in self._made_dirs:
            directory.mkdir(parents=True, exist_ok=True)
            self._made_dirs.add(directory)

    def _create_temp(self, tmp_dir: Path) -> tuple[int, str]:
        """A new temp file in `tmp_dir`: cheaper names than `tempfile.mkstemp`, same O_EXCL
        guarantee (a name left by a killed writer with the same pid is skipped)."""
        while True:
            tmp_name = str(tmp_dir / f".tmp-{os.getpid()}-{next(self._tmp_names)}")
            try:
                flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL
                return os.open(tmp_name, flags, PUBLIC_MODE), tmp_name
            except FileExistsError:
                continue
            except FileNotFoundError:  # the directory was removed since we made it
                self._made_dirs.discard(tmp_dir)
                self._make_dir(tmp_dir)

    def _write_then_rename(
        self, target: Path, data: bytes | IO[bytes], tmp_dir: Path, *, durable: bool
    ) -> None:
        try:
            self._make_dir(tmp_dir)
            self._make_dir(target.parent)
            fd, tmp_name = self._create_temp(tmp_dir)
            try:
                with os.fdopen(fd, "wb") as out:
                    if isinstance(data, bytes | bytearray | memoryview):
                        out.write(data)
                    else:
                        while piece := data.read(READ_CHUNK):
                            out.write(piece)
                    out.flush()
                    os.fchmod(out.fileno(), PUBLIC_MODE)  # whatever the umask
                    if durable:
                        os.fsync(out.fileno())
                try:
                    os.replace(tmp_name, target)
                except FileNotFoundError:  # the directory was removed since we made it
                    self._made_dirs.discard(target.parent)
                    self._make_dir(target.parent)
                    os.replace(tmp_name, target)
            except BaseException:
                with contextlib.suppress(FileNotFoundError):
                    os.unlink(tmp_name)
                raise
            if durable:
                _fsync_path(target.parent)
        except OSError as exc:
            raise StorageError(f"cannot write {target}: {exc}") from exc

    def delete(self, key: str) -> None:
        try:
            self._path(key).unlink()
        except FileNotFoundError:
            raise NotFoundError(f"{key} not found in {self.root}") from None

    def list(self, prefix: str = "") -> Iterator[str]:
        for dirpath, dirnames, filenames in os.walk(self.root):
            dirnames.sort()
            rel_dir = os.path.relpath(dirpath, self.root)
            for name in sorted(filenames):
                key = name if rel_dir == "." else f"{rel_dir}/{name}".replace(os.sep, "/")
                if key.startswith(prefix):
                    yield key


class S3Storage:
    """A repository under `prefix` in an S3 bucket; objects are public-read (spec §1.1)."""

    def __init__(self, client: Any, bucket: str, prefix: str = "") -> None:
        self.client = client
        self.bucket = bucket
        self.prefix = prefix.strip("/") + "/" if prefix.strip("/") else ""

    def __repr__(self) -> str:
        return f"S3Storage(bucket={self.bucket!r}, prefix={self.prefix!r})"

    def _key(self, key: str) -> str:
        return self.prefix + check_key(key)

    @staticmethod
    def _is_not_found(exc: Exception) -> bool:
        response = getattr(exc, "response", None) or {}
        code = str(response.get("Error", {}).get("Code", ""))
        return code in ("404", "NoSuchKey", "NotFound")

    def get(self, key: str) -> bytes:
        with self.open(key) as body:
            return body.read()

    def open(self, key: str) -> BinaryIO:
        try:
            response = self.client.get_object(Bucket=self.bucket, Key=self._key(key))
        except Exception as exc:
            if self._is_not_found(exc):
                raise NotFoundError(
                    f"{key} not found in s3://{self.bucket}/{self.prefix}"
                ) from None
            raise StorageError(f"cannot read s3://{self.bucket}/{self._key(key)}: {exc}") from exc
        return _buffered(_ReadableStream(response["Body"]))

    def exists(self, key: str) -> bool:
        try:
            self.client.head_object(Bucket=self.bucket, Key=self._key(key))
        except Exception as exc:
            if self._is_not_found(exc):
                return False
            raise StorageError(f"cannot stat s3://{self.bucket}/{self._key(key)}: {exc}") from exc
        return True

    def put(self, key: str, data: bytes | IO[bytes]) -> None:
        """PUT public-read; large streams go up as multipart; an existing object is kept."""
        if is_object_key(key) and self.exists(key):
            return
        self._upload(key, data)

    def put_atomic(self, key: str, data: bytes) -> None:
        # A single S3 PUT replaces an object atomically.
        self._upload(key, data)

    def sync(self) -> None:
        """Nothing to do: S3 acknowledges a PUT once the object is stored durably."""

    def _upload(self, key: str, data: bytes | IO[bytes]) -> None:
        full_key = self._key(key)
        # RGW serves these headers back to clients, stratum 1s and Squids as the stock
        # stratum-0 web server would (cvmfs/http_cache.py).
        headers = content_headers(key)
        extra = {
            "ACL": "public-read",
            "ContentType": headers["Content-Type"],
            "CacheControl": headers["Cache-Control"],
        }
        try:
            if isinstance(data, bytes | bytearray | memoryview):
                self.client.put_object(Bucket=self.bucket, Key=full_key, Body=bytes(data), **extra)
            else:
                from boto3.s3.transfer import TransferConfig

                self.client.upload_fileobj(
                    data,
                    self.bucket,
                    full_key,
                    ExtraArgs=extra,
                    Config=TransferConfig(multipart_threshold=MULTIPART_THRESHOLD),
                )
        except Exception as exc:
            raise StorageError(f"cannot write s3://{self.bucket}/{full_key}: {exc}") from exc

    def delete(self, key: str) -> None:
        try:
            self.client.delete_object(Bucket=self.bucket, Key=self._key(key))
        except Exception as exc:
            raise StorageError(f"cannot delete s3://{self.bucket}/{self._key(key)}: {exc}") from exc

    def list(self, prefix: str = "") -> Iterator[str]:
        paginator = self.client.get_paginator("list_objects_v2")
        for page in paginator.paginate(Bucket=self.bucket, Prefix=self.prefix + prefix):
            for item in page.get("Contents", []):
                yield item["Key"][len(self.prefix) :]


class HttpStorage:
    """Read-only access to a repository served over HTTP (a stratum 0/1 or a static server)."""

    def __init__(self, base_url: str, *, client: httpx.Client | None = None) -> None:
        import httpx

        self._httpx = httpx
        self.base_url = base_url.rstrip("/") + "/"
        self.client = client or httpx.Client(timeout=httpx.Timeout(30.0), follow_redirects=True)

    def __repr__(self) -> str:
        return f"HttpStorage({self.base_url!r})"

    def close(self) -> None:
        self.client.close()

    def _url(self, key: str) -> str:
        return self.base_url + check_key(key)

    def get(self, key: str) -> bytes:
        with self.open(key) as body:
            return body.read()

    def open(self, key: str) -> BinaryIO:
        url = self._url(key)
        try:
            response = self.client.send(self.client.build_request("GET", url), stream=True)
        except self._httpx.HTTPError as exc:
            raise StorageError(f"GET {url} failed: {exc}") from exc
        if response.status_code == 404:
            response.close()
            raise NotFoundError(f"{url} not found (HTTP 404)")
        if response.status_code != 200:
            response.close()
            raise StorageError(f"GET {url} returned HTTP {response.status_code}")
        return _buffered(_ReadableStream(_HttpBody(response)))

    def exists(self, key: str) -> bool:
        url = self._url(key)
        try:
            response = self.client.head(url)
        except self._httpx.HTTPError as exc:
            raise StorageError(f"HEAD {url} failed: {exc}") from exc
        return response.status_code == 200

    def _read_only(self) -> StorageError:
        return StorageError(f"{self.base_url} is read-only over HTTP: write through the stratum 0")

    def put(self, key: str, data: bytes | IO[bytes]) -> None:
        raise self._read_only()

    def put_atomic(self, key: str, data: bytes) -> None:
        raise self._read_only()

    def sync(self) -> None:
        """Nothing was written."""

    def delete(self, key: str) -> None:
        raise self._read_only()

    def list(self, prefix: str = "") -> Iterator[str]:
        raise StorageError(f"{self.base_url}: HTTP storage cannot list keys")


def _syncfs(root: Path) -> bool:
    """syncfs(2) the filesystem holding `root`: every file and rename on it is durable when
    this returns True; False where the call does not exist (not Linux), so the caller fsyncs
    file by file. A write-back error (Linux >= 5.8 reports them) raises OSError."""
    import ctypes  # only bulk publishes need it

    syncfs = getattr(ctypes.CDLL(None, use_errno=True), "syncfs", None)
    if syncfs is None:
        return False
    fd = os.open(root, os.O_RDONLY)
    try:
        if syncfs(fd) != 0:
            error = ctypes.get_errno()
            raise OSError(error, os.strerror(error))
    finally:
        os.close(fd)
    return True


def _fsync_path(path: Path) -> None:
    """fsync a file or a directory by name."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


class _HttpBody:
    """Adapts a streamed httpx response to `read(n)`/`close()`."""

    def __init__(self, response: httpx.Response) -> None:
        import httpx

        self._http_error = httpx.HTTPError
        self._response = response
        self._pieces = response.iter_raw(READ_CHUNK)

    def read(self, size: int = -1) -> bytes:
        try:
            return next(self._pieces, b"")
        except self._http_error as exc:
            raise StorageError(f"reading {self._response.url} failed: {exc}") from exc

    def close(self) -> None:
        self._response.close()


class _ReadableStream(io.RawIOBase):
    """A `BinaryIO` over anything with `read(n)` and `close()` (S3 bodies, HTTP responses)."""

    def __init__(self, body: Any) -> None:
        self._body = body
        self._pending = b""

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: Any) -> int:
        if not self._pending:
            self._pending = self._body.read(READ_CHUNK) or b""
        n = min(len(buffer), len(self._pending))
        buffer[:n] = self._pending[:n]
        self._pending = self._pending[n:]
        return n

    def read(self, size: int = -1) -> bytes:
        if size is None or size < 0:
            return self.readall()
        return super().read(size) or b""

    def close(self) -> None:
        if not self.closed:
            self._body.close()
        super().close()


def _buffered(raw: _ReadableStream) -> BinaryIO:
    return cast(BinaryIO, io.BufferedReader(raw, READ_CHUNK))
