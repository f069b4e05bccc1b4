"""Helpers for the gateway tests (no tests here): a gateway world and a protocol publisher.

The publisher side of the protocol is `gateway.publisher` (the stock publisher's exchange,
byte for byte). `gateway_world` provisions repositories as provisioning does
(registry row, key set with a gateway key in OpenBao, stratum-0 created) and serves the gateway
app with uvicorn on a free port.
"""

from __future__ import annotations

import shutil
import tempfile
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from pydantic import SecretStr

from cvmfs.keys import KeySet, generate_keyset, parse_gateway_key
from cvmfs.storage import LocalStorage
from cvmfs.writer import RepositoryWriter, create_repository
from gateway.app import create_app
from gateway.publisher import Publisher
from service.keystore import KeyOwner, KeyStore
from service.repositories import RepositoryClaim, RepositoryRegistry
from service.settings import Settings
from tasks.locks import create_publish_lock
from tests.conftest import settings_env
from tests.test_api_support import ServedApp, free_port


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
    shutil.rmtree(tmp, ignore_errors=True)  # 40 MiB a commit test (the chunked file)
