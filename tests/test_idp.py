"""The stack's local OIDC provider, for real: discovery, JWKS, login of every demo user through
authorization code + PKCE, refusals, logout, restarts, the user API and S3 as each identity.
"""

from __future__ import annotations

import json
import re
import shutil
import stat
import subprocess
import uuid
from collections.abc import Iterator
from html import unescape
from pathlib import Path
from typing import TYPE_CHECKING
from urllib.parse import urlencode, urljoin

import boto3
import httpx
import jwt
import pytest
from botocore.config import Config
from pydantic import SecretStr

from service.api import create_app
from service.auth import TokenVerifier
from service.repositories import RepositoryClaim, RepositoryRegistry
from service.settings import Settings
from stack import packages
from stack.idp import SERVER_DIR, IdentityProvider
from stack.idp_users import DEMO_USERS, DemoUser, demo_user
from tests.fixtures_s3 import empty_and_delete
from tests.idp_login import LoginRefused, authorize, discovery, exchange_code, login
from tests.test_api_support import ServedApp, free_port

if TYPE_CHECKING:
    from mypy_boto3_s3 import S3Client

pytestmark = [pytest.mark.stack]

USERNAMES = [user.username for user in DEMO_USERS]


def _password(user: DemoUser) -> str:
    return user.password.get_secret_value()


def test_discovery_names_the_issuer_pkce_s256_and_logout(idp: Settings) -> None:
    with httpx.Client(timeout=10) as http:
        config = discovery(idp, http)
        assert config["issuer"] == idp.oidc.issuer_url == idp.idp.issuer_url
        assert config["code_challenge_methods_supported"] == ["S256"]
        assert "authorization_code" in config["grant_types_supported"]
        for endpoint in ("authorization", "token", "end_session"):
            assert str(config[f"{endpoint}_endpoint"]).startswith(idp.idp.issuer_url)
        jwks = http.get(str(config["jwks_uri"])).json()
    (key,) = jwks["keys"]
    assert (key["kty"], key["alg"], key["use"]) == ("RSA", "RS256", "sig")
    assert "d" not in key, "the JWKS must publish the public key only"


def test_its_state_is_private_to_its_owner(idp: Settings) -> None:
    base = idp.absolute_data_dir / IdentityProvider.name
    for name in ("config.json", "jwks.json", "cookie-keys.json"):
        assert stat.S_IMODE((base / name).stat().st_mode) == 0o600, name


@pytest.mark.parametrize("username", USERNAMES)
def test_each_demo_user_logs_in_and_the_service_accepts_the_token(
    idp: Settings, username: str
) -> None:
    user = demo_user(username)
    tokens = login(idp, user.username, _password(user))
    with TokenVerifier(idp.oidc) as verifier:
        identity = verifier.verify(tokens.access_token)
    assert identity.subject == user.subject
    assert identity.username == user.username
    assert identity.groups == frozenset(user.groups)
    assert identity.issuer == idp.oidc.issuer_url
    header = jwt.get_unverified_header(tokens.access_token)
    assert header["alg"] == "RS256"
    # The ID token too: signed by the same keys, for the dashboard client, with the profile.
    signing_key = jwt.PyJWKClient(
        str(discovery(idp, httpx.Client(timeout=10))["jwks_uri"])
    ).get_signing_key_from_jwt(tokens.id_token)
    id_claims = jwt.decode(
        tokens.id_token,
        signing_key.key,
        algorithms=["RS256"],
        audience=idp.oidc.client_id,
        issuer=idp.oidc.issuer_url,
    )
    assert id_claims["sub"] == user.subject
    assert id_claims["preferred_username"] == user.username
    assert id_claims["groups"] == list(user.groups)
    assert id_claims["email"] == user.email


def test_the_login_page_policy_lets_the_form_end_at_the_dashboard(idp: Settings) -> None:
    # Chromium applies form-action to every redirect after the POST (measured: with
    # `form-action 'self'` alone it blocked the login), so the dashboard's origin is allowed.
    with httpx.Client(timeout=10) as http:
        config = discovery(idp, http)
        query = {
            "client_id": idp.oidc.client_id,
            "redirect_uri": idp.api.dashboard_redirect_uri,
            "response_type": "code",
            "scope": "openid",
            "code_challenge": "x" * 43,
            "code_challenge_method": "S256",
        }
        page = http.get(
            f"{config['authorization_endpoint']}?{urlencode(query)}", follow_redirects=True
        )
    assert page.status_code == 200 and 'name="password"' in page.text
    policy = dict(
        directive.strip().split(" ", 1)
        for directive in page.headers["content-security-policy"].split(";")
    )
    assert policy["form-action"].split() == ["'self'", idp.api.base_url]
    assert policy["default-src"] == "'none'"
    assert page.headers["cache-control"] == "no-store"


@pytest.mark.parametrize(
    ("username", "password"),
    [("alice", "bob-password"), ("alice", ""), ("nobody", "nobody-password")],
)
def test_a_wrong_password_or_unknown_user_is_refused(
    idp: Settings, username: str, password: str
) -> None:
    with httpx.Client(timeout=10) as http, pytest.raises(LoginRefused) as refused:
        authorize(idp, http, username, password)
    assert refused.value.status in (400, 401)
    if password:  # an empty password is refused by the form itself (required) or the provider
        assert refused.value.status == 401
        assert "Wrong username or password." in refused.value.page


def test_the_token_request_needs_the_pkce_verifier_of_the_authorization(idp: Settings) -> None:
    alice = demo_user("alice")
    with httpx.Client(timeout=10) as http:
        authorization = authorize(idp, http, alice.username, _password(alice))
        wrong = exchange_code(idp, http, authorization.code, authorization.code_verifier + "x")
        assert wrong.status_code == 400
        assert wrong.json()["error"] == "invalid_grant"
        # The verifier alone made the difference: the same code with the right one is redeemed.
        right = exchange_code(idp, http, authorization.code, authorization.code_verifier)
        assert right.status_code == 200, right.text


def test_the_token_request_needs_the_client_secret(idp: Settings) -> None:
    bob = demo_user("bob")
    wrong_secret = idp.model_copy(
        update={"oidc": idp.oidc.model_copy(update={"client_secret": SecretStr("not-it")})}
    )
    with httpx.Client(timeout=10) as http:
        authorization = authorize(idp, http, bob.username, _password(bob))
        refused = exchange_code(wrong_secret, http, authorization.code, authorization.code_verifier)
    assert refused.status_code == 401
    assert refused.json()["error"] == "invalid_client"


def test_an_unregistered_redirect_uri_is_refused(idp: Settings) -> None:
    elsewhere = idp.model_copy(
        update={"api": idp.api.model_copy(update={"public_url": "http://evil.example.org"})}
    )
    with httpx.Client(timeout=10) as http, pytest.raises(LoginRefused) as refused:
        authorize(elsewhere, http, "alice", _password(demo_user("alice")))
    assert "redirect_uri" in refused.value.page


def test_logout_ends_the_session_and_returns_to_the_dashboard(idp: Settings) -> None:
    carol = demo_user("carol")
    with httpx.Client(timeout=10) as http:
        first = authorize(idp, http, carol.username, _password(carol))
        tokens = exchange_code(idp, http, first.code, first.code_verifier).json()
        # The provider's session cookie logs carol in again without the form ...
        authorize(idp, http, carol.username, "not asked for")
        end_session = str(discovery(idp, http)["end_session_endpoint"])
        query = {
            "id_token_hint": tokens["id_token"],
            "post_logout_redirect_uri": idp.api.dashboard_url,
            "state": "after-logout",
        }
        page = http.get(f"{end_session}?{urlencode(query)}")
        assert page.status_code == 200
        form = re.search(r'<form[^>]*id="op.logoutForm"[^>]*action="([^"]+)"', page.text)
        assert form is not None, page.text
        fields = dict(re.findall(r'<input type="hidden" name="([^"]+)" value="([^"]*)"', page.text))
        done = http.post(
            urljoin(str(page.url), unescape(form.group(1))), data={**fields, "logout": "yes"}
        )
        while done.is_redirect and not done.headers["location"].startswith(idp.api.dashboard_url):
            done = http.get(urljoin(str(done.url), done.headers["location"]))
        assert done.is_redirect
        assert done.headers["location"] == f"{idp.api.dashboard_url}?state=after-logout"
        # ... and after logout it asks for the password again.
        with pytest.raises(LoginRefused):
            authorize(idp, http, carol.username, "wrong now")


def test_the_user_api_serves_a_token_of_the_provider(
    rabbitmq: Settings, idp: Settings, tmp_path: Path
) -> None:
    port = free_port()
    settings = idp.model_copy(
        update={
            "database_url": SecretStr(f"sqlite:///{tmp_path / 'registry.sqlite3'}"),
            "api": idp.api.model_copy(update={"port": port}),
        }
    )
    tag = uuid.uuid4().hex[:6]
    alice, bob, carol, dave = (demo_user(n) for n in ("alice", "bob", "carol", "dave"))
    mine = f"idp{tag}-alice-personal.{settings.repository_domain}"
    atlas = f"idp{tag}-atlas.{settings.repository_domain}"
    registry = RepositoryRegistry.open(settings)
    try:
        registry.claim(
            RepositoryClaim(
                fqrn=mine,
                kind="personal",
                owner_subject=alice.subject,
                owner_username=alice.username,
                bucket=f"idp{tag}-alice",
            )
        )
        registry.claim(
            RepositoryClaim(
                fqrn=atlas,
                kind="group",
                owner_subject=bob.subject,
                owner_username=bob.username,
                group="atlas",
                bucket=f"idp{tag}-atlas",
            )
        )
    finally:
        registry.close()
    expected = {alice: {mine}, bob: {atlas}, carol: {atlas}, dave: set()}
    with ServedApp(create_app(settings), port):
        for user, fqrns in expected.items():
            # The provider knows the dashboard at the stack's API address, not this test port.
            token = login(idp, user.username, _password(user)).access_token
            answer = httpx.get(
                f"http://127.0.0.1:{port}/repositories",
                headers={"Authorization": f"Bearer {token}"},
                timeout=30,
            )
            assert answer.status_code == 200, answer.text
            listed = {r["fqrn"] for r in answer.json()["repositories"]}
            assert listed == fqrns, user.username
        refused = httpx.get(
            f"http://127.0.0.1:{port}/repositories",
            headers={"Authorization": "Bearer not-a-token"},
            timeout=30,
        )
        assert refused.status_code == 401


@pytest.fixture
def user_buckets(ceph: Settings) -> Iterator[dict[str, str]]:
    tag = uuid.uuid4().hex[:6]
    buckets = {user.username: f"idp-{tag}-{user.username}" for user in DEMO_USERS}
    yield buckets
    for user in DEMO_USERS:
        s3 = _s3_as(ceph, user)
        if buckets[user.username] in {b["Name"] for b in s3.list_buckets()["Buckets"]}:
            empty_and_delete(s3, buckets[user.username])


def _s3_as(settings: Settings, user: DemoUser) -> S3Client:
    return boto3.client(
        "s3",
        endpoint_url=settings.s3_public_url,
        aws_access_key_id=user.s3_access_key,
        aws_secret_access_key=user.s3_secret_key.get_secret_value(),
        region_name=settings.ceph.region,
        config=Config(s3={"addressing_style": "path"}),
    )


def test_each_demo_user_uses_s3_as_themselves(ceph: Settings, user_buckets: dict[str, str]) -> None:
    for user in DEMO_USERS:
        s3 = _s3_as(ceph, user)
        bucket = user_buckets[user.username]
        s3.create_bucket(Bucket=bucket)
        s3.put_object(Bucket=bucket, Key="cvmfs/hello.txt", Body=user.username.encode())
        assert s3.get_bucket_acl(Bucket=bucket)["Owner"]["ID"] == user.s3_uid
        body = s3.get_object(Bucket=bucket, Key="cvmfs/hello.txt")["Body"].read()
        assert body == user.username.encode()
    # Another user's bucket is not theirs to write.
    alice_s3 = _s3_as(ceph, demo_user("alice"))
    with pytest.raises(alice_s3.exceptions.ClientError, match="AccessDenied"):
        alice_s3.put_object(Bucket=user_buckets["bob"], Key="cvmfs/x", Body=b"x")


def test_stack_install_runs_npm_ci_of_the_committed_lock(tmp_path: Path) -> None:
    """What `./svc stack install` does on a fresh checkout (npm's cache or its registry)."""
    for name in ("package.json", "package-lock.json", "server.mjs", "file_adapter.mjs"):
        shutil.copy(SERVER_DIR / name, tmp_path / name)
    spec = packages.NPM_CI_PREFIX + str(tmp_path)
    assert packages.install([spec]) == [spec]
    lock = json.loads((tmp_path / "package-lock.json").read_text())
    wanted = lock["packages"]["node_modules/oidc-provider"]["version"]
    installed = json.loads((tmp_path / "node_modules/oidc-provider/package.json").read_text())
    assert installed["version"] == wanted
    assert list((tmp_path / "node_modules").glob(".cvmfs-svc-npm-ci-*"))
    check = subprocess.run(
        ["node", "--check", str(tmp_path / "server.mjs")], capture_output=True, text=True
    )
    assert check.returncode == 0, check.stderr


@pytest.mark.disrupts_stack
def test_tokens_and_sessions_survive_a_restart_of_the_provider(idp: Settings) -> None:
    dave = demo_user("dave")
    provider = IdentityProvider(idp, idp.absolute_data_dir / IdentityProvider.name)
    with httpx.Client(timeout=10) as http, TokenVerifier(idp.oidc) as verifier:
        first = authorize(idp, http, dave.username, _password(dave))
        before = exchange_code(idp, http, first.code, first.code_verifier).json()
        provider.stop()
        assert not provider.health().healthy
        provider.start()
        assert verifier.verify(before["access_token"]).subject == dave.subject
        # The session is kept too (state/ beside the keys): no password asked after the restart.
        again = authorize(idp, http, dave.username, "not asked for")
        after = exchange_code(idp, http, again.code, again.code_verifier)
        assert after.status_code == 200, after.text
        assert verifier.verify(after.json()["access_token"]).subject == dave.subject
