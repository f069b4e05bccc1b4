"""Token verification against a real local OIDC issuer over HTTP: acceptance and every denial."""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import time
from collections.abc import Iterator, Mapping
from typing import Any

import pytest

from service.auth import (
    AlgorithmRefused,
    AuthError,
    InvalidSignature,
    IssuerUnavailable,
    MalformedToken,
    MissingClaim,
    OidcConfigurationError,
    TokenExpired,
    TokenNotYetValid,
    TokenVerifier,
    UnknownSigningKey,
    WrongAudience,
    WrongIssuer,
)
from service.settings import OidcSettings
from tests.issuer import IssuerKey, TestIssuer

pytest_plugins = ("tests.fixtures_auth",)


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def _unsigned_parts(header: Mapping[str, Any], claims: Mapping[str, Any]) -> str:
    return _b64(json.dumps(header).encode()) + "." + _b64(json.dumps(claims).encode())


def _refused(verifier: TokenVerifier, token: str, error: type[AuthError]) -> AuthError:
    with pytest.raises(error) as caught:
        verifier.verify(token)
    # The reason goes back to the user: it must never echo the token or any part of it.
    assert token not in caught.value.reason and token not in str(caught.value)
    for part in token.split("."):
        if len(part) > 8:
            assert part not in caught.value.reason
    return caught.value


class FakeClock:
    """Monotonic time the test advances by hand (to cross the JWKS TTL without sleeping)."""

    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture
def slow_refresh_verifier(oidc_issuer: TestIssuer, clock: FakeClock) -> Iterator[TokenVerifier]:
    settings = OidcSettings(
        issuer_url=oidc_issuer.url,
        audience=oidc_issuer.audience,
        jwks_cache_ttl_s=300,
        jwks_min_refresh_interval_s=60,
    )
    with TokenVerifier(settings, clock=clock) as verifier:
        yield verifier


# -- accepted tokens ------------------------------------------------------------------------


def test_valid_token_gives_identity_with_normalised_groups(
    oidc_issuer: TestIssuer, token_verifier: TokenVerifier
) -> None:
    identity = token_verifier.verify(oidc_issuer.mint())
    assert identity.subject == "7f3c1b2a-0000-4000-8000-00000000a11c"
    assert identity.username == "alice"
    assert identity.issuer == oidc_issuer.url
    # `groups` has "cms", `wlcg.groups` has "/cms" and "/cms/production": one set, no slashes.
    assert identity.groups == frozenset({"cms", "cms/production"})
    assert identity.is_member("/cms/production") and identity.is_member("cms")
    assert not identity.is_member("atlas")


def test_groups_from_wlcg_claim_only(
    oidc_issuer: TestIssuer, token_verifier: TokenVerifier
) -> None:
    wlcg_only: dict[str, Any] = {"groups": None, "wlcg.groups": ["/atlas"]}
    identity = token_verifier.verify(oidc_issuer.mint(**wlcg_only))
    assert identity.groups == frozenset({"atlas"})


def test_token_without_groups_has_no_groups(
    oidc_issuer: TestIssuer, token_verifier: TokenVerifier
) -> None:
    no_groups: dict[str, Any] = {"groups": None, "wlcg.groups": None}
    identity = token_verifier.verify(oidc_issuer.mint(**no_groups))
    assert identity.groups == frozenset()


def test_audience_list_containing_ours_is_accepted(
    oidc_issuer: TestIssuer, token_verifier: TokenVerifier
) -> None:
    token = oidc_issuer.mint(aud=["other-service", oidc_issuer.audience])
    assert token_verifier.verify(token).username == "alice"


def test_expiry_within_leeway_is_accepted(
    oidc_issuer: TestIssuer, token_verifier: TokenVerifier
) -> None:
    token = oidc_issuer.mint(exp=int(time.time()) - 5)
    assert token_verifier.verify(token).username == "alice"


@pytest.mark.parametrize("algorithm", ["RS384", "RS512"])
def test_other_rsa_algorithms_are_accepted(
    oidc_issuer: TestIssuer, token_verifier: TokenVerifier, algorithm: str
) -> None:
    assert token_verifier.verify(oidc_issuer.mint(algorithm=algorithm)).username == "alice"


def test_es256_key_is_accepted(oidc_issuer: TestIssuer, token_verifier: TokenVerifier) -> None:
    ec_key = IssuerKey.new_ec()
    oidc_issuer.rotate(keep_old=True, new_key=ec_key)
    assert token_verifier.verify(oidc_issuer.mint(key=ec_key)).username == "alice"


def test_username_fallback_claim(oidc_issuer: TestIssuer) -> None:
    settings = OidcSettings(
        issuer_url=oidc_issuer.url,
        audience=oidc_issuer.audience,
        username_claims=["preferred_username", "email"],
    )
    token = oidc_issuer.mint(preferred_username=None, email="bob@example.org")
    with TokenVerifier(settings) as verifier:
        assert verifier.verify(token).username == "bob@example.org"


def test_explicit_jwks_url_skips_discovery(oidc_issuer: TestIssuer) -> None:
    settings = OidcSettings(
        issuer_url=oidc_issuer.url, audience=oidc_issuer.audience, jwks_url=oidc_issuer.jwks_url
    )
    with TokenVerifier(settings) as verifier:
        verifier.verify(oidc_issuer.mint())
    assert oidc_issuer.discovery_requests == 0
    assert oidc_issuer.jwks_requests == 1


# -- JWKS cache and key rotation ------------------------------------------------------------


def test_jwks_is_cached(oidc_issuer: TestIssuer, token_verifier: TokenVerifier) -> None:
    for _ in range(3):
        token_verifier.verify(oidc_issuer.mint())
    assert oidc_issuer.jwks_requests == 1


def test_unknown_kid_after_rotation_refreshes_jwks_once(
    oidc_issuer: TestIssuer, token_verifier: TokenVerifier
) -> None:
    old_token = oidc_issuer.mint()
    token_verifier.verify(old_token)
    oidc_issuer.rotate(keep_old=False)
    new_token = oidc_issuer.mint()
    assert token_verifier.verify(new_token).username == "alice"
    assert oidc_issuer.jwks_requests == 2
    # The old key is no longer published: its tokens are refused after one more refresh.
    _refused(token_verifier, old_token, UnknownSigningKey)
    assert oidc_issuer.jwks_requests == 3


def test_unknown_kids_do_not_refetch_more_often_than_allowed(
    oidc_issuer: TestIssuer, slow_refresh_verifier: TokenVerifier, clock: FakeClock
) -> None:
    slow_refresh_verifier.verify(oidc_issuer.mint())
    stranger = IssuerKey.new_rsa()  # never published
    for _ in range(5):
        _refused(slow_refresh_verifier, oidc_issuer.mint(key=stranger), UnknownSigningKey)
    clock.now += 61
    _refused(slow_refresh_verifier, oidc_issuer.mint(key=stranger), UnknownSigningKey)
    # First fetch at start, one refresh after 61 s; none for the five quick unknown kids.
    assert oidc_issuer.jwks_requests == 2


def test_rotated_key_accepted_once_refresh_interval_passed(
    oidc_issuer: TestIssuer, slow_refresh_verifier: TokenVerifier, clock: FakeClock
) -> None:
    slow_refresh_verifier.verify(oidc_issuer.mint())
    oidc_issuer.rotate()
    new_token = oidc_issuer.mint()
    clock.now += 10
    _refused(slow_refresh_verifier, new_token, UnknownSigningKey)
    clock.now += 60
    assert slow_refresh_verifier.verify(new_token).username == "alice"


def test_jwks_refetched_after_ttl(
    oidc_issuer: TestIssuer, slow_refresh_verifier: TokenVerifier, clock: FakeClock
) -> None:
    slow_refresh_verifier.verify(oidc_issuer.mint())
    clock.now += 299
    slow_refresh_verifier.verify(oidc_issuer.mint())
    assert oidc_issuer.jwks_requests == 1
    clock.now += 2
    slow_refresh_verifier.verify(oidc_issuer.mint())
    assert oidc_issuer.jwks_requests == 2


# -- denials --------------------------------------------------------------------------------


def test_expired_token_is_refused(oidc_issuer: TestIssuer, token_verifier: TokenVerifier) -> None:
    now = int(time.time())
    _refused(token_verifier, oidc_issuer.mint(iat=now - 7200, exp=now - 3600), TokenExpired)


def test_token_without_exp_is_refused(
    oidc_issuer: TestIssuer, token_verifier: TokenVerifier
) -> None:
    _refused(token_verifier, oidc_issuer.mint(exp=None), MissingClaim)


def test_not_yet_valid_token_is_refused(
    oidc_issuer: TestIssuer, token_verifier: TokenVerifier
) -> None:
    now = int(time.time())
    token = oidc_issuer.mint(nbf=now + 3600, exp=now + 7200)
    _refused(token_verifier, token, TokenNotYetValid)


def test_forged_signature_other_key_same_kid_is_refused(
    oidc_issuer: TestIssuer, token_verifier: TokenVerifier
) -> None:
    real = oidc_issuer.current_key
    forger = IssuerKey(kid=real.kid, private_key=IssuerKey.new_rsa().private_key, algorithm="RS256")
    _refused(token_verifier, oidc_issuer.mint(key=forger), InvalidSignature)


def test_altered_claims_are_refused(oidc_issuer: TestIssuer, token_verifier: TokenVerifier) -> None:
    header, _, signature = oidc_issuer.mint().split(".")
    claims = oidc_issuer.claims(preferred_username="mallory", groups=["atlas"])
    tampered = header + "." + _b64(json.dumps(claims).encode()) + "." + signature
    _refused(token_verifier, tampered, InvalidSignature)


def test_wrong_audience_is_refused(oidc_issuer: TestIssuer, token_verifier: TokenVerifier) -> None:
    error = _refused(token_verifier, oidc_issuer.mint(aud="another-service"), WrongAudience)
    assert oidc_issuer.audience in error.reason


def test_missing_audience_is_refused(
    oidc_issuer: TestIssuer, token_verifier: TokenVerifier
) -> None:
    _refused(token_verifier, oidc_issuer.mint(aud=None), MissingClaim)


def test_wrong_issuer_is_refused(oidc_issuer: TestIssuer, token_verifier: TokenVerifier) -> None:
    _refused(token_verifier, oidc_issuer.mint(iss="https://evil.example.org/"), WrongIssuer)


def test_alg_none_is_refused(oidc_issuer: TestIssuer, token_verifier: TokenVerifier) -> None:
    header = {"alg": "none", "typ": "JWT", "kid": oidc_issuer.current_key.kid}
    token = _unsigned_parts(header, oidc_issuer.claims()) + "."
    _refused(token_verifier, token, AlgorithmRefused)


@pytest.mark.parametrize("alg", ["HS256", "HS512"])
def test_hmac_token_signed_with_public_key_as_secret_is_refused(
    oidc_issuer: TestIssuer, token_verifier: TokenVerifier, alg: str
) -> None:
    # The classic key-confusion attack: the attacker knows the public key and uses its PEM
    # text as the HMAC secret, hoping the verifier passes the same bytes to HMAC.
    key = oidc_issuer.current_key
    signing_input = _unsigned_parts(
        {"alg": alg, "typ": "JWT", "kid": key.kid}, oidc_issuer.claims()
    )
    digest = hashlib.sha256 if alg == "HS256" else hashlib.sha512
    signature = hmac.new(key.public_pem(), signing_input.encode(), digest).digest()
    _refused(token_verifier, signing_input + "." + _b64(signature), AlgorithmRefused)


def test_algorithm_not_matching_key_type_is_refused(
    oidc_issuer: TestIssuer, token_verifier: TokenVerifier
) -> None:
    # Signed with an EC key but pointing at the issuer's RSA key id.
    rsa_kid = oidc_issuer.current_key.kid
    ec_key = IssuerKey.new_ec()
    _refused(
        token_verifier,
        oidc_issuer.mint(key=ec_key, headers={"kid": rsa_kid}),
        AlgorithmRefused,
    )


def test_token_pointing_at_a_symmetric_jwk_is_refused(
    oidc_issuer: TestIssuer, token_verifier: TokenVerifier
) -> None:
    secret = b"shared-secret-published-by-mistake"
    oidc_issuer.extra_jwks.append({"kty": "oct", "kid": "oct-1", "k": _b64(secret)})
    signing_input = _unsigned_parts({"alg": "HS256", "kid": "oct-1"}, oidc_issuer.claims())
    signature = hmac.new(secret, signing_input.encode(), hashlib.sha256).digest()
    _refused(token_verifier, signing_input + "." + _b64(signature), AlgorithmRefused)
    # An RS256 header naming the symmetric key does not get it used either.
    token = oidc_issuer.mint(headers={"kid": "oct-1"})
    _refused(token_verifier, token, AlgorithmRefused)


def test_algorithm_other_than_the_jwk_alg_is_refused(
    oidc_issuer: TestIssuer, token_verifier: TokenVerifier
) -> None:
    key = IssuerKey.new_rsa()
    oidc_issuer.extra_jwks.append({**key.public_jwk(), "alg": "RS256"})
    assert token_verifier.verify(oidc_issuer.mint(key=key)).username == "alice"
    _refused(token_verifier, oidc_issuer.mint(key=key, algorithm="RS512"), AlgorithmRefused)


def test_encryption_keys_are_not_used_for_signatures(
    oidc_issuer: TestIssuer, token_verifier: TokenVerifier
) -> None:
    key = IssuerKey.new_rsa()
    oidc_issuer.extra_jwks.append({**key.public_jwk(), "use": "enc"})
    _refused(token_verifier, oidc_issuer.mint(key=key), UnknownSigningKey)


@pytest.mark.parametrize(
    "token",
    ["", "not-a-jwt", "a.b.c", "eyJhbGciOiJSUzI1NiJ9.!!!.###", "....", "x" * 5000, "a." * 9000],
)
def test_malformed_tokens_are_refused(token_verifier: TokenVerifier, token: str) -> None:
    with pytest.raises(MalformedToken) as caught:
        token_verifier.verify(token)
    assert token == "" or token not in caught.value.reason


def test_garbage_payload_with_valid_header_is_refused(
    oidc_issuer: TestIssuer, token_verifier: TokenVerifier
) -> None:
    # The signature is checked before the payload is parsed, so garbage fails as unsigned.
    header = _b64(json.dumps({"alg": "RS256", "kid": oidc_issuer.current_key.kid}).encode())
    token = header + "." + _b64(b"\xff\xfe not json") + "." + _b64(b"sig")
    _refused(token_verifier, token, InvalidSignature)


def test_missing_subject_is_refused(oidc_issuer: TestIssuer, token_verifier: TokenVerifier) -> None:
    _refused(token_verifier, oidc_issuer.mint(sub=None), MissingClaim)


def test_missing_username_is_refused(
    oidc_issuer: TestIssuer, token_verifier: TokenVerifier
) -> None:
    _refused(token_verifier, oidc_issuer.mint(preferred_username=None), MissingClaim)


def test_groups_claim_of_wrong_type_is_refused(
    oidc_issuer: TestIssuer, token_verifier: TokenVerifier
) -> None:
    _refused(token_verifier, oidc_issuer.mint(groups="cms"), MissingClaim)


# -- issuer problems and configuration -------------------------------------------------------


def test_unreachable_issuer_is_reported_as_unavailable(oidc_issuer: TestIssuer) -> None:
    with TestIssuer() as gone:
        settings = OidcSettings(issuer_url=gone.url, audience=gone.audience)
        token = gone.mint()
    with TokenVerifier(settings) as verifier:
        error = _refused(verifier, token, IssuerUnavailable)
    assert error.status_code == 503


def test_discovery_naming_another_issuer_is_refused(oidc_issuer: TestIssuer) -> None:
    settings = OidcSettings(issuer_url=oidc_issuer.url.rstrip("/"), audience=oidc_issuer.audience)
    with TokenVerifier(settings) as verifier:
        _refused(verifier, oidc_issuer.mint(), IssuerUnavailable)


def test_plain_http_issuer_off_loopback_is_a_configuration_error() -> None:
    with pytest.raises(OidcConfigurationError):
        TokenVerifier(OidcSettings(issuer_url="http://iam.example.org/", audience="x"))
