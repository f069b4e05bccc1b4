"""The publisher's side of the gateway protocol, for tests, benchmarks and operators' checks.

`Publisher` sends what the stock publisher sends (cvmfs 2.11.5 swissknife_lease_curl.cc,
session_context.cc): the same JSON strings byte for byte, headers and HMAC messages.
`publisher_transaction` + `prepare` build a publish as `cvmfs_server publish` does, with the
project's cvmfs/ writer on the revision stratum-0 has, writing only into a capture (never the
repository, never with the repository's keys); `send_objects` ships the capture as packs.
"""

from __future__ import annotations

import hashlib
import io
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import IO, Any, BinaryIO

import httpx

from cvmfs.keys import KeySet, generate_keyset
from cvmfs.objects import ObjectSuffix
from cvmfs.storage import Storage
from cvmfs.transaction import Transaction
from cvmfs.writer import RepositoryWriter
from gateway.auth import authorization_header
from gateway.pack import build_pack

PUBLISHER_HOSTNAME = "publisher.example.org"
# ObjectPack::kDefaultLimit: the stock publisher dispatches a pack at 200 MiB.
STOCK_PACK_BYTES = 200 << 20


@dataclass
class Publisher:
    """One publisher's key (`<fqrn>.gw`) and the gateway URL `http://host:port/api/v1`."""

    api_url: str
    key_id: str
    secret: str
    hostname: str = PUBLISHER_HOSTNAME
    client: httpx.Client = field(default_factory=lambda: httpx.Client(timeout=600.0))

    def _post(self, url: str, body: bytes, auth_message: bytes, **headers: str) -> Any:
        headers["Authorization"] = authorization_header(self.key_id, self.secret, auth_message)
        return self.client.post(url, content=body, headers=headers).json()

    def lease_body(self, lease_path: str, api_version: int = 2) -> bytes:
        # MakeAcquireRequest: the spaces and the string api_version are the publisher's.
        return (
            f'{{"path" : "{lease_path}", "api_version" : "{api_version}", '
            f'"hostname" : "{self.hostname}"}}'
        ).encode()

    def acquire(self, lease_path: str, api_version: int = 2) -> Any:
        body = self.lease_body(lease_path, api_version)
        return self._post(f"{self.api_url}/leases", body, body)

    def acquire_token(self, lease_path: str) -> str:
        reply = self.acquire(lease_path)
        if reply.get("status") != "ok":
            raise RuntimeError(f"lease on {lease_path} refused: {reply}")
        return str(reply["session_token"])

    def drop(self, token: str) -> Any:
        # MakeEndRequest("DELETE", ...): the HMAC covers the token, no body.
        headers = {"Authorization": authorization_header(self.key_id, self.secret, token.encode())}
        return self.client.delete(f"{self.api_url}/leases/{token}", headers=headers).json()

    def drop_by_path(self, lease_path: str) -> Any:
        url = f"{self.api_url}/leases-by-path/{lease_path}"
        signed = httpx.URL(url).path.encode()
        headers = {"Authorization": authorization_header(self.key_id, self.secret, signed)}
        return self.client.delete(url, headers=headers).json()

    def commit(
        self,
        token: str,
        old_root_hash: str,
        new_root_hash: str,
        tag: str = "",
        description: str = "",
    ) -> Any:
        # SessionContext::Commit: JsonStringGenerator output (no spaces), tag_channel a number.
        body = (
            f'{{"old_root_hash":"{old_root_hash}","new_root_hash":"{new_root_hash}",'
            f'"tag_name":"{tag}","tag_channel":0,"tag_description":"{description}"}}'
        ).encode()
        return self._post(f"{self.api_url}/leases/{token}", body, token.encode())

    def payload_head(self, token: str, header: bytes) -> bytes:
        digest = hashlib.sha1(header).hexdigest()
        return (
            f'{{"session_token" : "{token}", "payload_digest" : "{digest}", '
            f'"header_size" : "{len(header)}", "api_version" : "2"}}'
        ).encode()

    def submit(
        self, token: str, header: bytes, objects: bytes, *, head: bytes | None = None
    ) -> Any:
        """SessionContext::DoUpload: JSON head then the pack; HMAC over the head."""
        head = head if head is not None else self.payload_head(token, header)
        return self._post(
            f"{self.api_url}/payloads",
            head + header + objects,
            head,
            **{"Message-Size": str(len(head))},
        )

    def submit_per_token(self, token: str, header: bytes, objects: bytes) -> Any:
        """The per-token form `/payloads/<token>`: the HMAC covers the token."""
        head = self.payload_head(token, header)
        return self._post(
            f"{self.api_url}/payloads/{token}",
            head + header + objects,
            token.encode(),
            **{"Message-Size": str(len(head))},
        )


class CapturingStorage:
    """The publisher's view of the repository: reads stratum-0 (as the stock publisher reads it
    over HTTP) and keeps every object it writes, in memory or in `scratch`, to send them."""

    def __init__(self, upstream: Storage, scratch: Storage | None = None) -> None:
        self.upstream = upstream
        self.scratch = scratch
        self.memory: dict[str, bytes] = {}
        self.keys: set[str] = set()
        self._lock = threading.Lock()

    def get(self, key: str) -> bytes:
        with self._lock:
            mine = key in self.keys
        if not mine:
            return self.upstream.get(key)
        if self.scratch is not None:
            return self.scratch.get(key)
        with self._lock:
            return self.memory[key]

    def open(self, key: str) -> BinaryIO:
        return io.BytesIO(self.get(key))

    def exists(self, key: str) -> bool:
        with self._lock:
            if key in self.keys:
                return True
        return self.upstream.exists(key)

    def put(self, key: str, data: bytes | IO[bytes]) -> None:
        if self.scratch is not None:
            self.scratch.put(key, data)
        else:
            value = data if isinstance(data, bytes) else data.read()
            with self._lock:
                self.memory[key] = bytes(value)
        with self._lock:
            self.keys.add(key)

    def put_atomic(self, key: str, data: bytes) -> None:
        self.put(key, data)

    def sync(self) -> None:
        """Nothing to make durable here: captured objects go to the gateway, which makes each
        payload durable before it acknowledges it (`gateway.payloads.store_payload`)."""

    def delete(self, key: str) -> None:
        with self._lock:
            self.keys.discard(key)
            self.memory.pop(key, None)

    def list(self, prefix: str = "") -> Iterator[str]:
        with self._lock:
            keys = sorted(k for k in self.keys if k.startswith(prefix))
        yield from keys


_SCRATCH_KEYS: dict[str, KeySet] = {}


def _scratch_keys(fqrn: str) -> KeySet:
    """Keys of the publisher's scratch writer: NOT the repository's (a remote publisher never
    holds them); the writer wants some, and never signs with them here."""
    if fqrn not in _SCRATCH_KEYS:
        _SCRATCH_KEYS[fqrn] = generate_keyset(fqrn)
    return _SCRATCH_KEYS[fqrn]


@dataclass(frozen=True)
class PreparedPublish:
    old_root_hash: str
    new_root_hash: str
    capture: CapturingStorage

    @property
    def object_keys(self) -> list[str]:
        return sorted(self.capture.keys)


@contextmanager
def publisher_transaction(
    storage: Storage, fqrn: str, scratch: Storage | None = None
) -> Iterator[Transaction]:
    """A transaction on the revision `storage` has now, writing only into a capture."""
    writer = RepositoryWriter(CapturingStorage(storage, scratch), fqrn, _scratch_keys(fqrn))
    txn = writer.transaction()
    try:
        yield txn
    finally:
        txn.abort()


def prepare(txn: Transaction) -> PreparedPublish:
    """The new catalogs (bottom-up, as the publisher's sync writes them) and every object."""
    catalogs = txn.finalize_catalogs(last_modified=int(time.time()))
    capture = txn.storage
    assert isinstance(capture, CapturingStorage)
    # swissknife_sync.cc sends both root hashes with the catalog suffix (ToString(true)).
    return PreparedPublish(
        txn.base_root_hash.hex + ObjectSuffix.CATALOG,
        catalogs[-1].content_hash.hex + ObjectSuffix.CATALOG,
        capture,
    )


def object_name(key: str) -> str:
    """`data/ab/cdef…C` → `abcdef…C`, the name in a pack header."""
    _data, prefix, rest = key.split("/")
    return prefix + rest


def send_objects(
    publisher: Publisher,
    token: str,
    capture: CapturingStorage,
    keys: list[str] | None = None,
    max_pack_bytes: int = STOCK_PACK_BYTES,
) -> int:
    """Payloads as the publisher dispatches them: packs up to `max_pack_bytes`, a larger
    object in a pack of its own. Returns the number of payloads."""
    pack: list[tuple[str, bytes]] = []
    size = 0
    sent = 0

    def flush() -> None:
        nonlocal pack, size, sent
        reply = publisher.submit(token, *build_pack(pack))
        if reply != {"status": "ok"}:
            raise RuntimeError(f"payload refused: {reply}")
        pack, size, sent = [], 0, sent + 1

    for key in keys if keys is not None else sorted(capture.keys):
        data = capture.get(key)
        if pack and size + len(data) > max_pack_bytes:
            flush()
        pack.append((object_name(key), data))
        size += len(data)
    if pack:
        flush()
    return sent
