"""Login and logout through the OIDC issuer (authorization code + PKCE S256) with Authlib.

Authlib does discovery, PKCE, state and nonce; it keeps its state in `request.session`, which
is server-side (dashboard/sessions.py). After login the session holds the access token, which
the pages verify on every request like the API verifies a bearer token.
"""

from __future__ import annotations

import secrets
import time
from typing import Any

from authlib.integrations.starlette_client import OAuth
from starlette.requests import Request

from service.settings import Settings

CLIENT_NAME = "issuer"
# Kept in the session: never sent to the browser.
SESSION_TOKEN_KEYS = ("access_token", "refresh_token", "expires_at")


def oauth_client(settings: Settings) -> Any:
    """The registered Authlib client; metadata is fetched at the first login, not here."""
    oidc = settings.oidc
    oauth = OAuth()
    issuer = oidc.issuer_url.rstrip("/")
    secret = oidc.client_secret.get_secret_value() if oidc.client_secret else None
    oauth.register(
        name=CLIENT_NAME,
        client_id=oidc.client_id,
        client_secret=secret,
        server_metadata_url=f"{issuer}/.well-known/openid-configuration",
        client_kwargs={
            "scope": " ".join(oidc.scopes),
            "code_challenge_method": "S256",
            "timeout": oidc.http_timeout_s,
            # A confidential client sends its secret in the token request's body or header;
            # `client_secret_basic` is what every provider supports.
            "token_endpoint_auth_method": "client_secret_basic" if secret else "none",
        },
    )
    return oauth.create_client(CLIENT_NAME)


def start_session(request: Request, token: dict[str, Any]) -> None:
    """A fresh session (new id) holding the tokens and a new CSRF token."""
    session = request.session
    session.clear()
    for key in SESSION_TOKEN_KEYS:
        if token.get(key) is not None:
            session[key] = token[key]
    session["csrf"] = secrets.token_urlsafe(32)
    session["logged_in_at"] = int(time.time())
    rotate = getattr(session, "rotate", None)
    if rotate is not None:
        rotate()


def csrf_token(request: Request) -> str:
    token = request.session.get("csrf")
    return str(token) if token else ""


def csrf_ok(request: Request, submitted: str | None) -> bool:
    expected = csrf_token(request)
    return bool(expected) and bool(submitted) and secrets.compare_digest(expected, submitted or "")
