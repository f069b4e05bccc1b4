"""Keeping a dashboard login alive: the session's access token is renewed with its refresh token.

Access tokens live an hour (IAM's default, and the local provider's); a dashboard session lives
`dashboard.session_ttl_s` (8 h). Without renewal a user who keeps the dashboard open is sent
back to the login page every hour. Instead, a page whose session token expires within
`REFRESH_MARGIN_S` (or that the verifier finds expired) first asks the issuer's token endpoint
for a new one (RFC 6749 §6, `grant_type=refresh_token`), as the dashboard's confidential client.

The issuer decides how long a refresh token lasts and ends it when the user signs out there, so
signing out at the issuer ends the dashboard session at its next renewal.
"""

from __future__ import annotations

import logging
import time
from collections.abc import MutableMapping
from typing import Any

import httpx

from service.settings import OidcSettings

log = logging.getLogger("cvmfs.dashboard")

# Renew a little before expiry, so a token is never sent to the verifier in its last seconds.
REFRESH_MARGIN_S = 60


class RenewalRefused(Exception):
    """The issuer refused the refresh token (expired, revoked, signed out): log in again."""


class TokenRefresher:
    """Renews access tokens at the issuer's token endpoint (found through discovery, kept)."""

    def __init__(self, oidc: OidcSettings) -> None:
        self._oidc = oidc
        self._token_endpoint: str | None = None

    def due(self, session: MutableMapping[str, Any]) -> bool:
        """True when the session has a refresh token and its access token is about to expire."""
        expires_at = session.get("expires_at")
        if not session.get("refresh_token") or not isinstance(expires_at, int | float):
            return False
        return expires_at - time.time() <= REFRESH_MARGIN_S

    def renew(self, session: MutableMapping[str, Any]) -> None:
        """Replace the session's tokens with new ones; RenewalRefused if the issuer says no.

        Raises OSError/httpx.HTTPError when the issuer cannot be reached (the caller shows
        "retry in a minute" rather than ending the session).
        """
        refresh_token = session.get("refresh_token")
        if not refresh_token:
            raise RenewalRefused("this login has no refresh token")
        oidc = self._oidc
        form = {"grant_type": "refresh_token", "refresh_token": str(refresh_token)}
        auth: httpx.BasicAuth | None = None
        if oidc.client_secret is not None:  # client_secret_basic, as at login (dashboard/login)
            auth = httpx.BasicAuth(oidc.client_id, oidc.client_secret.get_secret_value())
        else:
            form["client_id"] = oidc.client_id
        with httpx.Client(timeout=oidc.http_timeout_s, auth=auth) as http:
            endpoint = self._token_endpoint or self._discover(http)
            answer = http.post(endpoint, data=form)
        token = _token_from(answer)
        session["access_token"] = token["access_token"]
        session["expires_at"] = int(time.time()) + int(token.get("expires_in", 0))
        # Issuers that rotate refresh tokens send a new one; the old one may be spent already.
        if token.get("refresh_token"):
            session["refresh_token"] = token["refresh_token"]
        log.info("event=dashboard-token-renewed")

    def _discover(self, client: httpx.Client) -> str:
        issuer = self._oidc.issuer_url.rstrip("/")
        answer = client.get(f"{issuer}/.well-known/openid-configuration")
        answer.raise_for_status()
        endpoint = answer.json().get("token_endpoint")
        if not isinstance(endpoint, str) or not endpoint:
            raise RenewalRefused("the issuer's discovery document has no token_endpoint")
        self._token_endpoint = endpoint
        return endpoint


def _token_from(answer: httpx.Response) -> dict[str, Any]:
    """The token response's JSON (RFC 6749 §5.1), or RenewalRefused with its error code (§5.2)."""
    if answer.status_code >= 500:
        answer.raise_for_status()
    try:
        body = answer.json()
    except ValueError:
        body = None
    if not isinstance(body, dict):
        raise RenewalRefused(f"the token endpoint answered HTTP {answer.status_code}, not JSON")
    if answer.status_code != 200 or not body.get("access_token"):
        # The error code (invalid_grant, ...) names why, and never holds a token.
        raise RenewalRefused(str(body.get("error") or f"HTTP {answer.status_code}")[:80])
    return body
