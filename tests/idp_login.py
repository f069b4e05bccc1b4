"""Log a user in at the OIDC provider as a browser would: authorization code + PKCE (S256).

`login(settings, "alice", "alice-password")` runs the whole exchange with httpx against the real
provider: the authorization request, the provider's login form, the redirect back to the
dashboard's redirect URI (not fetched: only its `code` and `state` are read), and the token
request with the client's secret and the PKCE verifier. A model for browser tests, which do the
same with a real browser.
"""

from __future__ import annotations

import base64
import hashlib
import re
import secrets
from dataclasses import dataclass
from html import unescape
from urllib.parse import parse_qs, urlencode, urljoin, urlsplit

import httpx
from pydantic import BaseModel

from service.settings import Settings

_FORM_ACTION = re.compile(r'<form[^>]*\saction="([^"]+)"')
MAX_REDIRECTS = 10


class Tokens(BaseModel):
    access_token: str
    id_token: str
    token_type: str
    expires_in: int
    scope: str = ""
    refresh_token: str | None = None


class LoginRefused(Exception):
    """The provider answered the login form with an error page instead of a redirect."""

    def __init__(self, status: int, page: str) -> None:
        super().__init__(f"login refused (HTTP {status})")
        self.status = status
        self.page = page


@dataclass(frozen=True)
class Authorization:
    """What the redirect back to the client carried, and the PKCE verifier that goes with it."""

    code: str
    state: str
    code_verifier: str


def pkce_pair() -> tuple[str, str]:
    """(verifier, S256 challenge) as RFC 7636 §4.1-4.2 define them."""
    verifier = secrets.token_urlsafe(48)
    digest = hashlib.sha256(verifier.encode("ascii")).digest()
    return verifier, base64.urlsafe_b64encode(digest).rstrip(b"=").decode("ascii")


def discovery(settings: Settings, http: httpx.Client) -> dict[str, object]:
    url = settings.oidc.issuer_url.rstrip("/") + "/.well-known/openid-configuration"
    response = http.get(url)
    response.raise_for_status()
    document: dict[str, object] = response.json()
    return document


def authorize(
    settings: Settings, http: httpx.Client, username: str, password: str
) -> Authorization:
    """The authorization request up to the redirect to the dashboard's callback, with `code`."""
    config = discovery(settings, http)
    verifier, challenge = pkce_pair()
    state = secrets.token_urlsafe(16)
    redirect_uri = settings.api.dashboard_redirect_uri
    query = {
        "client_id": settings.oidc.client_id,
        "redirect_uri": redirect_uri,
        "response_type": "code",
        "scope": " ".join(settings.oidc.scopes),
        "state": state,
        "nonce": secrets.token_urlsafe(16),
        "code_challenge": challenge,
        "code_challenge_method": "S256",
    }
    response = http.get(f"{config['authorization_endpoint']}?{urlencode(query)}")
    for _ in range(MAX_REDIRECTS):
        if response.is_redirect:
            location = urljoin(str(response.url), response.headers["location"])
            if location.startswith(redirect_uri):
                return _authorization(location, state, verifier)
            response = http.get(location)
            continue
        action = _FORM_ACTION.search(response.text)
        if response.status_code != 200 or action is None or "/login" not in action.group(1):
            raise LoginRefused(response.status_code, response.text)
        if response.request.method == "POST":  # the form again: the login was refused
            raise LoginRefused(response.status_code, response.text)
        response = http.post(
            urljoin(str(response.url), unescape(action.group(1))),
            data={"username": username, "password": password},
        )
        if not response.is_redirect:
            raise LoginRefused(response.status_code, response.text)
    raise AssertionError(f"more than {MAX_REDIRECTS} redirects at the provider")


def _authorization(location: str, state: str, verifier: str) -> Authorization:
    params = parse_qs(urlsplit(location).query)
    if "error" in params:
        raise LoginRefused(400, f"{params['error'][0]}: {params.get('error_description', [''])[0]}")
    if params.get("state") != [state]:
        raise AssertionError("the provider returned another state than the one sent")
    return Authorization(code=params["code"][0], state=state, code_verifier=verifier)


def exchange_code(
    settings: Settings, http: httpx.Client, code: str, code_verifier: str
) -> httpx.Response:
    """The token request (client_secret_basic); the raw response, so refusals can be read."""
    config = discovery(settings, http)
    secret = settings.oidc.client_secret
    auth = None if secret is None else (settings.oidc.client_id, secret.get_secret_value())
    data = {
        "grant_type": "authorization_code",
        "code": code,
        "redirect_uri": settings.api.dashboard_redirect_uri,
        "code_verifier": code_verifier,
    }
    if secret is None:
        data["client_id"] = settings.oidc.client_id
    return http.post(str(config["token_endpoint"]), data=data, auth=auth)


def login(settings: Settings, username: str, password: str) -> Tokens:
    """Tokens for `username` through the real authorization-code + PKCE exchange."""
    with httpx.Client(timeout=10.0) as http:
        authorization = authorize(settings, http, username, password)
        response = exchange_code(settings, http, authorization.code, authorization.code_verifier)
        response.raise_for_status()
        return Tokens.model_validate(response.json())


_HIDDEN_INPUT = re.compile(r'<input type="hidden" name="([^"]+)" value="([^"]*)"')


def _form_fields(page: httpx.Response) -> tuple[str, dict[str, str]]:
    """The first form's absolute action and its hidden fields."""
    action = _FORM_ACTION.search(page.text)
    if page.status_code != 200 or action is None:
        raise LoginRefused(page.status_code, page.text)
    fields = {name: unescape(value) for name, value in _HIDDEN_INPUT.findall(page.text)}
    return urljoin(str(page.url), unescape(action.group(1))), fields


def approve_device_code(
    verification_uri_complete: str,
    user_code: str,
    username: str,
    password: str,
    deny: bool = False,
) -> httpx.Response:
    """What a user's browser does with the URL `cvmfs-svc login` prints (RFC 8628 §3.3.1).

    Opens it (the provider's page posts the code itself; a browser runs its script), then on
    the confirmation page checks that it shows `user_code` (as the CLI printed it) and presses
    Continue and signs in on the login page, or presses Deny.
    Returns the last page (the provider's "Signed in" page, or the denial).
    """
    with httpx.Client(timeout=10.0, follow_redirects=True) as http:
        opened = http.get(verification_uri_complete)
        action, fields = _form_fields(opened)  # the auto-submitted form with the user code
        confirm = http.post(action, data=fields)
        action, fields = _form_fields(confirm)  # "Confirm the code": Continue or Deny
        if f'<code id="user-code">{user_code}</code>' not in confirm.text:
            raise AssertionError(f"the confirmation page does not show {user_code}")
        if deny:
            return http.post(action, data={**fields, "abort": "yes"})
        login_page = http.post(action, data=fields)
        action, _ = _form_fields(login_page)
        if "/login" not in action:
            raise LoginRefused(login_page.status_code, login_page.text)
        return http.post(action, data={"username": username, "password": password})
