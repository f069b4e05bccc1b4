"""`cvmfs-svc login`, `token` and `logout`: a user's API token from the command line.

Each command imports what it uses: `token` with a valid saved token loads neither httpx nor
the settings, so `curl -H "Authorization: Bearer $(cvmfs-svc token)"` stays cheap.
"""

from __future__ import annotations

import base64
import json
import time
from typing import TYPE_CHECKING

import click

if TYPE_CHECKING:
    from login.device_flow import TokenResponse
    from login.token_file import SavedTokens, TokenFile

# `cvmfs-svc token` renews an access token that expires within this many seconds, so that a
# token it prints lasts through the call it is used for.
RENEW_BEFORE_S = 60
# The command line asks for a refresh token that outlives the browser session it was
# approved in (OIDC Core §11): `token` renews without a new login.
OFFLINE_SCOPE = "offline_access"
# Token and revocation requests of `token` and `logout`, which read no settings.
HTTP_TIMEOUT_S = 10.0


@click.command("login")
@click.option("--issuer", default=None, help="OIDC issuer URL  [default: oidc.issuer_url]")
@click.option(
    "--client-id",
    default=None,
    help="the issuer's public client with the device code grant  [default: oidc.cli_client_id]",
)
def login_command(issuer: str | None, client_id: str | None) -> None:
    """Log in with the device code flow: approve a code in any browser, tokens saved for you."""
    import httpx

    from login.device_flow import discover, poll_for_tokens, request_device_code
    from login.errors import LoginError
    from login.token_file import SavedTokens, TokenFile, default_token_file
    from service.settings import Settings

    oidc = Settings.load().oidc
    issuer = issuer or oidc.issuer_url
    client_id = client_id or oidc.cli_client_id
    scopes = [*oidc.scopes, *([] if OFFLINE_SCOPE in oidc.scopes else [OFFLINE_SCOPE])]
    token_file = TokenFile(default_token_file())
    try:
        with httpx.Client(timeout=oidc.http_timeout_s) as http:
            endpoints = discover(http, issuer)
            authorization = request_device_code(http, endpoints, client_id, scopes)
            minutes = max(1, authorization.expires_in // 60)
            if authorization.verification_uri_complete:
                click.echo(
                    f"Open {authorization.verification_uri_complete} in a browser and check "
                    f"that it shows the code {authorization.user_code}"
                )
                click.echo(
                    f"(or open {authorization.verification_uri} and enter the code), then sign in."
                )
            else:
                click.echo(
                    f"Open {authorization.verification_uri} in a browser, enter the code "
                    f"{authorization.user_code} and sign in."
                )
            click.echo(f"Waiting for the approval (the code is valid for {minutes} min) ...")
            tokens = poll_for_tokens(http, endpoints, client_id, authorization)
            received = time.time()
    except LoginError as exc:
        raise click.ClickException(str(exc)) from exc
    saved = SavedTokens(
        issuer=issuer,
        client_id=client_id,
        token_endpoint=endpoints.token_endpoint,
        revocation_endpoint=endpoints.revocation_endpoint,
        access_token=tokens.access_token,
        refresh_token=tokens.refresh_token,
        expires_at=_expires_at(tokens, received),
        scope=tokens.scope,
    )
    with token_file.locked():
        token_file.save(saved)
    who = _claim(tokens.access_token, "preferred_username") or _claim(tokens.access_token, "sub")
    as_who = f" as {who}" if who else ""
    click.echo(f"Logged in{as_who} at {issuer}; tokens saved in {token_file.path}.")
    click.echo('Use them with: curl -H "Authorization: Bearer $(cvmfs-svc token)" ...')


@click.command("token")
def token_command() -> None:
    """Print a valid access token of `cvmfs-svc login`, renewed when it expires within a minute."""
    from login.errors import LoginError
    from login.token_file import TokenFile, default_token_file

    token_file = TokenFile(default_token_file())
    try:
        saved = _saved_or_fail(token_file)
        if saved.expires_within(RENEW_BEFORE_S):
            with token_file.locked():
                # Another `token` may have renewed it while this one waited for the lock.
                saved = _saved_or_fail(token_file)
                if saved.expires_within(RENEW_BEFORE_S):
                    saved = _renewed(token_file, saved)
    except LoginError as exc:  # NotLoggedIn, or an issuer that could not be reached
        raise click.ClickException(str(exc)) from exc
    click.echo(saved.access_token)


@click.command("logout")
def logout_command() -> None:
    """Delete the tokens of `cvmfs-svc login`, revoking the refresh token at the issuer."""
    from login.errors import LoginError
    from login.token_file import TokenFile, default_token_file

    token_file = TokenFile(default_token_file())
    if not token_file.path.exists():
        click.echo(f"Not logged in (no {token_file.path}).")
        return
    with token_file.locked():
        try:
            saved = token_file.load()
        except LoginError:
            saved = None  # unreadable: nothing to revoke, the file goes all the same
        failure = None
        if saved is not None and saved.refresh_token and saved.revocation_endpoint:
            import httpx

            from login.device_flow import revoke

            try:
                with httpx.Client(timeout=HTTP_TIMEOUT_S) as http:
                    revoke(http, saved.revocation_endpoint, saved.client_id, saved.refresh_token)
            except LoginError as exc:
                failure = exc
        deleted = token_file.delete()
    if not deleted:
        click.echo(f"Not logged in (no {token_file.path}).")
        return
    if failure is not None:
        raise click.ClickException(
            f"deleted {token_file.path}, but the refresh token could not be revoked ({failure}):"
            " it stays valid at the issuer until it expires"
        )
    revoked = " and revoked its refresh token" if saved and saved.refresh_token else ""
    click.echo(f"Logged out: deleted {token_file.path}{revoked}.")


def _saved_or_fail(token_file: TokenFile) -> SavedTokens:
    from login.errors import NotLoggedIn

    saved = token_file.load()
    if saved is None:
        raise NotLoggedIn(f"not logged in (no {token_file.path}): run `cvmfs-svc login`")
    return saved


def _renewed(token_file: TokenFile, saved: SavedTokens) -> SavedTokens:
    """The saved tokens renewed with the refresh token, and written back."""
    import httpx

    from login.device_flow import refresh
    from login.errors import IssuerError, NotLoggedIn

    if saved.refresh_token is None:
        raise NotLoggedIn(
            "the access token has expired and the login left no refresh token: "
            "run `cvmfs-svc login` again"
        )
    try:
        with httpx.Client(timeout=HTTP_TIMEOUT_S) as http:
            tokens = refresh(http, saved.token_endpoint, saved.client_id, saved.refresh_token)
    except IssuerError as exc:
        if saved.expires_within(0):
            raise
        # Not expired yet: the old token still serves this call; the next one tries again.
        click.echo(f"warning: {exc}; printing the current token", err=True)
        return saved
    renewed = saved.model_copy(
        update={
            "access_token": tokens.access_token,
            # Issuers that rotate refresh tokens send a new one; others keep the old one valid.
            "refresh_token": tokens.refresh_token or saved.refresh_token,
            "expires_at": _expires_at(tokens, time.time()),
            "scope": tokens.scope or saved.scope,
        }
    )
    token_file.save(renewed)
    return renewed


def _expires_at(tokens: TokenResponse, received: float) -> float:
    if tokens.expires_in is not None:
        return received + tokens.expires_in
    # No expires_in (RFC 6749 makes it optional): a JWT's `exp`, else renew at the next use.
    exp = _claim(tokens.access_token, "exp")
    return float(exp) if isinstance(exp, int | float) else received


def _claim(access_token: str, name: str) -> object:
    """A claim of a JWT access token, unverified: only for messages and expiry, never trust."""
    try:
        payload = access_token.split(".")[1]
        claims = json.loads(base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4)))
    except (IndexError, ValueError):
        return None
    return claims.get(name) if isinstance(claims, dict) else None
