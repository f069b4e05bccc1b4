"""Dashboard login and logout through the stack's real OIDC provider (auth code + PKCE S256).

The dashboard is served on the settings' API port, so its redirect URI is the one the provider
has registered. httpx plays the browser: it follows the redirects, fills in the provider's login
form and keeps the cookies.
"""

from __future__ import annotations

import logging
import re
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import parse_qs, urlencode, urlsplit, urlunsplit

import httpx
import pytest
from pydantic import SecretStr

from dashboard.app import COOKIE_NAME
from dashboard.sessions import SessionStore
from service.api import ApiServices, create_app
from service.auth import TokenVerifier
from service.repositories import database_url
from service.settings import Settings
from stack.idp_users import demo_user
from tests.idp_login import discovery
from tests.test_api_support import ServedApp
from tests.test_bridge_support import declare, isolated

pytestmark = [pytest.mark.stack, pytest.mark.slow]

_FORM_ACTION = re.compile(r'<form[^>]*\saction="([^"]+)"')


@pytest.fixture(scope="module")
def dashboard(rabbitmq: Settings, vault: Settings, idp: Settings) -> Iterator[Settings]:
    """The service's app (API + dashboard) on the API port, logging in at the stack's provider."""
    tmp = Path(tempfile.mkdtemp(prefix="cvmfs-dashboard-login-"))
    iso = isolated(rabbitmq)
    declare(iso)
    settings = vault.model_copy(
        update={
            "database_url": SecretStr(f"sqlite:///{tmp / 'registry.sqlite3'}"),
            "rabbitmq": iso.mq,
            "oidc": idp.oidc,
            "idp": idp.idp,
        }
    )
    services = ApiServices.from_settings(settings, bridge_config=iso.config)
    with ServedApp(create_app(settings, services), settings.api.port):
        yield settings


def _login_form(http: httpx.Client, page: httpx.Response, username: str) -> httpx.Response:
    """Submit the provider's login form; the answer is its redirect (not followed)."""
    action = _FORM_ACTION.search(page.text)
    assert action is not None, page.text
    user = demo_user(username)
    return http.post(
        str(page.url.join(action.group(1))),
        data={"username": username, "password": user.password.get_secret_value()},
    )


def _until_callback(http: httpx.Client, response: httpx.Response, callback: str) -> str:
    """Follow the provider's redirects up to (not into) the dashboard's callback URL."""
    for _ in range(10):
        assert response.is_redirect, response.text
        location = str(response.url.join(response.headers["location"]))
        if location.startswith(callback):
            return location
        response = http.get(location)
    raise AssertionError("no redirect to the callback")


def _authorize(http: httpx.Client, settings: Settings, username: str) -> str:
    """The dashboard's login link up to the provider's redirect back, with code and state."""
    start = http.get(f"{settings.api.base_url}/dashboard/login")
    assert start.status_code == 302, start.text
    authorize = start.headers["location"]
    query = parse_qs(urlsplit(authorize).query)
    assert authorize.startswith(settings.oidc.issuer_url.rstrip("/"))
    assert query["code_challenge_method"] == ["S256"] and query["code_challenge"][0]
    assert query["state"][0] and query["nonce"][0]
    assert query["redirect_uri"] == [settings.api.dashboard_redirect_uri]
    page = http.get(authorize, follow_redirects=True)
    assert page.status_code == 200 and 'name="password"' in page.text
    return _until_callback(
        http, _login_form(http, page, username), settings.api.dashboard_redirect_uri
    )


def test_a_demo_user_logs_in_and_out_through_the_provider(
    dashboard: Settings, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    with httpx.Client(timeout=30.0) as http:
        callback = _authorize(http, dashboard, "carol")
        assert "access_token" not in callback and "id_token" not in callback
        done = http.get(callback)
        assert done.status_code == 303 and done.headers["location"] == "/dashboard/"
        cookie = done.headers["set-cookie"]
        assert cookie.startswith(f"{COOKIE_NAME}=") and "HttpOnly" in cookie
        assert "SameSite=Lax" in cookie and "Path=/dashboard" in cookie
        value = http.cookies[COOKIE_NAME]
        assert "." in value and len(value) < 120  # a signed random id, no token in it
        page = http.get(f"{dashboard.api.base_url}/dashboard/")
        assert (
            'id="username">carol<' in page.text and 'id="user-groups">atlas (manager)<' in page.text
        )
        tokens_in_page = re.findall(r"eyJ[\w-]+\.[\w-]+\.[\w-]+", page.text)
        assert tokens_in_page == []

        csrf = re.search(r'name="csrf_token" value="([^"]+)"', page.text)
        assert csrf is not None
        logout = http.post(
            f"{dashboard.api.base_url}/dashboard/logout", data={"csrf_token": csrf.group(1)}
        )
        assert logout.status_code == 303
        end_session = logout.headers["location"]
        assert end_session.startswith(dashboard.oidc.issuer_url.rstrip("/"))
        query = parse_qs(urlsplit(end_session).query)
        assert query["post_logout_redirect_uri"] == [dashboard.api.dashboard_url]
        assert "id_token_hint" not in query  # no token in a URL
        after = http.get(f"{dashboard.api.base_url}/dashboard/")
        assert 'href="/dashboard/login"' in after.text and "carol" not in after.text
    store = SessionStore.open_url(database_url(dashboard), 60)
    try:
        assert store.count() == 0  # the logged-out session is gone from the database
    finally:
        store.close()
    logged = "\n".join(r.getMessage() for r in caplog.records)
    assert not re.search(r"eyJ[\w-]+\.[\w-]+\.[\w-]+", logged)  # no token in any log line


def test_a_tampered_state_is_refused(dashboard: Settings) -> None:
    with httpx.Client(timeout=30.0) as http:
        callback = _authorize(http, dashboard, "alice")
        parts = urlsplit(callback)
        query = {k: v[0] for k, v in parse_qs(parts.query).items()}
        query["state"] = query["state"][:-2] + ("xy" if query["state"][-2:] != "xy" else "zz")
        tampered = urlunsplit(parts._replace(query=urlencode(query)))
        refused = http.get(tampered)
        assert refused.status_code == 400 and "login refused" in refused.text
        assert "mismatching_state" in refused.text
        page = http.get(f"{dashboard.api.base_url}/dashboard/")
        assert 'href="/dashboard/login"' in page.text and "alice" not in page.text
        # The untampered answer is no good either now: the state was used up.
        again = http.get(callback)
        assert again.status_code == 400


def test_a_code_without_the_sessions_pkce_verifier_is_refused(dashboard: Settings) -> None:
    """A code obtained in one browser, replayed in another (no state, no verifier there)."""
    with httpx.Client(timeout=30.0) as victim:
        callback = _authorize(victim, dashboard, "bob")
    with httpx.Client(timeout=30.0) as attacker:
        refused = attacker.get(callback)
        assert refused.status_code == 400 and "login refused" in refused.text


def _session_of(http: httpx.Client, store: SessionStore) -> tuple[str, dict[str, object]]:
    """The server-side session behind the browser's cookie (`<id>.<signature>`)."""
    session_id = http.cookies[COOKIE_NAME].rsplit(".", 1)[0]
    data = store.load(session_id)
    assert data is not None
    return session_id, data


def _age_the_login(store: SessionStore, session_id: str, data: dict[str, object]) -> None:
    """As the session sees it, its access token expires now (the hour has passed)."""
    store.save(session_id, {**data, "expires_at": int(time.time()) - 5})


def test_an_hour_later_the_page_renews_the_login_at_the_provider(dashboard: Settings) -> None:
    store = SessionStore.open_url(database_url(dashboard), 60)
    try:
        with httpx.Client(timeout=30.0) as http, TokenVerifier(dashboard.oidc) as verifier:
            http.get(_authorize(http, dashboard, "bob"))
            session_id, first = _session_of(http, store)
            assert first["refresh_token"], "the provider issued no refresh token"
            _age_the_login(store, session_id, first)

            page = http.get(f"{dashboard.api.base_url}/dashboard/")
            assert 'id="username">bob<' in page.text  # still logged in, no login page
            _, renewed = _session_of(http, store)
            assert renewed["access_token"] != first["access_token"]
            assert int(str(renewed["expires_at"])) > time.time() + 600
            identity = verifier.verify(str(renewed["access_token"]))
            assert identity.username == "bob" and "atlas" in identity.groups

            # The provider ends the grant (as signing out there does): the next renewal is
            # refused and the dashboard asks for a new login, saying why.
            revoked = http.post(
                str(discovery(dashboard, http)["revocation_endpoint"]),
                data={"token": renewed["refresh_token"], "token_type_hint": "refresh_token"},
                auth=(dashboard.oidc.client_id, _client_secret(dashboard)),
            )
            assert revoked.status_code == 200, revoked.text
            _age_the_login(store, session_id, renewed)
            ended = http.get(f"{dashboard.api.base_url}/dashboard/")
            assert 'href="/dashboard/login"' in ended.text and ">bob<" not in ended.text
            assert "did not renew it: invalid_grant" in ended.text
            assert store.load(session_id) is None
    finally:
        store.close()


def _client_secret(settings: Settings) -> str:
    secret = settings.oidc.client_secret
    assert secret is not None
    return secret.get_secret_value()
