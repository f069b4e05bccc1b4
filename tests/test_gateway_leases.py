"""The gateway's leases over real HTTP: grant, busy, disjoint paths, cancel, drop, refusals.

The publisher is written from the protocol (tests/gateway_support.py); keys come from the
test stack's OpenBao, leases live in the registry database.
"""

from __future__ import annotations

import re
import sqlite3
import threading
import time
from collections.abc import Iterator

import httpx
import pytest
from sqlalchemy.exc import OperationalError

from cvmfs.keys import generate_gateway_key, parse_gateway_key
from gateway.app import create_app
from gateway.auth import authorization_header
from gateway.leases import Lease, LeaseStore
from gateway.publisher import Publisher
from gateway.services import GatewayServices
from service.keystore import KeyOwner, secret_path, vault_client
from service.repositories import FileProvenance, database_url
from service.schema import open_engine
from service.settings import Settings
from tests.gateway_support import GatewayWorld, gateway_world
from tests.test_api_support import ServedApp, free_port

pytestmark = pytest.mark.stack


@pytest.fixture(scope="module")
def world(vault: Settings) -> Iterator[GatewayWorld]:
    with gateway_world(vault, ("alpha", "beta")) as w:
        yield w


def error_reason(reply: dict[str, object]) -> str:
    assert reply["status"] == "error", reply
    assert isinstance(reply["reason"], str)
    return reply["reason"]


# Go's Duration.String() of a little under 2 h ("1h59m58.123s"), or 2h0m0s exactly
GO_DURATION_NEAR_2H = re.compile(r"1h59m[1-5]?[0-9](\.[0-9]{1,9})?s|2h0m0s")
# Go's Time.String() of time.UnixMilli in UTC
GO_TIME_UTC = re.compile(r"\d{4}-\d\d-\d\d \d\d:\d\d:\d\d(\.\d{1,3})? \+0000 UTC")


def assert_get_lease_is_invalid(world: GatewayWorld, token: str) -> None:
    """handleGetLeases answers an unknown or expired token with HTTP 500, text 'invalid lease'."""
    reply = httpx.get(f"{world.api_url}/leases/{token}")
    assert (reply.status_code, reply.text) == (500, "invalid lease\n")


def test_root_and_repository_listing(world: GatewayWorld) -> None:
    root = httpx.get(world.api_url).json()
    assert set(root) == {"welcome"}  # root.go: a welcome only
    listing = httpx.get(f"{world.api_url}/repos").json()
    assert listing["status"] == "ok"
    alpha = world.repos["alpha"]
    assert listing["data"][alpha] == {"keys": {alpha: "/"}, "enabled": True}
    one = httpx.get(f"{world.api_url}/repos/{alpha}").json()
    assert one == {"status": "ok", "data": {"keys": {alpha: "/"}, "enabled": True}}
    unknown = httpx.get(f"{world.api_url}/repos/nope.example.org").json()
    assert unknown == {"status": "error", "reason": "invalid_repo"}
    # the admin calls need an admin key (authz.go), which this gateway does not have
    for admin_call in (f"/repos/{alpha}", "/gc"):
        reply = world.publisher("alpha").client.post(world.api_url + admin_call, content=b"{}")
        assert reply.status_code == 200 and "no_admin_key" in error_reason(reply.json())


def test_a_lease_on_the_root_makes_every_path_busy(world: GatewayWorld) -> None:
    publisher = world.publisher("alpha")  # beta has bucket-fed paths, which refuse the root
    fqrn = world.repos["alpha"]
    token = publisher.acquire_token(f"{fqrn}/")
    try:
        for below in (f"{fqrn}/", f"{fqrn}/x", f"{fqrn}/x/y"):
            assert publisher.acquire(below)["status"] == "path_busy", below
    finally:
        assert publisher.drop(token) == {"status": "ok"}


def test_overlapping_lease_is_busy_and_disjoint_paths_lease_in_parallel(
    world: GatewayWorld,
) -> None:
    publisher = world.publisher("alpha")
    fqrn = world.repos["alpha"]
    token = publisher.acquire_token(f"{fqrn}/sw/v1")
    try:
        for overlapping in (f"{fqrn}/sw/v1", f"{fqrn}/sw", f"{fqrn}/", f"{fqrn}/sw/v1/lib"):
            reply = publisher.acquire(overlapping)
            assert set(reply) == {"status", "time_remaining"}
            assert reply["status"] == "path_busy", (overlapping, reply)
            # Go's Duration.String(), a JSON string, as the 2.11 publisher reads and prints
            # it (publish/repository_session.cc); the stock lease time is 2 h
            assert GO_DURATION_NEAR_2H.fullmatch(reply["time_remaining"]), reply
        other = publisher.acquire_token(f"{fqrn}/sw/v2")  # a sibling: disjoint
        prefix_only = publisher.acquire_token(f"{fqrn}/sw/v10")  # /sw/v1 is not a prefix
        leases = httpx.get(f"{world.api_url}/leases").json()["data"]
        assert {f"{fqrn}/sw/v1", f"{fqrn}/sw/v2", f"{fqrn}/sw/v10"} <= set(leases)
        assert leases[f"{fqrn}/sw/v1"]["hostname"] == "publisher.example.org"
        one = httpx.get(f"{world.api_url}/leases/{token}")
        # lease_service.go GetLease: {"data": LeaseDTO}, no status; expires in Go's format
        assert one.status_code == 200 and set(one.json()) == {"data"}
        data = one.json()["data"]
        assert set(data) == {"key_id", "path", "expires", "hostname"}
        assert data["path"] == f"{fqrn}/sw/v1" and data["key_id"] == fqrn
        assert GO_TIME_UTC.fullmatch(data["expires"]), data
        assert leases[f"{fqrn}/sw/v1"] == data
        for held in (other, prefix_only):
            assert publisher.drop(held) == {"status": "ok"}
    finally:
        publisher.drop(token)


def test_cancel_frees_the_path_and_the_token_is_gone(world: GatewayWorld) -> None:
    publisher = world.publisher("alpha")
    fqrn = world.repos["alpha"]
    token = publisher.acquire_token(f"{fqrn}/cancel")
    assert publisher.drop(token) == {"status": "ok"}
    assert "invalid lease" in error_reason(publisher.drop(token))
    assert_get_lease_is_invalid(world, token)
    again = publisher.acquire_token(f"{fqrn}/cancel")
    assert publisher.drop(again) == {"status": "ok"}


def test_drop_by_path_removes_the_leases_below_it(world: GatewayWorld) -> None:
    publisher = world.publisher("alpha")
    fqrn = world.repos["alpha"]
    below = publisher.acquire_token(f"{fqrn}/admin/a")
    beside = publisher.acquire_token(f"{fqrn}/adminx")
    assert publisher.drop_by_path(f"{fqrn}/admin") == {"status": "ok"}
    assert "invalid lease" in error_reason(publisher.drop(below))
    assert publisher.drop(beside) == {"status": "ok"}
    other = world.publisher("beta")  # another repository's key may not drop alpha's leases
    assert "invalid_key" in error_reason(other.drop_by_path(f"{fqrn}/admin"))


def test_refusals_of_bad_lease_requests(world: GatewayWorld) -> None:
    publisher = world.publisher("alpha")
    fqrn = world.repos["alpha"]
    beta = world.repos["beta"]
    # unknown key id
    stranger = Publisher(world.api_url, "no-such-key", publisher.secret)
    assert "invalid_key" in error_reason(stranger.acquire(f"{fqrn}/x"))
    # a key of another repository
    assert "invalid_key" in error_reason(world.publisher("beta").acquire(f"{fqrn}/x"))
    # a bad HMAC (the right key id, a wrong secret)
    forger = Publisher(world.api_url, publisher.key_id, "not-the-secret")
    assert "invalid_hmac" in error_reason(forger.acquire(f"{fqrn}/x"))
    # no or garbled Authorization header
    body = publisher.lease_body(f"{fqrn}/x")
    reply = httpx.post(f"{world.api_url}/leases", content=body).json()
    assert "invalid_hmac" in error_reason(reply)
    # the HMAC of another body
    header = authorization_header(publisher.key_id, publisher.secret, b"{}")
    reply = httpx.post(f"{world.api_url}/leases", content=body, headers={"Authorization": header})
    assert "invalid_hmac" in error_reason(reply.json())
    # paths: '..', '.', empty segment, absolute, no sub path, foreign repository
    for bad in (f"{fqrn}/a/../b", f"{fqrn}/..", f"{fqrn}/./a", f"{fqrn}/a//b", f"/{fqrn}/a", fqrn):
        assert "invalid lease path" in error_reason(publisher.acquire(bad)), bad
    assert "invalid_repo" in error_reason(publisher.acquire("elsewhere.example.org/a"))
    assert "invalid_key" in error_reason(publisher.acquire(f"{beta}/a"))
    # an old protocol version
    assert "incompatible request version" in error_reason(publisher.acquire(f"{fqrn}/x", 1))
    # not JSON
    header = authorization_header(publisher.key_id, publisher.secret, b"nope")
    reply = httpx.post(
        f"{world.api_url}/leases", content=b"nope", headers={"Authorization": header}
    )
    # a body the stock gateway cannot decode is HTTP 400 there (leases.go), JSON here
    assert reply.status_code == 400 and "not JSON" in error_reason(reply.json())
    body = f'{{"path" : "{fqrn}/x", "api_version" : "two"}}'.encode()
    header = authorization_header(publisher.key_id, publisher.secret, body)
    reply = httpx.post(f"{world.api_url}/leases", content=body, headers={"Authorization": header})
    assert reply.status_code == 400 and "api_version" in error_reason(reply.json())
    # an unknown token
    assert "invalid lease" in error_reason(publisher.drop("NOSUCHTOKEN"))
    # none of these left a lease behind
    assert httpx.get(f"{world.api_url}/leases").json()["data"] == {}


def test_an_expired_lease_is_invalid_and_frees_its_path(vault: Settings) -> None:
    with gateway_world(vault, ("short",), lease_time_s=1) as world:
        publisher = world.publisher("short")
        fqrn = world.repos["short"]
        token = publisher.acquire_token(f"{fqrn}/sw")
        time.sleep(1.5)
        assert_get_lease_is_invalid(world, token)
        assert "expired" in error_reason(publisher.drop(token))
        again = publisher.acquire_token(f"{fqrn}/sw")
        assert publisher.drop(again) == {"status": "ok"}


def test_a_lease_overlapping_bucket_fed_paths_is_refused(world: GatewayWorld) -> None:
    """Ownership between channels: what the bucket feeds (file provenance, as the sync records
    it) is the bucket's; the gateway leases only paths beside it."""
    fqrn = world.repos["beta"]
    world.registry.upsert_file(
        fqrn,
        FileProvenance(
            path="/from-bucket/tool",  # as the sync records it
            s3_key="cvmfs/from-bucket/tool",
            etag="etag-1",
            version_id=None,
            size_bytes=5,
            revision=1,
        ),
    )
    publisher = world.publisher("beta")
    for overlapping in (f"{fqrn}/", f"{fqrn}/from-bucket", f"{fqrn}/from-bucket/tool/x"):
        reason = error_reason(publisher.acquire(overlapping))
        assert "path_fed_by_bucket" in reason and "cvmfs/from-bucket/tool" in reason
    for beside in (f"{fqrn}/from-bucketx", f"{fqrn}/gateway-fed"):
        assert publisher.drop(publisher.acquire_token(beside)) == {"status": "ok"}


def test_a_rotated_key_works_at_once_and_the_old_one_is_refused(world: GatewayWorld) -> None:
    """Rotation without downtime: the gateway re-reads Vault on an unknown key id or a failed
    HMAC (at most every gateway.key_refresh_min_s), so no restart is needed."""
    fqrn = world.repos["beta"]
    old = world.publisher("beta")
    assert old.drop(old.acquire_token(f"{fqrn}/rotation")) == {"status": "ok"}  # cached now
    new_line = generate_gateway_key("rotated-key")
    repository = world.registry.require(fqrn)
    owner = KeyOwner.personal(repository.owner_subject)
    client = vault_client(world.settings.vault)
    fields = client.secrets.kv.v2.read_secret_version(
        path=secret_path(owner, fqrn),
        mount_point=world.settings.vault.kv_mount,
        raise_on_deleted_version=True,
    )["data"]["data"]
    client.secrets.kv.v2.create_or_update_secret(
        path=secret_path(owner, fqrn),
        secret={**fields, "gatewayKey": new_line},
        mount_point=world.settings.vault.kv_mount,
    )
    time.sleep(world.settings.gateway.key_refresh_min_s + 0.1)
    key_id, secret = parse_gateway_key(new_line)
    new = Publisher(world.api_url, key_id, secret)
    assert new.drop(new.acquire_token(f"{fqrn}/rotation")) == {"status": "ok"}
    assert "invalid_key" in error_reason(old.acquire(f"{fqrn}/rotation"))


def test_racing_lease_requests_through_two_gateway_processes_grant_one(
    world: GatewayWorld,
) -> None:
    """Two gateway instances (each its own app, lease store and database connections, as two
    processes behind one URL) asked for the same path at once grant exactly one lease."""
    second_port = free_port()
    fqrn = world.repos["alpha"]
    with ServedApp(create_app(world.settings), second_port):
        urls = [world.api_url, f"http://127.0.0.1:{second_port}/api/v1"]
        key = world.publisher("alpha")
        publishers = [Publisher(urls[i % 2], key.key_id, key.secret) for i in range(12)]
        replies: list[dict[str, object]] = []
        lock = threading.Lock()

        def ask(publisher: Publisher) -> None:
            reply = publisher.acquire(f"{fqrn}/race")
            with lock:
                replies.append(reply)

        threads = [threading.Thread(target=ask, args=(p,)) for p in publishers]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(timeout=60)
    granted = [r for r in replies if r["status"] == "ok"]
    assert len(replies) == 12 and len(granted) == 1, replies
    assert {r["status"] for r in replies} == {"ok", "path_busy"}
    assert key.drop(str(granted[0]["session_token"])) == {"status": "ok"}


def test_a_commit_after_the_lease_expired_is_refused(vault: Settings) -> None:
    with gateway_world(vault, ("late",), lease_time_s=1) as world:
        publisher = world.publisher("late")
        fqrn = world.repos["late"]
        manifest = world.writer("late").current_manifest()
        token = publisher.acquire_token(f"{fqrn}/sw")
        time.sleep(1.5)
        root = manifest.root_catalog_hash.hex
        assert "expired" in error_reason(publisher.commit(token, root, root))
        assert world.writer("late").current_manifest().revision == manifest.revision


def test_a_key_restricted_to_a_sub_path_leases_only_below_it(vault: Settings) -> None:
    with gateway_world(vault, ("team",)) as world:
        fqrn = world.repos["team"]
        owner = KeyOwner.personal(world.registry.require(fqrn).owner_subject)
        client = vault_client(world.settings.vault)
        mount = world.settings.vault.kv_mount
        fields = client.secrets.kv.v2.read_secret_version(
            path=secret_path(owner, fqrn), mount_point=mount, raise_on_deleted_version=True
        )["data"]["data"]
        client.secrets.kv.v2.create_or_update_secret(
            path=secret_path(owner, fqrn),
            secret={**fields, "gatewayKeyPath": "/team-a"},
            mount_point=mount,
        )
        publisher = world.publisher("team")
        for allowed in (f"{fqrn}/team-a", f"{fqrn}/team-a/sub"):
            assert publisher.drop(publisher.acquire_token(allowed)) == {"status": "ok"}
        for refused in (f"{fqrn}/", f"{fqrn}/team-b", f"{fqrn}/team-ab"):
            assert "invalid_path" in error_reason(publisher.acquire(refused)), refused
        assert "invalid_path" in error_reason(publisher.drop_by_path(f"{fqrn}/team-b"))
        listing = httpx.get(f"{world.api_url}/repos/{fqrn}").json()
        assert listing["data"]["keys"] == {fqrn: "/team-a"}


class FailingLeaseStore(LeaseStore):
    """Test double, for a fault the shared test stack cannot cause for real: the registry
    database failing under a running gateway."""

    def find(self, token: str) -> Lease:
        raise OperationalError("SELECT ...", {}, sqlite3.OperationalError("disk I/O error"))


def test_an_internal_failure_is_still_a_json_reply(world: GatewayWorld) -> None:
    """The stock publisher dereferences the parsed reply of a commit or payload unchecked
    (swissknife_lease_curl.cc, session_context.cc): a text error page would crash it."""
    services = GatewayServices.from_settings(world.settings)
    services.leases.close()
    services.leases = FailingLeaseStore(open_engine(database_url(world.settings)))
    port = free_port()
    with ServedApp(create_app(world.settings, services), port):
        publisher = world.publisher("alpha")
        publisher.api_url = f"http://127.0.0.1:{port}/api/v1"
        reply = publisher.client.post(
            f"{publisher.api_url}/leases/SOMETOKEN",
            content=b"{}",
            headers={
                "Authorization": authorization_header(
                    publisher.key_id, publisher.secret, b"SOMETOKEN"
                )
            },
        )
    assert reply.status_code == 500
    assert reply.json()["status"] == "error"
    assert "OperationalError" in reply.json()["reason"]
