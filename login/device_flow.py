"""The OAuth 2.0 device authorization grant (RFC 8628) and refresh, as a public client.

Discovery names the endpoints; a device code is requested, the user approves it in any
browser, and the token endpoint is polled every `interval` seconds (5 when absent, 5 more
after each `slow_down`, §3.5) until it issues tokens, the user denies, or the code expires.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import TypeVar

import httpx
from pydantic import BaseModel, ValidationError

from login.errors import IssuerError, LoginDenied, LoginError, LoginExpired, NotLoggedIn

DEVICE_CODE_GRANT = "urn:ietf:params:oauth:grant-type:device_code"
# RFC 8628 §3.2 and §3.5: the polling interval when the issuer names none, and what each
# `slow_down` adds to it.
DEFAULT_INTERVAL_S = 5
SLOW_DOWN_STEP_S = 5

Model = TypeVar("Model", bound=BaseModel)


class IssuerEndpoints(BaseModel):
    """The part of the issuer's discovery document a device login uses."""

    issuer: str
    token_endpoint: str
    device_authorization_endpoint: str | None = None
    revocation_endpoint: str | None = None


class DeviceAuthorization(BaseModel):
    """The device authorization response (RFC 8628 §3.2)."""

    device_code: str
    user_code: str
    verification_uri: str
    verification_uri_complete: str | None = None
    expires_in: int
    interval: int = DEFAULT_INTERVAL_S


class TokenResponse(BaseModel):
    """A successful token response (RFC 6749 §5.1)."""

    access_token: str
    token_type: str
    expires_in: int | None = None
    refresh_token: str | None = None
    scope: str = ""


class OAuthErrorResponse(BaseModel):
    """An error response (RFC 6749 §5.2, RFC 8628 §3.5)."""

    error: str
    error_description: str | None = None

    def __str__(self) -> str:
        return f"{self.error}: {self.error_description}" if self.error_description else self.error


def discover(http: httpx.Client, issuer_url: str) -> IssuerEndpoints:
    """The issuer's endpoints from `<issuer>/.well-known/openid-configuration`."""
    url = issuer_url.rstrip("/") + "/.well-known/openid-configuration"
    response = _send(http, "GET", url, what="read the issuer's discovery document")
    if response.status_code != 200:
        raise IssuerError(
            f"GET {url} answered HTTP {response.status_code}: is {issuer_url} an OIDC issuer? "
            "Check --issuer (or oidc.issuer_url)"
        )
    endpoints = _parse(IssuerEndpoints, response, url)
    if endpoints.issuer != issuer_url:
        # OIDC Discovery §4.3: the document must name the issuer it was fetched from.
        raise IssuerError(
            f"{url} names the issuer {endpoints.issuer!r}, not {issuer_url!r}: "
            f"use --issuer {endpoints.issuer}"
        )
    return endpoints


def request_device_code(
    http: httpx.Client, endpoints: IssuerEndpoints, client_id: str, scopes: list[str]
) -> DeviceAuthorization:
    if endpoints.device_authorization_endpoint is None:
        raise IssuerError(
            f"the issuer {endpoints.issuer} offers no device authorization endpoint "
            "(RFC 8628): it cannot log in a command line"
        )
    url = endpoints.device_authorization_endpoint
    response = _send(
        http,
        "POST",
        url,
        data={"client_id": client_id, "scope": " ".join(scopes)},
        what="request a device code",
    )
    if response.status_code != 200:
        raise LoginError(
            f"the issuer refused a device code to client {client_id!r} "
            f"({_error_of(response)}): check --client-id (or oidc.cli_client_id); the client "
            "must be registered as a public client with the device code grant"
        )
    return _parse(DeviceAuthorization, response, url)


def poll_for_tokens(
    http: httpx.Client,
    endpoints: IssuerEndpoints,
    client_id: str,
    authorization: DeviceAuthorization,
    sleep: Callable[[float], None] = time.sleep,
    clock: Callable[[], float] = time.monotonic,
) -> TokenResponse:
    """Poll the token endpoint until the user approves; LoginDenied, LoginExpired otherwise."""
    deadline = clock() + authorization.expires_in
    interval = max(authorization.interval, 1)
    code = authorization.user_code
    expired = LoginExpired(
        f"the code {code} expired before it was approved (it was valid for "
        f"{authorization.expires_in} s); nothing was saved: run `cvmfs-svc login` again and "
        "approve the new code in time"
    )
    last_failure = ""
    while True:
        sleep(interval)
        if clock() >= deadline:
            if last_failure:
                raise LoginExpired(f"{expired} (last attempt: {last_failure})")
            raise expired
        data = {
            "grant_type": DEVICE_CODE_GRANT,
            "device_code": authorization.device_code,
            "client_id": client_id,
        }
        try:
            response = http.post(endpoints.token_endpoint, data=data)
        except httpx.TransportError as exc:
            # Polled again at the next interval until the code expires (RFC 8628 §3.5); the
            # failure is part of the message if it never recovers.
            last_failure = f"POST {endpoints.token_endpoint}: {exc}"
            continue
        if response.status_code == 200:
            return _parse(TokenResponse, response, endpoints.token_endpoint)
        failure = _oauth_error(response)
        if failure is None:
            last_failure = f"POST {endpoints.token_endpoint} answered HTTP {response.status_code}"
            continue
        if failure.error == "authorization_pending":
            continue
        if failure.error == "slow_down":
            interval += SLOW_DOWN_STEP_S
            continue
        if failure.error == "access_denied":
            raise LoginDenied(
                f"the sign-in with code {code} was denied at the issuer; nothing was saved: "
                "run `cvmfs-svc login` again to start over"
            )
        if failure.error == "expired_token":
            raise expired
        # An issuer that deletes expired codes (oidc-provider's adapters do) no longer knows
        # the code once it has expired.
        if failure.error == "invalid_grant" and clock() >= deadline - interval:
            raise expired
        raise LoginError(
            f"the issuer refused the login ({failure}); nothing was saved: run "
            "`cvmfs-svc login` again"
        )


def refresh(
    http: httpx.Client, token_endpoint: str, client_id: str, refresh_token: str
) -> TokenResponse:
    """New tokens for a refresh token (RFC 6749 §6); NotLoggedIn when the issuer refuses it."""
    data = {"grant_type": "refresh_token", "refresh_token": refresh_token, "client_id": client_id}
    response = _send(http, "POST", token_endpoint, data=data, what="renew the token")
    if response.status_code == 200:
        return _parse(TokenResponse, response, token_endpoint)
    failure = _oauth_error(response)
    if failure is None or response.status_code >= 500:
        raise IssuerError(
            f"POST {token_endpoint} answered HTTP {response.status_code} to a renewal: "
            "try again later"
        )
    raise NotLoggedIn(
        f"the issuer refused to renew the token ({failure}): run `cvmfs-svc login` again"
    )


def revoke(http: httpx.Client, revocation_endpoint: str, client_id: str, token: str) -> None:
    """Revoke a refresh token (RFC 7009); IssuerError when the issuer did not confirm it."""
    data = {"token": token, "token_type_hint": "refresh_token", "client_id": client_id}
    response = _send(http, "POST", revocation_endpoint, data=data, what="revoke the token")
    if response.status_code != 200:
        raise IssuerError(
            f"POST {revocation_endpoint} answered HTTP {response.status_code} "
            f"({_error_of(response)}) to the revocation"
        )


def _send(
    http: httpx.Client, method: str, url: str, what: str, data: dict[str, str] | None = None
) -> httpx.Response:
    try:
        return http.request(method, url, data=data)
    except httpx.TransportError as exc:
        raise IssuerError(f"could not {what}: {method} {url} failed ({exc})") from exc


def _parse(model: type[Model], response: httpx.Response, url: str) -> Model:
    try:
        return model.model_validate_json(response.content)
    except ValidationError as exc:
        raise IssuerError(
            f"{url} answered what is not a {model.__name__} ({exc.error_count()} errors)"
        ) from exc


def _oauth_error(response: httpx.Response) -> OAuthErrorResponse | None:
    try:
        return OAuthErrorResponse.model_validate_json(response.content)
    except ValidationError:
        return None


def _error_of(response: httpx.Response) -> str:
    failure = _oauth_error(response)
    return str(failure) if failure else f"HTTP {response.status_code}"
