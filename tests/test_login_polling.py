"""The device-code polling of `cvmfs-svc login` (login/device_flow.py) on answers the stack's
provider never gives: a test double of the issuer, on purpose.

oidc-provider 9 never answers `slow_down` and forgets an expired code (`invalid_grant`) instead
of answering `expired_token`; INDIGO IAM may send both (RFC 8628 §3.5). So the token endpoint
here is httpx.MockTransport, and time is a fake clock advanced by the poller's own sleeps. The
real exchange is tests/test_cli_login.py.
"""

from __future__ import annotations

import httpx
import pytest

from login.device_flow import (
    DeviceAuthorization,
    IssuerEndpoints,
    TokenResponse,
    poll_for_tokens,
)
from login.errors import LoginDenied, LoginExpired

ENDPOINTS = IssuerEndpoints(
    issuer="https://iam.example/", token_endpoint="https://iam.example/token"
)


class FakeTime:
    def __init__(self) -> None:
        self.now = 1000.0
        self.sleeps: list[float] = []

    def sleep(self, seconds: float) -> None:
        self.sleeps.append(seconds)
        self.now += seconds

    def clock(self) -> float:
        return self.now


def _poll(answers: list[httpx.Response], expires_in: int = 600) -> tuple[object, FakeTime, int]:
    """Poll against `answers` in order; (the result or the error raised, the time, polls)."""
    polls = 0

    def token_endpoint(request: httpx.Request) -> httpx.Response:
        nonlocal polls
        polls += 1
        body = request.content.decode()
        assert "grant_type=urn%3Aietf%3Aparams%3Aoauth%3Agrant-type%3Adevice_code" in body
        assert "device_code=dc" in body and "client_id=cvmfs-cli" in body
        return answers[min(polls, len(answers)) - 1]

    authorization = DeviceAuthorization(
        device_code="dc",
        user_code="WXYZ-BCDF",
        verification_uri="https://iam.example/device",
        expires_in=expires_in,
    )
    fake = FakeTime()
    with httpx.Client(transport=httpx.MockTransport(token_endpoint)) as http:
        try:
            result: object = poll_for_tokens(
                http, ENDPOINTS, "cvmfs-cli", authorization, fake.sleep, fake.clock
            )
        except (LoginDenied, LoginExpired) as exc:
            result = exc
    return result, fake, polls


def _error(error: str) -> httpx.Response:
    return httpx.Response(400, json={"error": error})


def test_slow_down_adds_five_seconds_to_the_interval_for_good() -> None:
    tokens = httpx.Response(200, json={"access_token": "at", "token_type": "Bearer"})
    result, fake, polls = _poll([_error("slow_down"), _error("authorization_pending"), tokens])
    assert isinstance(result, TokenResponse) and result.access_token == "at"
    assert fake.sleeps == [5, 10, 10] and polls == 3  # no interval named: RFC 8628's 5 s


def test_expired_token_and_access_denied_end_the_login_with_what_to_do() -> None:
    expired, _, _ = _poll([_error("authorization_pending"), _error("expired_token")])
    assert isinstance(expired, LoginExpired)
    assert "the code WXYZ-BCDF expired before it was approved" in str(expired)
    assert "run `cvmfs-svc login` again" in str(expired)
    denied, _, _ = _poll([_error("access_denied")])
    assert isinstance(denied, LoginDenied) and "was denied at the issuer" in str(denied)


def test_polling_stops_when_the_code_expires_even_if_the_issuer_never_says_so() -> None:
    result, fake, polls = _poll([_error("authorization_pending")], expires_in=12)
    assert isinstance(result, LoginExpired)
    assert polls == 2 and fake.sleeps == [5, 5, 5]  # at 5 s and 10 s; at 15 s it had expired


@pytest.mark.parametrize("status", [500, 502])
def test_a_failing_issuer_is_polled_again_and_named_when_the_code_expires(status: int) -> None:
    result, _, polls = _poll([httpx.Response(status, text="down")], expires_in=16)
    assert isinstance(result, LoginExpired) and polls == 3
    assert f"answered HTTP {status}" in str(result)
