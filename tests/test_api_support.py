"""Helpers for the user API tests (no tests here): the running API and a world to test it in.

`api_world` starts a local OIDC issuer, an isolated RabbitMQ topology, a registry in a temp dir,
deployments on the test Prefect server, two published repositories and the API under uvicorn on
a free 127.0.0.1 port. A test module makes it a fixture (see `world` in tests/test_api.py).
"""

from __future__ import annotations

import socket
import tempfile
import threading
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import uvicorn
from pydantic import SecretStr

from cvmfs.keys import KeySet, generate_keyset
from cvmfs.storage import LocalStorage
from cvmfs.writer import create_repository
from flows.rollback import rollback as rollback_flow
from flows.sync import reconcile as reconcile_flow
from flows.sync import sync as sync_flow
from flows.tag import tag as tag_flow
from service.api import ApiServices, create_app
from service.auth import TokenVerifier
from service.keystore import KeyOwner, KeyStore
from service.repositories import FileProvenance, RepositoryClaim, RepositoryRegistry
from service.settings import Settings
from tests.issuer import TestIssuer
from tests.test_bridge_support import Isolated, declare, isolated

ALICE_SUB = "7f3c1b2a-0000-4000-8000-00000000a11c"  # the issuer's default subject
BOB_SUB = "7f3c1b2a-0000-4000-8000-000000000b0b"
CAROL_SUB = "7f3c1b2a-0000-4000-8000-0000000ca201"
DAVE_SUB = "7f3c1b2a-0000-4000-8000-00000000da7e"


@dataclass
class ApiWorld:
    settings: Settings
    issuer: TestIssuer
    base_url: str
    iso: Isolated
    registry: RepositoryRegistry
    key_store: KeyStore
    alice_repo: str  # alice's personal repository: 3 revisions, tags v1 and v2
    group_repo: str  # group cms's repository, requested by alice
    bob_repo: str  # bob's personal repository
    atlas_repo: str  # group atlas's repository, requested by bob
    keys: dict[str, KeySet]
    sync_deployment: str
    reconcile_deployment: str

    def client(self, token: str | None = None) -> httpx.Client:
        headers = {"Authorization": f"Bearer {token}"} if token is not None else {}
        return httpx.Client(base_url=self.base_url, headers=headers, timeout=60.0)

    # tokens of the test users
    def alice(self, **claims: Any) -> str:
        return self.issuer.mint(**claims)

    def bob(self, **claims: Any) -> str:
        values: dict[str, Any] = {
            "sub": BOB_SUB,
            "preferred_username": "bob",
            "groups": ["atlas"],
            "wlcg.groups": ["/atlas"],
        }
        return self.issuer.mint(**(values | claims))

    def carol_cms_manager(self) -> str:
        """A manager of group cms (member of cms/managers), not a member of cms itself."""
        values: dict[str, Any] = {
            "sub": CAROL_SUB,
            "preferred_username": "carol",
            "groups": ["cms/managers"],
            "wlcg.groups": [],
        }
        return self.issuer.mint(**values)

    def dave_cms_member(self) -> str:
        """A plain member of cms (reads its repositories, may not get keys or run anything)."""
        values: dict[str, Any] = {
            "sub": DAVE_SUB,
            "preferred_username": "dave",
            "groups": ["cms"],
            "wlcg.groups": ["/cms"],
        }
        return self.issuer.mint(**values)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class ServedApp:
    """uvicorn serving an app in a thread (signal handlers stay with the main thread)."""

    def __init__(self, app: Any, port: int) -> None:
        config = uvicorn.Config(
            app, host="127.0.0.1", port=port, log_level="warning", lifespan="on"
        )
        self.server = uvicorn.Server(config)
        self.thread = threading.Thread(target=self.server.run, name="api-uvicorn", daemon=True)

    def __enter__(self) -> ServedApp:
        self.thread.start()
        deadline = time.monotonic() + 60
        while not self.server.started:
            if not self.thread.is_alive() or time.monotonic() > deadline:
                raise RuntimeError("uvicorn did not start the API within 60 s")
            time.sleep(0.05)
        return self

    def __exit__(self, *exc: object) -> None:
        self.server.should_exit = True
        self.thread.join(timeout=30)


def publish_test_repository(
    settings: Settings,
    registry: RepositoryRegistry,
    key_store: KeyStore,
    claim: RepositoryClaim,
    revisions: bool,
) -> KeySet:
    """Registry entry + keys in Vault + stratum-0 content (revision 1; with `revisions`, 2 more).

    Revision 2 (tag v1): /software/tool (v1, 0755), /latest → software/tool, /docs/README.
    Revision 3 (tag v2): /software/tool (v2), /software/extra added, /docs/README removed.
    """
    registry.claim(claim)
    owner = (
        KeyOwner.of_group(claim.group)
        if claim.kind == "group" and claim.group
        else KeyOwner.personal(claim.owner_subject)
    )
    # as provisioning does: with a gateway key whose id is the fqrn
    keyset = generate_keyset(claim.fqrn, gateway_key_id=claim.fqrn)
    keys, _ = key_store.store_if_absent(owner, claim.fqrn, keyset)
    storage = LocalStorage(settings.absolute_data_dir / "stratum0" / claim.fqrn)
    writer, result = create_repository(storage, claim.fqrn, keys)
    if revisions:
        with writer.transaction() as txn:
            txn.add_file("/software/tool", b"#!/bin/sh\necho v1\n", mode=0o755)
            txn.symlink("/latest", "software/tool")
            txn.add_file("/docs/README", b"read me\n")
            result = txn.publish(tag="v1", description="first release")
        registry.upsert_file(
            claim.fqrn,
            FileProvenance(
                path="docs/README",
                s3_key="cvmfs/docs/README",
                etag="etag-readme",
                version_id=None,
                size_bytes=8,
                revision=result.revision,
            ),
        )
        with writer.transaction() as txn:
            txn.add_file("/software/tool", b"#!/bin/sh\necho v2 here\n", mode=0o755)
            txn.add_file("/software/extra", b"extra\n")
            txn.remove("/docs/README")
            result = txn.publish(tag="v2", description="second release")
        registry.upsert_file(
            claim.fqrn,
            FileProvenance(
                path="software/tool",
                s3_key="cvmfs/software/tool",
                etag="etag-tool-2",
                version_id=None,
                size_bytes=23,
                revision=result.revision,
            ),
        )
    registry.record_publish(claim.fqrn, result.revision)
    registry.set_status(claim.fqrn, "ready")
    return keys


@contextmanager
def api_world(rabbitmq: Settings, vault: Settings) -> Iterator[ApiWorld]:
    """The world (see the module docstring); needs the prefect_server fixture running."""
    tag = uuid.uuid4().hex[:6]
    tmp = Path(tempfile.mkdtemp(prefix="cvmfs-api-test-"))
    iso = isolated(rabbitmq, sync_deployment=f"sync/api-test-{tag}")
    declare(iso)
    with TestIssuer() as issuer:
        settings = vault.model_copy(
            update={
                "database_url": SecretStr(f"sqlite:///{tmp / 'registry.sqlite3'}"),
                "rabbitmq": iso.mq,
                "oidc": vault.oidc.model_copy(
                    update={
                        "issuer_url": issuer.url,
                        "audience": issuer.audience,
                        "jwks_min_refresh_interval_s": 0,
                    }
                ),
                "api": vault.api.model_copy(
                    update={"rate_limit_burst": 1000, "rate_limit_per_minute": 1000.0}
                ),
            }
        )
        registry = RepositoryRegistry.open(settings)
        key_store = KeyStore.from_settings(settings.vault)
        domain = settings.repository_domain
        names = {
            "alice": f"api{tag}-alice-personal.{domain}",
            "group": f"api{tag}-cms.{domain}",
            "bob": f"api{tag}-bob-personal.{domain}",
            "atlas": f"api{tag}-atlas.{domain}",
        }
        claims = {
            "alice": RepositoryClaim(
                fqrn=names["alice"],
                kind="personal",
                owner_subject=ALICE_SUB,
                owner_username="alice",
                bucket=f"api{tag}-alice",
            ),
            "group": RepositoryClaim(
                fqrn=names["group"],
                kind="group",
                owner_subject=ALICE_SUB,
                owner_username="alice",
                group="cms",
                bucket=f"api{tag}-cms",
            ),
            "bob": RepositoryClaim(
                fqrn=names["bob"],
                kind="personal",
                owner_subject=BOB_SUB,
                owner_username="bob",
                bucket=f"api{tag}-bob",
            ),
            "atlas": RepositoryClaim(
                fqrn=names["atlas"],
                kind="group",
                owner_subject=BOB_SUB,
                owner_username="bob",
                group="atlas",
                bucket=f"api{tag}-atlas",
            ),
        }
        keys = {
            names[who]: publish_test_repository(
                settings, registry, key_store, claim, revisions=(who == "alice")
            )
            for who, claim in claims.items()
        }
        reconcile_deployment = f"reconcile/api-test-{tag}"
        # The real flows under test-only deployment names (sync and reconcile): runs are created
        # and checked against the flows' parameter schemas, but nothing serves them here.
        flows: list[tuple[Any, str]] = [
            (sync_flow, iso.config.sync_deployment),
            (reconcile_flow, reconcile_deployment),
            (rollback_flow, "rollback/rollback"),
            (tag_flow, "tag/tag"),
        ]
        for served_flow, name in flows:
            # to_deployment/apply are sync here (no event loop); Any hides their async variant.
            deployment: Any = served_flow.to_deployment(name=name.split("/")[1])
            deployment.apply()
        verifier = TokenVerifier(settings.oidc)
        services = ApiServices.from_settings(settings, verifier=verifier, bridge_config=iso.config)
        services.deployments = services.deployments.model_copy(
            update={"reconcile": reconcile_deployment}
        )
        port = free_port()
        try:
            with ServedApp(create_app(settings, services), port):
                yield ApiWorld(
                    settings=settings,
                    issuer=issuer,
                    base_url=f"http://127.0.0.1:{port}",
                    iso=iso,
                    registry=registry,
                    key_store=key_store,
                    alice_repo=names["alice"],
                    group_repo=names["group"],
                    bob_repo=names["bob"],
                    atlas_repo=names["atlas"],
                    keys=keys,
                    sync_deployment=iso.config.sync_deployment,
                    reconcile_deployment=reconcile_deployment,
                )
        finally:
            verifier.close()
            registry.close()
