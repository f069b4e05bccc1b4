"""The user API against the running app (uvicorn) on the real stack: every endpoint, every denial.

Tokens come from a local OIDC issuer; RabbitMQ, OpenBao, Prefect and stratum-0 are the test
stack's; the registry is SQLite in a temp dir.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import logging
import time
import uuid
from collections.abc import Iterator
from typing import Any

import pytest
from prefect import get_client

from bridge.consumer import BridgeConsumer
from bridge.provision_requests import ProvisionRequestParameters
from cvmfs.keys import generate_keyset
from cvmfs.reader import RepositoryReader
from service.api import ApiServices, create_app
from service.auth import TokenVerifier
from service.keystore import SERVICE_KEY_OWNER, unpacked_fqrn
from service.messages import AuthorizedProvisionRequest, ProvisionReply, RequestParser
from service.settings import Settings
from tests.test_api_support import (
    ALICE_SUB,
    BOB_SUB,
    CAROL_SUB,
    DAVE_SUB,
    ApiWorld,
    ServedApp,
    api_world,
    free_port,
)
from tests.test_bridge_support import LOOKUP, RecordingStarter, publish, running, wait_for

pytestmark = [pytest.mark.stack, pytest.mark.slow]


@pytest.fixture(scope="module")
def world(
    rabbitmq: Settings, vault: Settings, prefect_server: Settings, stratum0_http: Settings
) -> Iterator[ApiWorld]:
    with api_world(rabbitmq, vault) as started:
        yield started


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def _unsigned(header: dict[str, Any], claims: dict[str, Any]) -> str:
    return _b64(json.dumps(header).encode()) + "." + _b64(json.dumps(claims).encode())


def forged_tokens(world: ApiWorld) -> dict[str, tuple[str, str]]:
    """name → (token, a fragment the 401 reason must contain)."""
    issuer = world.issuer
    key = issuer.current_key
    now = int(time.time())
    claims = issuer.claims()
    none_token = _unsigned({"alg": "none", "typ": "JWT", "kid": key.kid}, claims) + "."
    hs_header = {"alg": "HS256", "typ": "JWT", "kid": key.kid}
    hs_input = _unsigned(hs_header, claims)
    hs_signature = hmac.new(key.public_pem(), hs_input.encode(), hashlib.sha256).digest()
    other_issuer_key = issuer.claims(iss="https://evil.example.org/")
    tampered = issuer.mint().split(".")
    tampered[1] = _b64(json.dumps(issuer.claims(sub=BOB_SUB)).encode())
    return {
        "expired": (issuer.mint(iat=now - 7200, nbf=now - 7200, exp=now - 3600), "expired"),
        "wrong audience": (issuer.mint(aud="another-service"), "audience"),
        "alg none": (none_token, "'none' is not accepted"),
        "HS256 with the public key": (hs_input + "." + _b64(hs_signature), "'HS256'"),
        "wrong issuer": (
            issuer.mint(**{"iss": other_issuer_key["iss"]}),
            "not issued by",
        ),
        "tampered claims": (".".join(tampered), "signature"),
        "not a JWT": ("not-a-jwt", "well-formed"),
    }


# -- the served application ---------------------------------------------------------------


def test_openapi_and_docs_are_served(world: ApiWorld) -> None:
    with world.client() as client:
        spec = client.get("/openapi.json")
        docs = client.get("/docs")
    assert spec.status_code == 200 and docs.status_code == 200
    paths = spec.json()["paths"]
    for path in (
        "/repositories",
        "/repositories/{fqrn}",
        "/repositories/{fqrn}/client-config",
        "/repositories/{fqrn}/keys",
        "/repositories/{fqrn}/files",
        "/repositories/{fqrn}/history",
        "/repositories/{fqrn}/sync",
        "/repositories/{fqrn}/rollback",
        "/webhooks/registry",
    ):
        assert path in paths, path
    assert "HTTPBearer" in spec.json()["components"]["securitySchemes"]


def test_registry_webhook_is_mounted_in_the_same_app(world: ApiWorld) -> None:
    with world.client() as client:
        answer = client.post("/webhooks/registry", json={"events": []})
    assert answer.status_code == 401  # the webhook's own shared-secret check


# -- authentication -------------------------------------------------------------------------


REPOSITORY_CALLS = [
    ("GET", "/repositories", None),
    ("POST", "/repositories", {"kind": "personal"}),
    ("GET", "/repositories/{fqrn}", None),
    ("GET", "/repositories/{fqrn}/client-config", None),
    ("GET", "/repositories/{fqrn}/keys", None),
    ("GET", "/repositories/{fqrn}/files", None),
    ("GET", "/repositories/{fqrn}/history", None),
    ("POST", "/repositories/{fqrn}/sync", {}),
    ("POST", "/repositories/{fqrn}/rollback", {"tag": "v1"}),
]


@pytest.mark.parametrize(("method", "path", "body"), REPOSITORY_CALLS)
def test_every_repository_endpoint_needs_a_token(
    world: ApiWorld, method: str, path: str, body: Any
) -> None:
    with world.client() as client:
        answer = client.request(method, path.format(fqrn=world.alice_repo), json=body)
    assert answer.status_code == 401
    assert answer.json() == {
        "error": "unauthenticated",
        "reason": "missing 'Authorization: Bearer <access token>' header",
    }
    assert answer.headers["WWW-Authenticate"].startswith("Bearer")


@pytest.mark.parametrize(
    "name",
    [
        "expired",
        "wrong audience",
        "alg none",
        "HS256 with the public key",
        "wrong issuer",
        "tampered claims",
        "not a JWT",
    ],
)
def test_refused_tokens_get_401_with_a_reason_and_no_token_echo(
    world: ApiWorld, name: str, caplog: pytest.LogCaptureFixture
) -> None:
    token, fragment = forged_tokens(world)[name]
    caplog.set_level(logging.DEBUG)
    for method, path, body in REPOSITORY_CALLS:
        with world.client(token) as client:
            answer = client.request(method, path.format(fqrn=world.alice_repo), json=body)
        assert answer.status_code == 401, (name, path, answer.text)
        assert answer.json()["error"] == "unauthenticated"
        assert fragment in answer.json()["reason"], answer.json()
        for part in token.split("."):
            if len(part) > 8:
                assert part not in answer.text
                assert part not in caplog.text


def test_a_basic_auth_header_is_not_a_bearer_token(world: ApiWorld) -> None:
    with world.client() as client:
        answer = client.get("/repositories", headers={"Authorization": "Basic YWxpY2U6eA=="})
    assert answer.status_code == 401


# -- listing and status ----------------------------------------------------------------------


def _fqrns(answer: Any) -> set[str]:
    return {r["fqrn"] for r in answer.json()["repositories"]}


def test_list_shows_my_repositories_and_my_groups(world: ApiWorld) -> None:
    w = world
    with w.client(w.alice()) as client:
        mine = client.get("/repositories")
    with w.client(w.bob()) as client:
        bobs = client.get("/repositories")
    with w.client(w.carol_cms_manager()) as client:
        carols = client.get("/repositories")
    with w.client(w.dave_cms_member()) as client:
        daves = client.get("/repositories")
    assert mine.status_code == 200
    assert {w.alice_repo, w.group_repo} <= _fqrns(mine)
    assert not {w.bob_repo, w.atlas_repo} & _fqrns(mine)
    assert {w.bob_repo, w.atlas_repo} <= _fqrns(bobs)
    assert not {w.alice_repo, w.group_repo} & _fqrns(bobs)
    assert w.group_repo in _fqrns(carols) and w.alice_repo not in _fqrns(carols)
    assert w.group_repo in _fqrns(daves) and w.alice_repo not in _fqrns(daves)


def test_status_of_my_repository(world: ApiWorld) -> None:
    w = world
    w.registry.record_error(w.group_repo, "publish of revision 2 failed: test error")
    with w.client(w.alice()) as client:
        mine = client.get(f"/repositories/{w.alice_repo}").json()
        group = client.get(f"/repositories/{w.group_repo}").json()
    assert mine["status"] == "ready"
    assert mine["current_revision"] == 3
    assert mine["last_publish_at"] is not None
    assert mine["last_error"] is None
    assert mine["owner_subject"] == ALICE_SUB
    assert mine["access"] == ["read", "keys", "sync", "rollback"]
    assert mine["pending_events"]["source"] == f"rabbitmq-management:{w.iso.config.s3.queue}"
    assert group["last_error"] == "publish of revision 2 failed: test error"
    assert group["kind"] == "group" and group["group"] == "cms"


def test_pending_events_count_the_waiting_bucket_events(world: ApiWorld) -> None:
    w = world
    publish(w.iso.mq, w.iso.s3_key, [b'{"Records": []}'] * 3)

    def count() -> int | None:
        with w.client(w.alice()) as client:
            value = client.get(f"/repositories/{w.alice_repo}").json()["pending_events"]["count"]
        return value if isinstance(value, int) else None

    # The management API refreshes its queue statistics every few seconds.
    wait_for(lambda: (count() or 0) >= 3, "the management API to count 3 waiting events")


def test_a_group_members_rights_are_read_only(world: ApiWorld) -> None:
    w = world
    with w.client(w.dave_cms_member()) as client:
        detail = client.get(f"/repositories/{w.group_repo}").json()
    assert detail["access"] == ["read"]
    with w.client(w.carol_cms_manager()) as client:
        detail = client.get(f"/repositories/{w.group_repo}").json()
    assert detail["access"] == ["read", "keys"]


# -- denials ------------------------------------------------------------------------------


@pytest.mark.parametrize(("method", "path", "body"), REPOSITORY_CALLS[2:])
def test_another_users_repository_is_forbidden(
    world: ApiWorld, method: str, path: str, body: Any
) -> None:
    w = world
    with w.client(w.alice()) as client:
        answer = client.request(method, path.format(fqrn=w.bob_repo), json=body)
    assert answer.status_code == 403, answer.text
    assert answer.json() == {
        "error": "forbidden",
        "reason": f"repository {w.bob_repo!r} belongs to another user",
    }


@pytest.mark.parametrize(("method", "path", "body"), REPOSITORY_CALLS[2:])
def test_a_group_i_am_not_in_is_forbidden(
    world: ApiWorld, method: str, path: str, body: Any
) -> None:
    w = world
    with w.client(w.alice()) as client:
        answer = client.request(method, path.format(fqrn=w.atlas_repo), json=body)
    assert answer.status_code == 403, answer.text
    assert answer.json()["error"] == "forbidden"
    assert "group 'atlas', and you are not a member" in answer.json()["reason"]


@pytest.mark.parametrize(("method", "path", "body"), REPOSITORY_CALLS[7:])
def test_only_the_owner_may_sync_or_roll_back(
    world: ApiWorld, method: str, path: str, body: Any
) -> None:
    w = world
    for token in (w.dave_cms_member(), w.carol_cms_manager()):
        with w.client(token) as client:
            answer = client.request(method, path.format(fqrn=w.group_repo), json=body)
        assert answer.status_code == 403, answer.text
        assert answer.json()["reason"].startswith(f"only the owner of {w.group_repo!r}")


def test_unknown_repository_is_404(world: ApiWorld) -> None:
    with world.client(world.alice()) as client:
        answer = client.get("/repositories/nothing-here.sw.example.org")
        bad = client.get("/repositories/NOT_A_NAME")
    assert answer.status_code == 404
    assert answer.json()["error"] == "not_found"
    assert bad.status_code == 422 and bad.json()["error"] == "invalid_request"


# -- client configuration and keys --------------------------------------------------------


def test_client_config_is_public_material_that_mounts_the_repository(world: ApiWorld) -> None:
    w = world
    with w.client(w.dave_cms_member()) as client:
        answer = client.get(f"/repositories/{w.group_repo}/client-config")
    with w.client(w.alice()) as client:
        mine = client.get(f"/repositories/{w.alice_repo}/client-config")
    assert answer.status_code == 200 and mine.status_code == 200
    assert "PRIVATE" not in answer.text and "PRIVATE" not in mine.text
    bundle = mine.json()
    public_key = w.keys[w.alice_repo].master_public_pem
    key_file = next(path for path in bundle["files"] if path.endswith(".pub"))
    assert bundle["files"][key_file] == public_key
    conf = bundle["files"][f"/etc/cvmfs/config.d/{w.alice_repo}.conf"]
    assert f"CVMFS_SERVER_URL={bundle['server_url']}" in conf
    # The bundle is enough to read the repository from the stratum-0 URL, signatures checked.
    with RepositoryReader.open(bundle["server_url"], w.alice_repo, [public_key]) as reader:
        assert reader.read("/software/tool") == b"#!/bin/sh\necho v2 here\n"
    # The unpacked images' repository is the service's own: any signed-in user gets its bundle.
    unpacked = unpacked_fqrn(w.settings.repository_domain)
    keys, _ = w.key_store.store_if_absent(SERVICE_KEY_OWNER, unpacked, generate_keyset(unpacked))
    with w.client(w.bob()) as client:
        images = client.get(f"/repositories/{unpacked}/client-config")
    assert images.status_code == 200, images.text
    assert "PRIVATE" not in images.text
    files = images.json()["files"]
    assert files[next(path for path in files if path.endswith(".pub"))] == keys.master_public_pem


def test_publisher_setup_holds_what_a_remote_publisher_needs_and_no_private_key(
    world: ApiWorld,
) -> None:
    w = world
    with w.client(w.alice()) as client:
        mine = client.get(f"/repositories/{w.alice_repo}/publisher")
    with w.client(w.bob()) as client:
        stranger = client.get(f"/repositories/{w.alice_repo}/publisher")
    assert mine.status_code == 200, mine.text
    assert mine.headers["Cache-Control"] == "no-store"
    body = mine.json()
    keys = w.keys[w.alice_repo]
    repo = w.alice_repo
    assert body["files"] == {
        f"{repo}.pub": keys.master_public_pem,
        f"{repo}.crt": keys.certificate_pem,
        f"{repo}.gw": keys.gateway_key,
    }
    assert "PRIVATE KEY" not in mine.text
    assert body["gateway_url"] == w.settings.gateway.api_url
    assert body["mkfs_command"] == (
        f"cvmfs_server mkfs -w {body['stratum0_url']} -u gw,/srv/cvmfs/{repo}/data/txn,"
        f"{body['gateway_url']} -k /etc/cvmfs/keys -o $USER {repo}"
    )
    assert stranger.status_code == 403
    audit = [(a.subject, a.action, a.allowed) for a in w.registry.key_accesses(repo)]
    assert (ALICE_SUB, "read_publisher", True) in audit
    assert (BOB_SUB, "read_publisher", False) in audit


def test_keys_for_the_owner_and_a_group_manager_each_access_audited(
    world: ApiWorld, caplog: pytest.LogCaptureFixture
) -> None:
    w = world
    caplog.set_level(logging.DEBUG)
    with w.client(w.alice()) as client:
        mine = client.get(f"/repositories/{w.alice_repo}/keys")
    with w.client(w.carol_cms_manager()) as client:
        managed = client.get(f"/repositories/{w.group_repo}/keys")
    with w.client(w.dave_cms_member()) as client:
        member = client.get(f"/repositories/{w.group_repo}/keys")
    with w.client(w.bob()) as client:
        stranger = client.get(f"/repositories/{w.alice_repo}/keys")
    assert mine.status_code == 200
    assert mine.headers["Cache-Control"] == "no-store"
    keys = w.keys[w.alice_repo]
    assert mine.json()["repositoryKey"] == keys.repository_private_pem
    assert mine.json()["certificateKey"] == keys.certificate_pem
    assert mine.json()["vault_path"] == f"{ALICE_SUB}/cvmfs_keys/{w.alice_repo}"
    assert managed.status_code == 200
    assert managed.json()["vault_path"] == f"groups/cms/cvmfs_keys/{w.group_repo}"
    assert member.status_code == 403 and "cms/managers" in member.json()["reason"]
    assert stranger.status_code == 403
    mine_audit = [(a.subject, a.allowed) for a in w.registry.key_accesses(w.alice_repo)]
    group_audit = [(a.subject, a.allowed) for a in w.registry.key_accesses(w.group_repo)]
    assert (ALICE_SUB, True) in mine_audit and (BOB_SUB, False) in mine_audit
    assert (CAROL_SUB, True) in group_audit and (DAVE_SUB, False) in group_audit
    assert keys.repository_private_pem is not None
    secret_body = keys.repository_private_pem.splitlines()[1]
    assert "keys-read" in caplog.text and secret_body not in caplog.text


# -- files and history ----------------------------------------------------------------------


def test_browse_the_published_tree(world: ApiWorld) -> None:
    w = world
    base = f"/repositories/{w.alice_repo}/files"
    with w.client(w.alice()) as client:
        root = client.get(base).json()
        software = client.get(base, params={"path": "/software"}).json()
        link = client.get(base, params={"path": "latest"}).json()
        old = client.get(base, params={"path": "/docs", "revision": 2}).json()
        page = client.get(base, params={"path": "/software", "offset": 1, "limit": 1}).json()
        missing = client.get(base, params={"path": "/nothing"})
        dotdot = client.get(base, params={"path": "/software/../docs"})
        nul = client.get(base, params={"path": "/a\x00b"})
        no_revision = client.get(base, params={"revision": 99})
    assert root["revision"] == 3 and root["path"] == "/"
    assert [(e["name"], e["type"]) for e in root["entries"]] == [
        ("docs", "directory"),
        ("latest", "symlink"),
        ("software", "directory"),
    ]
    tool = {e["name"]: e for e in software["entries"]}["tool"]
    assert tool["type"] == "file" and tool["size"] == len(b"#!/bin/sh\necho v2 here\n")
    assert tool["mode"] == 0o100755 and tool["mode_string"] == "-rwxr-xr-x"
    assert link["entry"]["symlink_target"] == "software/tool" and link["entries"] is None
    assert [e["name"] for e in old["entries"]] == ["README"]
    assert page["total_entries"] == 2 and [e["name"] for e in page["entries"]] == ["tool"]
    assert missing.status_code == 404
    assert dotdot.status_code == 400 and dotdot.json()["error"] == "bad_request"
    assert nul.status_code == 400
    assert no_revision.status_code == 404


def test_history_shows_revisions_tags_and_changes(world: ApiWorld) -> None:
    w = world
    with w.client(w.alice()) as client:
        history = client.get(f"/repositories/{w.alice_repo}/history").json()
    revisions = {r["revision"]: r for r in history["revisions"]}
    assert history["current_revision"] == 3 and sorted(revisions) == [1, 2, 3]
    assert "v2" in revisions[3]["tags"] and "trunk" in revisions[3]["tags"]
    assert "v1" in revisions[2]["tags"]
    assert revisions[2]["description"] == "first release"
    changes_3 = {(c["path"], c["change"]) for c in revisions[3]["changes"]}
    assert changes_3 == {
        ("/docs/README", "removed"),
        ("/software/extra", "added"),
        ("/software/tool", "modified"),
    }
    changes_2 = {(c["path"], c["change"]) for c in revisions[2]["changes"]}
    assert ("/software/tool", "added") in changes_2 and ("/latest", "added") in changes_2
    assert revisions[1]["changes"] == []
    assert [s["s3_key"] for s in revisions[3]["sources"]] == ["cvmfs/software/tool"]
    assert [s["s3_key"] for s in revisions[2]["sources"]] == ["cvmfs/docs/README"]
    assert {t["name"] for t in history["tags"]} >= {"v1", "v2", "trunk", "trunk-previous"}


def test_nothing_published_yet_is_a_conflict_not_an_error(world: ApiWorld) -> None:
    w = world
    from service.repositories import RepositoryClaim

    fqrn = f"unpublished-{uuid.uuid4().hex[:6]}.{w.settings.repository_domain}"
    w.registry.claim(
        RepositoryClaim(
            fqrn=fqrn,
            kind="personal",
            owner_subject=ALICE_SUB,
            owner_username="alice",
            bucket=fqrn.split(".")[0],
        )
    )
    with w.client(w.alice()) as client:
        files = client.get(f"/repositories/{fqrn}/files")
        config = client.get(f"/repositories/{fqrn}/client-config")
        status = client.get(f"/repositories/{fqrn}")
    assert files.status_code == 409 and files.json()["error"] == "not_published"
    assert config.status_code == 409
    assert status.status_code == 200 and status.json()["status"] == "requested"


# -- requesting a repository ---------------------------------------------------------------


def test_request_goes_to_the_bridge_like_the_dashboards_message(
    world: ApiWorld, caplog: pytest.LogCaptureFixture
) -> None:
    w = world
    caplog.set_level(logging.DEBUG)
    token = w.alice()
    short = f"t{uuid.uuid4().hex[:6]}"
    with w.client(token) as client:
        answer = client.post("/repositories", json={"kind": "personal", "short_name": short})
        group = client.post(
            "/repositories", json={"kind": "group", "group": "/cms", "short_name": short}
        )
    assert answer.status_code == 202, answer.text
    accepted = answer.json()
    assert accepted["fqrn"] == f"alice-{short}-personal.{w.settings.repository_domain}"
    assert accepted["bucket"] == f"alice-{short}-personal"
    assert group.status_code == 202 and group.json()["fqrn"].startswith(f"cms-{short}.")
    record = w.registry.request(accepted["request_id"])
    assert record is not None and record.status == "pending"
    assert record.fqrn == accepted["fqrn"] and record.requester_subject == ALICE_SUB

    # The bridge as `serve_bridge` assembles it: it verifies the token the message carries.
    starter = RecordingStarter()
    replies: list[ProvisionReply] = []
    with TokenVerifier(w.settings.oidc) as verifier:
        requests = ProvisionRequestParameters(
            RequestParser.from_settings(w.settings), verifier, replies.append
        )
        consumer = BridgeConsumer(w.iso.mq, w.iso.config, LOOKUP, starter, request_params=requests)
        with running(consumer):
            wait_for(lambda: len(starter.snapshot()) >= 2, "the bridge to start 2 provision runs")
    assert replies == []  # nothing refused
    calls = {c.parameters["request"]["request_id"]: c for c in starter.snapshot()}
    call = calls[accepted["request_id"]]
    assert call.deployment == w.iso.config.provision_deployment
    authorized = AuthorizedProvisionRequest.model_validate(call.parameters["request"])
    assert authorized.identity.subject == ALICE_SUB and authorized.source == "token"
    assert (authorized.kind, authorized.fqrn, authorized.bucket) == (
        "personal",
        accepted["fqrn"],
        accepted["bucket"],
    )
    in_group = AuthorizedProvisionRequest.model_validate(
        calls[group.json()["request_id"]].parameters["request"]
    )
    assert (in_group.kind, in_group.group) == ("group", "cms")
    assert token not in json.dumps(call.parameters)  # the flow gets the identity, not the token

    with w.client(token) as client:
        status = client.get(accepted["status_url"])
    with w.client(w.bob()) as client:
        foreign = client.get(accepted["status_url"])
    assert status.status_code == 200 and status.json()["status"] == "pending"
    assert foreign.status_code == 403
    assert "repository-requested" in caplog.text
    assert token.split(".")[2] not in caplog.text  # the token travels, but is never logged


def test_the_same_request_id_is_the_same_request(world: ApiWorld) -> None:
    w = world
    body = {"kind": "personal", "short_name": "again", "request_id": f"dash-{uuid.uuid4().hex}"}
    with w.client(w.alice()) as client:
        first = client.post("/repositories", json=body)
        second = client.post("/repositories", json=body)
    with w.client(w.bob()) as client:
        stolen = client.post("/repositories", json=body)
    assert first.status_code == second.status_code == 202
    assert first.json()["request_id"] == second.json()["request_id"] == body["request_id"]
    assert stolen.status_code == 409


@pytest.mark.parametrize(
    ("body", "status", "fragment"),
    [
        ({"kind": "group", "group": "atlas"}, 403, "not a member of group 'atlas'"),
        ({"kind": "personal", "short_name": "Not_A-Label"}, 400, "must be a DNS label"),
        ({"kind": "personal", "short_name": "x", "bucket": "192.168.1.1"}, 400, "IP address"),
        ({"kind": "group"}, 422, "needs 'group'"),
        ({"kind": "team"}, 422, "kind"),
        ({"kind": "personal", "unknown": 1}, 422, "unknown"),
    ],
)
def test_refused_requests_say_why(
    world: ApiWorld, body: dict[str, Any], status: int, fragment: str
) -> None:
    with world.client(world.alice()) as client:
        answer = client.post("/repositories", json=body)
    assert answer.status_code == status, answer.text
    assert fragment in answer.json()["reason"]


def test_a_bucket_feeding_another_repository_is_a_conflict(world: ApiWorld) -> None:
    w = world
    bobs_bucket = w.registry.require(w.bob_repo).bucket
    with w.client(w.alice()) as client:
        answer = client.post(
            "/repositories", json={"kind": "personal", "short_name": "b", "bucket": bobs_bucket}
        )
    assert answer.status_code == 409
    assert "already feeds another repository" in answer.json()["reason"]


# -- sync and rollback runs ------------------------------------------------------------------


def _flow_run(run_id: str) -> Any:
    with get_client(sync_client=True) as client:
        run = client.read_flow_run(uuid.UUID(run_id))
        deployment = client.read_deployment(run.deployment_id) if run.deployment_id else None
    return run, deployment


def test_sync_reconciles_the_repository_or_backfills_a_prefix(world: ApiWorld) -> None:
    w = world
    with w.client(w.alice()) as client:
        whole = client.post(f"/repositories/{w.alice_repo}/sync", json={})
        prefix = client.post(
            f"/repositories/{w.alice_repo}/sync",
            json={"prefix": "/software"},
            headers={"Idempotency-Key": "click-1"},
        )
        again = client.post(
            f"/repositories/{w.alice_repo}/sync",
            json={"prefix": "/software"},
            headers={"Idempotency-Key": "click-1"},
        )
        bad = client.post(f"/repositories/{w.alice_repo}/sync", json={"prefix": "/a/../b"})
    assert whole.status_code == 202, whole.text
    assert whole.json()["deployment"] == w.reconcile_deployment
    run, deployment = _flow_run(whole.json()["flow_run_id"])
    assert deployment.name == w.reconcile_deployment.split("/")[1]
    assert run.parameters == {"req": {"repo": w.alice_repo, "dry_run": False}}
    assert prefix.status_code == 202 and prefix.json()["deployment"] == w.sync_deployment
    run, _ = _flow_run(prefix.json()["flow_run_id"])
    assert run.parameters == {
        "req": {"repo": w.alice_repo, "prefix": "software/", "dry_run": False}
    }
    assert again.json()["flow_run_id"] == prefix.json()["flow_run_id"]
    assert bad.status_code == 400


def test_rollback_starts_the_rollback_flow_for_an_existing_tag(world: ApiWorld) -> None:
    w = world
    with w.client(w.alice()) as client:
        answer = client.post(f"/repositories/{w.alice_repo}/rollback", json={"tag": "v1"})
        unknown = client.post(f"/repositories/{w.alice_repo}/rollback", json={"tag": "v9"})
    assert answer.status_code == 202, answer.text
    run, deployment = _flow_run(answer.json()["flow_run_id"])
    assert deployment.name == "rollback"
    assert run.parameters["req"]["repo"] == w.alice_repo
    assert run.parameters["req"]["tag"] == "v1"
    assert run.parameters["req"]["requested_by"] == ALICE_SUB
    assert unknown.status_code == 404 and "no tag 'v9'" in unknown.json()["reason"]


# -- rate limit -----------------------------------------------------------------------------


def test_mutating_calls_are_rate_limited_per_subject_across_api_processes(
    world: ApiWorld,
) -> None:
    w = world
    strict = w.settings.model_copy(
        update={
            "api": w.settings.api.model_copy(
                update={"rate_limit_burst": 2, "rate_limit_per_minute": 1.0}
            )
        }
    )
    erin = w.issuer.mint(sub=f"erin-{uuid.uuid4().hex[:8]}", preferred_username="erin")
    frank = w.issuer.mint(sub=f"frank-{uuid.uuid4().hex[:8]}", preferred_username="frank")
    apps = []
    for _ in range(2):  # two API processes sharing the registry database
        verifier = TokenVerifier(strict.oidc)
        services = ApiServices.from_settings(strict, verifier=verifier, bridge_config=w.iso.config)
        apps.append((ServedApp(create_app(strict, services), free_port()), verifier))
    with apps[0][0] as first, apps[1][0] as second:
        urls = [f"http://127.0.0.1:{s.server.config.port}" for s in (first, second)]
        import httpx

        def sync(url: str, token: str) -> httpx.Response:
            return httpx.post(
                f"{url}/repositories/nowhere.sw.example.org/sync",
                json={},
                headers={"Authorization": f"Bearer {token}"},
            )

        answers = [sync(urls[0], erin), sync(urls[1], erin), sync(urls[0], erin)]
        other = sync(urls[1], frank)
        reads = httpx.get(f"{urls[0]}/repositories", headers={"Authorization": f"Bearer {erin}"})
    for _, verifier in apps:
        verifier.close()
    assert [a.status_code for a in answers] == [404, 404, 429]
    assert answers[2].json()["error"] == "rate_limited"
    assert int(answers[2].headers["Retry-After"]) >= 1
    assert other.status_code == 404  # another subject has its own bucket
    assert reads.status_code == 200  # reading is not limited
