"""Verify OIDC bearer tokens (JWT) against the issuer's JWKS and turn them into an Identity.

Every refusal is an AuthError whose `reason` is safe to show the caller; no token text ever
appears in an error or a log line.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

import httpx
import jwt
from jwt.exceptions import PyJWKError

from service.identity import Identity
from service.settings import OidcSettings

log = logging.getLogger(__name__)

# Asymmetric algorithms only: an HS* token would be verified with a shared secret, and a
# verifier that accepts one can be fooled by a token "signed" with the public key.
ALLOWED_ALGORITHMS: frozenset[str] = frozenset({"RS256", "RS384", "RS512", "ES256"})
_KEY_TYPE_FOR_ALG = {"RS256": "RSA", "RS384": "RSA", "RS512": "RSA", "ES256": "EC"}
_GROUP_CLAIMS = ("groups", "wlcg.groups")
_LOOPBACK_HOSTS = {"127.0.0.1", "localhost", "::1"}
# IAM access tokens are 1-2 KiB; parsing megabytes of attacker input buys nothing.
MAX_TOKEN_LENGTH = 16 * 1024


class AuthError(Exception):
    """A token was refused. `reason` is safe to return to the user (it never holds the token)."""

    #: HTTP status an API should answer with.
    status_code = 401

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


class MalformedToken(AuthError):
    """Not a JWT, or a JWT missing a required part."""


class AlgorithmRefused(AuthError):
    """The token's algorithm is not one of ALLOWED_ALGORITHMS (e.g. `none`, HS256)."""


class UnknownSigningKey(AuthError):
    """The token's `kid` is not in the issuer's key set, even after refreshing it."""


class InvalidSignature(AuthError):
    """The signature does not verify with the issuer's key (forged or altered token)."""


class TokenExpired(AuthError):
    """`exp` is in the past (beyond the leeway)."""


class TokenNotYetValid(AuthError):
    """`nbf` or `iat` is in the future (beyond the leeway)."""


class WrongIssuer(AuthError):
    """`iss` is not the configured issuer."""


class WrongAudience(AuthError):
    """`aud` does not contain the configured audience."""


class MissingClaim(AuthError):
    """A claim the service needs (sub, a username, exp, ...) is absent or of the wrong type."""


class IssuerUnavailable(AuthError):
    """The issuer's discovery document or JWKS could not be fetched: retry later."""

    status_code = 503


class OidcConfigurationError(ValueError):
    """The OIDC settings are unusable (e.g. a non-loopback issuer over plain http)."""


def _require_https_unless_loopback(url: str, what: str) -> None:
    parts = urlsplit(url)
    if parts.scheme == "https" or (parts.scheme == "http" and parts.hostname in _LOOPBACK_HOSTS):
        return
    raise OidcConfigurationError(
        f"{what} {url!r} must use https (plain http is accepted only on loopback)"
    )


@dataclass(frozen=True)
class SigningKey:
    """One key of the issuer's JWKS, with the fields that decide which algorithm may use it."""

    jwk: jwt.PyJWK
    key_type: str
    published_alg: str | None
    curve: str | None


class JwksCache:
    """The issuer's signing keys, fetched over HTTP and kept for `ttl_s` seconds.

    `key_for(kid)` refetches once when the kid is unknown (the issuer rotated its key), but not
    more often than every `min_refresh_interval_s`, so unknown kids cannot flood the issuer.
    Thread-safe: one fetch at a time.
    """

    def __init__(
        self,
        settings: OidcSettings,
        http: httpx.Client,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._settings = settings
        self._http = http
        self._clock = clock
        self._lock = threading.Lock()
        self._keys: dict[str, SigningKey] = {}
        self._fetched_at: float | None = None
        self._jwks_url: str | None = settings.jwks_url

    def key_for(self, kid: str | None) -> SigningKey:
        with self._lock:
            if self._fetched_at is None or self._age_s() >= self._settings.jwks_cache_ttl_s:
                self._refresh()
            key = self._lookup(kid)
            if key is None and self._age_s() >= self._settings.jwks_min_refresh_interval_s:
                self._refresh()
                key = self._lookup(kid)
        if key is None:
            raise UnknownSigningKey(
                "the token was signed with a key the issuer does not publish; "
                "get a new token from the issuer"
            )
        return key

    def _age_s(self) -> float:
        return self._clock() - (self._fetched_at or 0.0)

    def _lookup(self, kid: str | None) -> SigningKey | None:
        if kid is not None:
            return self._keys.get(kid)
        # Without a kid the choice is unambiguous only when the issuer publishes one key.
        if len(self._keys) == 1:
            return next(iter(self._keys.values()))
        return None

    def _refresh(self) -> None:
        url = self._jwks_url or self._discover_jwks_url()
        document = self._get_json(url, "JWKS")
        raw_keys = document.get("keys")
        if not isinstance(raw_keys, list):
            raise IssuerUnavailable("the issuer's JWKS has no 'keys' list; retry later")
        keys: dict[str, SigningKey] = {}
        for index, raw in enumerate(raw_keys):
            if not isinstance(raw, dict) or raw.get("use", "sig") != "sig":
                continue
            try:
                key = SigningKey(
                    jwk=jwt.PyJWK(raw),
                    key_type=str(raw.get("kty")),
                    published_alg=raw.get("alg"),
                    curve=raw.get("crv"),
                )
            except PyJWKError as error:
                # One unusable key (e.g. an algorithm we do not support) must not hide the rest.
                log.warning("event=jwks_key_skipped index=%d error=%s", index, error)
                continue
            keys[str(raw.get("kid", f"#{index}"))] = key
        self._keys = keys
        self._jwks_url = url
        self._fetched_at = self._clock()
        log.info("event=jwks_refreshed url=%s keys=%d", url, len(keys))

    def _discover_jwks_url(self) -> str:
        issuer = self._settings.issuer_url
        config = self._get_json(
            issuer.rstrip("/") + "/.well-known/openid-configuration", "discovery document"
        )
        if config.get("issuer") != issuer:
            raise IssuerUnavailable(
                "the issuer's discovery document names another issuer; check oidc.issuer_url"
            )
        jwks_uri = config.get("jwks_uri")
        if not isinstance(jwks_uri, str):
            raise IssuerUnavailable("the issuer's discovery document has no jwks_uri")
        try:
            _require_https_unless_loopback(jwks_uri, "jwks_uri")
        except OidcConfigurationError as error:
            raise IssuerUnavailable(str(error)) from error
        return jwks_uri

    def _get_json(self, url: str, what: str) -> dict[str, Any]:
        try:
            response = self._http.get(url, timeout=self._settings.http_timeout_s)
            response.raise_for_status()
            document = response.json()
        except (httpx.HTTPError, ValueError) as error:
            log.warning("event=oidc_fetch_failed what=%s url=%s error=%s", what, url, error)
            raise IssuerUnavailable(
                f"the token issuer's {what} could not be fetched; retry later"
            ) from error
        if not isinstance(document, dict):
            raise IssuerUnavailable(f"the token issuer's {what} is not a JSON object")
        return document


class TokenVerifier:
    """Verifies bearer tokens from one OIDC issuer and returns who presented them."""

    def __init__(
        self,
        settings: OidcSettings,
        http: httpx.Client | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        _require_https_unless_loopback(settings.issuer_url, "oidc.issuer_url")
        if settings.jwks_url is not None:
            _require_https_unless_loopback(settings.jwks_url, "oidc.jwks_url")
        if not settings.username_claims:
            raise OidcConfigurationError("oidc.username_claims must name at least one claim")
        self._settings = settings
        self._owns_http = http is None
        self._http = http if http is not None else httpx.Client()
        self._jwks = JwksCache(settings, self._http, clock)

    def close(self) -> None:
        if self._owns_http:
            self._http.close()

    def __enter__(self) -> TokenVerifier:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def verify(self, token: str) -> Identity:
        """The Identity of a valid token; raises an AuthError subclass otherwise."""
        if len(token) > MAX_TOKEN_LENGTH:
            raise MalformedToken(f"the bearer token is longer than {MAX_TOKEN_LENGTH} characters")
        try:
            header = jwt.get_unverified_header(token)
        except jwt.DecodeError as error:
            raise MalformedToken("the bearer token is not a well-formed JWT") from error
        algorithm = header.get("alg")
        if algorithm not in ALLOWED_ALGORITHMS:
            raise AlgorithmRefused(
                f"token algorithm {str(algorithm)[:20]!r} is not accepted; "
                f"accepted: {', '.join(sorted(ALLOWED_ALGORITHMS))}"
            )
        kid = header.get("kid")
        if kid is not None and not isinstance(kid, str):
            raise MalformedToken("the token header's 'kid' is not a string")
        key = self._jwks.key_for(kid)
        self._check_key_matches(key, algorithm)
        claims = self._decode(token, key, algorithm)
        return self._identity(claims)

    @staticmethod
    def _check_key_matches(key: SigningKey, algorithm: str) -> None:
        # The header is attacker-controlled: never let it pick an algorithm the key is not for.
        if (
            key.key_type != _KEY_TYPE_FOR_ALG[algorithm]
            or (key.published_alg is not None and key.published_alg != algorithm)
            or (key.key_type == "EC" and key.curve != "P-256")
        ):
            raise AlgorithmRefused("the token's algorithm does not match the issuer's key")

    def _decode(self, token: str, key: SigningKey, algorithm: str) -> dict[str, Any]:
        settings = self._settings
        try:
            return jwt.decode(
                token,
                key=key.jwk.key,
                algorithms=[algorithm],
                audience=settings.audience,
                issuer=settings.issuer_url,
                leeway=settings.leeway_s,
                options={"require": ["exp", "iss", "aud", "sub"]},
            )
        except jwt.ExpiredSignatureError as error:
            raise TokenExpired("the token has expired; get a new one from the issuer") from error
        except jwt.ImmatureSignatureError as error:
            raise TokenNotYetValid("the token is not valid yet (nbf/iat in the future)") from error
        except jwt.InvalidAudienceError as error:
            raise WrongAudience(
                f"the token is not meant for this service (audience must include "
                f"{settings.audience!r})"
            ) from error
        except jwt.InvalidIssuerError as error:
            raise WrongIssuer(f"the token was not issued by {settings.issuer_url!r}") from error
        except jwt.InvalidSignatureError as error:
            raise InvalidSignature("the token's signature does not verify") from error
        except jwt.MissingRequiredClaimError as error:
            raise MissingClaim(f"the token has no {error.claim!r} claim") from error
        except jwt.InvalidAlgorithmError as error:
            raise AlgorithmRefused("the token's algorithm is not accepted") from error
        except jwt.InvalidTokenError as error:
            # DecodeError and any other structural problem. PyJWT's message can quote decoded
            # token bytes, so it goes to the cause chain, not into the user-facing reason.
            raise MalformedToken("the token is malformed (not a decodable JWT)") from error

    def _identity(self, claims: Mapping[str, Any]) -> Identity:
        subject = claims.get("sub")
        if not isinstance(subject, str) or not subject:
            raise MissingClaim("the token's 'sub' claim is empty or not a string")
        username = next(
            (
                value
                for name in self._settings.username_claims
                if isinstance(value := claims.get(name), str) and value.strip()
            ),
            None,
        )
        if username is None:
            names = ", ".join(repr(n) for n in self._settings.username_claims)
            raise MissingClaim(f"the token has none of the username claims {names}")
        groups: list[str] = []
        for claim in _GROUP_CLAIMS:
            value = claims.get(claim, [])
            if not isinstance(value, list) or not all(isinstance(g, str) for g in value):
                raise MissingClaim(f"the token's {claim!r} claim must be a list of strings")
            groups.extend(value)
        return Identity(
            issuer=self._settings.issuer_url,
            subject=subject,
            username=username.strip(),
            groups=frozenset(groups),
        )
