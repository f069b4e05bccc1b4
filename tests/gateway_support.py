"""Helpers for the gateway tests (no tests here): a gateway world and a protocol publisher.

`Publisher` speaks the HTTP exchange as the stock publisher does (cvmfs 2.11.5
swissknife_lease_curl.cc, session_context.cc): the same JSON strings, byte for byte, the same
headers and HMAC messages. `gateway_world` provisions repositories as provisioning does
(registry row, key set with a gateway key in OpenBao, stratum-0 created) and serves the gateway
app with uvicorn on a free port.
"""

from __future__ import annotations

import hashlib
import io
import tempfile
import threading
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any, BinaryIO

import httpx
import pytest
from pydantic import SecretStr

from cvmfs.keys import KeySet, generate_keyset, parse_gateway_key
from cvmfs.storage import LocalStorage, Storage
from cvmfs.transaction import Transaction
from cvmfs.writer import RepositoryWriter, create_repository
from gateway.app import create_app
from gateway.auth import authorization_header
from gateway.pack import build_pack
from service.keystore import KeyOwner, KeyStore
from service.repositories import RepositoryClaim, RepositoryRegistry
from service.settings import Settings
from tasks.locks import create_publish_lock
from tests.conftest import settings_env
from tests.test_api_support import ServedApp, free_port

HOSTNAME = "publisher.example.org"


@dataclass
class Publisher:
    """One publisher's key (`<fqrn>.gw`) and the gateway URL `http://host:port/api/v1`."""

    api_url: str
    key_id: str
    secret: str
    client: httpx.Client = field(default_factory=lambda: httpx.Client(timeout=120.0))

    def _post(self, url: str, body: bytes, auth_message: bytes, **headers: str) -> Any:
        headers["Authorization"] = authorization_header(self.key_id, self.secret, auth_message)
        response = self.client.post(url, content=body, headers=headers)
        return response.json()

    def lease_body(self, lease_path: str, api_version: int = 2) -> bytes:
        # MakeAcquireRequest: the spaces and the string api_version are the publisher's.
        return (
            f'{{"path" : "{lease_path}", "api_version" : "{api_version}", '
            f'"hostname" : "{HOSTNAME}"}}'
        ).encode()

    def acquire(self, lease_path: str, api_version: int = 2) -> Any:
        body = self.lease_body(lease_path, api_version)
        return self._post(f"{self.api_url}/leases", body, body)

    def acquire_token(self, lease_path: str) -> str:
        reply = self.acquire(lease_path)
        assert reply["status"] == "ok", reply
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


@dataclass
class GatewayWorld:
    settings: Settings
    api_url: str
    registry: RepositoryRegistry
    key_store: KeyStore
    repos: dict[str, str]  # label -> fqrn
    keys: dict[str, KeySet]  # fqrn -> key set (with its gateway key)

    def publisher(self, label: str) -> Publisher:
        key_id, secret = parse_gateway_key(self.keys[self.repos[label]].gateway_key or "")
        return Publisher(self.api_url, key_id, secret)

    def storage(self, label: str) -> LocalStorage:
        return LocalStorage(self.settings.absolute_data_dir / "stratum0" / self.repos[label])

    def writer(self, label: str) -> RepositoryWriter:
        fqrn = self.repos[label]
        return RepositoryWriter.open(self.storage(label), fqrn, self.keys[fqrn])


def provision_repository(
    settings: Settings, registry: RepositoryRegistry, key_store: KeyStore, fqrn: str
) -> KeySet:
    """What the provision flow leaves: registry row (ready), keys in Vault, stratum-0."""
    subject = str(uuid.uuid4())
    registry.claim(
        RepositoryClaim(
            fqrn=fqrn,
            kind="personal",
            owner_subject=subject,
            owner_username="expert",
            bucket=f"gw-{uuid.uuid4().hex[:12]}",
        )
    )
    keys, _ = key_store.store_if_absent(
        KeyOwner.personal(subject), fqrn, generate_keyset(fqrn, gateway_key_id=fqrn)
    )
    storage = LocalStorage(settings.absolute_data_dir / "stratum0" / fqrn)
    _writer, result = create_repository(storage, fqrn, keys)
    registry.record_publish(fqrn, result.revision)
    registry.set_status(fqrn, "ready")
    return keys


@contextmanager
def gateway_world(
    vault: Settings, labels: tuple[str, ...], *, flows: bool = False, **gateway: Any
) -> Iterator[GatewayWorld]:
    """With `flows`, each repository gets its publish lock on the test Prefect server and the
    environment carries the world's settings, which the commit flow's `load_settings()` reads."""
    tmp = Path(tempfile.mkdtemp(prefix="cvmfs-gateway-test-"))
    settings = vault.model_copy(
        update={
            "data_dir": tmp,
            "database_url": SecretStr(f"sqlite:///{tmp / 'registry.sqlite3'}"),
            "gateway": vault.gateway.model_copy(update=gateway),
        }
    )
    registry = RepositoryRegistry.open(settings)
    key_store = KeyStore.from_settings(settings.vault)
    tag = uuid.uuid4().hex[:6]
    repos = {label: f"gw{tag}-{label}.{settings.repository_domain}" for label in labels}
    keys = {
        fqrn: provision_repository(settings, registry, key_store, fqrn) for fqrn in repos.values()
    }
    port = free_port()
    with pytest.MonkeyPatch.context() as env, ServedApp(create_app(settings), port):
        if flows:
            for fqrn in repos.values():
                create_publish_lock(fqrn)
            for key, value in settings_env(settings).items():
                env.setenv(key, value)
        yield GatewayWorld(
            settings=settings,
            api_url=f"http://127.0.0.1:{port}/api/v1",
            registry=registry,
            key_store=key_store,
            repos=repos,
            keys=keys,
        )
    registry.close()


# --- the publisher's side of a publish --------------------------------------------------------


class CapturingStorage:
    """The publisher's view of the repository: reads stratum-0 (as the stock publisher reads it
    over HTTP) and keeps every object it writes, to send them to the gateway in payloads."""

    def __init__(self, upstream: Storage) -> None:
        self.upstream = upstream
        self.written: dict[str, bytes] = {}
        self._lock = threading.Lock()

    def get(self, key: str) -> bytes:
        with self._lock:
            if key in self.written:
                return self.written[key]
        return self.upstream.get(key)

    def open(self, key: str) -> BinaryIO:
        return io.BytesIO(self.get(key))

    def exists(self, key: str) -> bool:
        with self._lock:
            if key in self.written:
                return True
        return self.upstream.exists(key)

    def put(self, key: str, data: bytes | IO[bytes]) -> None:
        value = data if isinstance(data, bytes) else data.read()
        with self._lock:
            self.written[key] = bytes(value)

    def put_atomic(self, key: str, data: bytes) -> None:
        self.put(key, data)

    def delete(self, key: str) -> None:
        with self._lock:
            self.written.pop(key, None)

    def list(self, prefix: str = "") -> Iterator[str]:
        yield from sorted(k for k in self.written if k.startswith(prefix))


_THROWAWAY_KEYS: dict[str, KeySet] = {}


def _publisher_keys(fqrn: str) -> KeySet:
    """Keys of the publisher's scratch writer: NOT the repository's (a remote publisher never
    holds them); the writer needs some to exist, and never signs with them here."""
    if fqrn not in _THROWAWAY_KEYS:
        _THROWAWAY_KEYS[fqrn] = generate_keyset(fqrn)
    return _THROWAWAY_KEYS[fqrn]


@dataclass
class PreparedPublish:
    old_root_hash: str
    new_root_hash: str
    objects: dict[str, bytes]  # storage key -> stored bytes (what the payloads carry)


@contextmanager
def publisher_transaction(storage: Storage, fqrn: str) -> Iterator[Transaction]:
    """A transaction on the revision stratum-0 has now, writing only into a capture."""
    capture = CapturingStorage(storage)
    writer = RepositoryWriter(capture, fqrn, _publisher_keys(fqrn))
    txn = writer.transaction()
    try:
        yield txn
    finally:
        txn.abort()


def prepare(txn: Transaction) -> PreparedPublish:
    """The new catalogs (written bottom-up, as the publisher's sync does) and every object."""
    catalogs = txn.finalize_catalogs(last_modified=int(time.time()))
    capture = txn.storage
    assert isinstance(capture, CapturingStorage)
    objects = dict(capture.written)
    return PreparedPublish(txn.base_root_hash.hex, catalogs[-1].content_hash.hex, objects)


def object_name(key: str) -> str:
    """`data/ab/cdef…C` → `abcdef…C`, the name in a pack header."""
    _data, prefix, rest = key.split("/")
    return prefix + rest


def send_objects(
    publisher: Publisher, token: str, objects: dict[str, bytes], max_pack_bytes: int = 8 << 20
) -> None:
    """Payloads as the publisher dispatches them: packs up to a size, one object per pack
    at least (a larger object gets a pack of its own)."""
    pack: list[tuple[str, bytes]] = []
    size = 0
    keys = sorted(objects)
    for key in keys:
        data = objects[key]
        if pack and size + len(data) > max_pack_bytes:
            reply = publisher.submit(token, *build_pack(pack))
            assert reply == {"status": "ok"}, reply
            pack, size = [], 0
        pack.append((object_name(key), data))
        size += len(data)
    if pack:
        reply = publisher.submit(token, *build_pack(pack))
        assert reply == {"status": "ok"}, reply
