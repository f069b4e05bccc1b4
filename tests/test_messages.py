"""Provisioning messages: JSON and legacy parsing, refusals, and authorization with real tokens."""

from __future__ import annotations

import json
import time
from typing import Any

import pika
import pytest
from pydantic import SecretStr

from service.auth import IssuerUnavailable, TokenVerifier
from service.messages import (
    AmqpProperties,
    AuthorizedProvisionRequest,
    ProvisionReply,
    ProvisionRequest,
    Refusal,
    RequestParser,
)
from service.naming import RepositoryNamer
from service.settings import OidcSettings, ProvisioningSettings, Settings
from tests.issuer import TestIssuer

pytest_plugins = ("tests.fixtures_auth",)

TRUSTED = AmqpProperties(user_id="dashboard")
RULES = ProvisioningSettings(trusted_legacy_user_ids=["dashboard"])
SUBJECT = "7f3c1b2a-0000-4000-8000-00000000a11c"


@pytest.fixture
def parser() -> RequestParser:
    return RequestParser(
        RULES, RepositoryNamer("sw.example.org", RULES), reserved_buckets=["cvmfs-stratum0"]
    )


def _json(**fields: Any) -> bytes:
    document: dict[str, Any] = {
        "version": 1,
        "request_id": "req-1",
        "access_token": "eyJ.token.here",
        "kind": "personal",
    }
    document.update(fields)
    return json.dumps({k: v for k, v in document.items() if v is not None}).encode()


def _refusal(result: object, code: str) -> Refusal:
    assert isinstance(result, Refusal), result
    assert result.code == code, result.reason
    assert result.reason
    return result


# -- JSON parsing ---------------------------------------------------------------------------


def test_valid_json_request(parser: RequestParser) -> None:
    result = parser.parse(_json(kind="group", group="/cms", short_name="tools"), AmqpProperties())
    assert isinstance(result, ProvisionRequest)
    assert result.kind == "group" and result.group == "/cms" and result.short_name == "tools"
    assert result.access_token.get_secret_value() == "eyJ.token.here"
    assert "eyJ.token.here" not in repr(result)


@pytest.mark.parametrize("body", [b"{not json", b'{"version": 1,', b"{}}"])
def test_malformed_json_is_refused(parser: RequestParser, body: bytes) -> None:
    props = AmqpProperties(correlation_id="corr-9")
    refusal = _refusal(parser.parse(body, props), "malformed")
    assert refusal.request_id == "corr-9"  # still correlated for the reply


def test_json_that_is_not_an_object_is_refused(parser: RequestParser) -> None:
    _refusal(parser.parse(b"[1, 2]", AmqpProperties(content_type="application/json")), "malformed")


def test_non_utf8_is_refused(parser: RequestParser) -> None:
    _refusal(parser.parse(b"\xff\xfe{", AmqpProperties()), "malformed")


def test_oversized_message_is_refused(parser: RequestParser) -> None:
    _refusal(parser.parse(b"{" + b" " * 70_000 + b"}", AmqpProperties()), "malformed")


@pytest.mark.parametrize("version", [2, 0, "1", True, None])
def test_unknown_or_missing_version_is_refused(parser: RequestParser, version: object) -> None:
    body = _json(version=version) if version is not None else _json(version=None)
    refusal = _refusal(parser.parse(body, AmqpProperties()), "unsupported_version")
    assert "supported: [1]" in refusal.reason
    assert refusal.request_id == "req-1"


@pytest.mark.parametrize(
    ("fields", "location"),
    [
        ({"access_token": None}, "access_token"),
        ({"kind": "team"}, "kind"),
        ({"kind": "group"}, "needs 'group'"),
        ({"group": "cms"}, "must not name a 'group'"),
        ({"request_id": "bad id with spaces"}, "request_id"),
        ({"colour": "red"}, "colour"),
        ({"bucket": "x"}, "bucket"),
    ],
)
def test_missing_or_invalid_fields_are_refused(
    parser: RequestParser, fields: dict[str, Any], location: str
) -> None:
    refusal = _refusal(parser.parse(_json(**fields), AmqpProperties()), "malformed")
    assert location in refusal.reason


def test_refusal_never_echoes_the_token(parser: RequestParser) -> None:
    body = _json(access_token="SECRET-TOKEN-TEXT", kind="team")
    refusal = _refusal(parser.parse(body, AmqpProperties()), "malformed")
    assert "SECRET-TOKEN-TEXT" not in refusal.reason
    body = _json(access_token=["SECRET-TOKEN-TEXT"])
    refusal = _refusal(parser.parse(body, AmqpProperties()), "malformed")
    assert "SECRET-TOKEN-TEXT" not in refusal.reason


def test_reply_round_trip() -> None:
    reply = ProvisionReply(
        request_id="req-1",
        status="ok",
        fqrn="alice-personal.sw.example.org",
        client_config="/repositories/alice-personal.sw.example.org/client-config",
    )
    assert ProvisionReply.model_validate_json(reply.to_bytes()) == reply
    assert json.loads(reply.to_bytes())["version"] == 1


# -- legacy messages ------------------------------------------------------------------------


def test_legacy_personal_from_trusted_producer(parser: RequestParser) -> None:
    body = f"alice,{SUBJECT},alice-personal.sw.example.org,P".encode()
    result = parser.parse(body, TRUSTED)
    assert isinstance(result, AuthorizedProvisionRequest)
    assert result.source == "legacy" and result.kind == "personal" and result.group is None
    assert result.identity.subject == SUBJECT and result.identity.username == "alice"
    assert result.fqrn == "alice-personal.sw.example.org"
    assert result.bucket == "alice-personal"
    # No message id: the same bytes give the same request id, so redelivery is deduplicated.
    again = parser.parse(body, TRUSTED)
    assert isinstance(again, AuthorizedProvisionRequest)
    assert again.request_id == result.request_id


def test_legacy_group_takes_group_from_first_label(parser: RequestParser) -> None:
    props = AmqpProperties(user_id="dashboard", message_id="m-42")
    result = parser.parse(f"bob,{SUBJECT},cms.sw.example.org,G\n".encode(), props)
    assert isinstance(result, AuthorizedProvisionRequest)
    assert result.kind == "group" and result.group == "cms" and result.request_id == "m-42"
    assert result.identity.is_member("cms")


@pytest.mark.parametrize(
    "props",
    [
        AmqpProperties(),
        AmqpProperties(user_id="someone-else"),
        # app_id is not verified by RabbitMQ: naming a trusted app does not make one trusted.
        AmqpProperties(app_id="dashboard"),
    ],
)
def test_legacy_from_untrusted_producer_is_refused(
    parser: RequestParser, props: AmqpProperties
) -> None:
    body = f"alice,{SUBJECT},alice-personal.sw.example.org,P".encode()
    _refusal(parser.parse(body, props), "untrusted_producer")


def test_legacy_app_id_is_an_extra_condition() -> None:
    rules = ProvisioningSettings(
        trusted_legacy_user_ids=["dashboard"], trusted_legacy_app_ids=["dash-v2"]
    )
    parser = RequestParser(rules, RepositoryNamer("sw.example.org", rules))
    body = f"alice,{SUBJECT},alice-personal.sw.example.org,P".encode()
    _refusal(parser.parse(body, TRUSTED), "untrusted_producer")
    ok = parser.parse(body, AmqpProperties(user_id="dashboard", app_id="dash-v2"))
    assert isinstance(ok, AuthorizedProvisionRequest)


@pytest.mark.parametrize(
    "body",
    [
        b"alice,sub,alice-personal.sw.example.org",
        b"alice,sub,alice-personal.sw.example.org,P,extra",
        b"alice,,alice-personal.sw.example.org,P",
        b"alice,sub,alice-personal.sw.example.org,X",
        b"",
    ],
)
def test_malformed_legacy_is_refused(parser: RequestParser, body: bytes) -> None:
    _refusal(parser.parse(body, TRUSTED), "malformed")


@pytest.mark.parametrize(
    "fqrn",
    ["alice.infn.it", "unpacked.sw.example.org", "bad_name.sw.example.org"],
)
def test_legacy_with_invalid_repository_is_refused(parser: RequestParser, fqrn: str) -> None:
    _refusal(parser.parse(f"alice,sub,{fqrn},P".encode(), TRUSTED), "invalid_name")


@pytest.mark.parametrize("subject", ["../admin", "a/b", "a*b", "a+b"])
def test_legacy_with_unsafe_subject_is_refused(parser: RequestParser, subject: str) -> None:
    body = f"alice,{subject},alice-personal.sw.example.org,P".encode()
    _refusal(parser.parse(body, TRUSTED), "invalid_name")


def test_token_with_unsafe_subject_is_refused(
    parser: RequestParser, oidc_issuer: TestIssuer, token_verifier: TokenVerifier
) -> None:
    request = _request(oidc_issuer, kind="personal", access_token=oidc_issuer.mint(sub="x/../y"))
    _refusal(parser.authorize(request, token_verifier), "invalid_name")


def test_group_with_unsafe_characters_is_refused(
    parser: RequestParser, oidc_issuer: TestIssuer, token_verifier: TokenVerifier
) -> None:
    token = oidc_issuer.mint(groups=["cms/*"])
    request = _request(oidc_issuer, kind="group", group="cms/*", access_token=token)
    _refusal(parser.authorize(request, token_verifier), "invalid_name")


def test_legacy_group_cannot_take_a_personal_name(parser: RequestParser) -> None:
    body = b"bob,sub,alice-personal.sw.example.org,G"
    _refusal(parser.parse(body, TRUSTED), "invalid_name")


def test_from_pika_properties() -> None:
    pika_props = pika.BasicProperties(
        user_id="dashboard", message_id="m1", content_type="text/plain", headers={"x": "y"}
    )
    props = AmqpProperties.from_pika(pika_props)
    assert props.user_id == "dashboard" and props.message_id == "m1"
    assert props.app_id is None


# -- authorization with real tokens --------------------------------------------------------


def _request(oidc_issuer: TestIssuer, **fields: Any) -> ProvisionRequest:
    fields.setdefault("access_token", oidc_issuer.mint())
    return ProvisionRequest(request_id="req-7", **fields)


def test_authorize_personal(
    parser: RequestParser, oidc_issuer: TestIssuer, token_verifier: TokenVerifier
) -> None:
    result = parser.authorize(_request(oidc_issuer, kind="personal"), token_verifier)
    assert isinstance(result, AuthorizedProvisionRequest)
    assert result.fqrn == "alice-personal.sw.example.org"
    assert result.identity.subject == SUBJECT and result.source == "token"


def test_authorize_group_member(
    parser: RequestParser, oidc_issuer: TestIssuer, token_verifier: TokenVerifier
) -> None:
    request = _request(
        oidc_issuer, kind="group", group="/cms/production", short_name="sw", bucket="cms-prod"
    )
    result = parser.authorize(request, token_verifier)
    assert isinstance(result, AuthorizedProvisionRequest)
    assert result.group == "cms/production"
    assert result.fqrn == "production-sw.sw.example.org" and result.bucket == "cms-prod"


def test_authorize_refuses_non_member(
    parser: RequestParser, oidc_issuer: TestIssuer, token_verifier: TokenVerifier
) -> None:
    result = parser.authorize(_request(oidc_issuer, kind="group", group="atlas"), token_verifier)
    refusal = _refusal(result, "forbidden")
    assert "atlas" in refusal.reason and refusal.request_id == "req-7"


@pytest.mark.parametrize(
    "claims",
    [
        {"exp": int(time.time()) - 3600, "iat": int(time.time()) - 7200},
        {"aud": "someone-else"},
    ],
)
def test_authorize_refuses_bad_tokens(
    parser: RequestParser,
    oidc_issuer: TestIssuer,
    token_verifier: TokenVerifier,
    claims: dict[str, Any],
) -> None:
    request = _request(oidc_issuer, kind="personal", access_token=oidc_issuer.mint(**claims))
    _refusal(parser.authorize(request, token_verifier), "unauthenticated")


def test_authorize_refuses_reserved_and_service_bucket(
    parser: RequestParser, oidc_issuer: TestIssuer, token_verifier: TokenVerifier
) -> None:
    token = oidc_issuer.mint(groups=["unpacked"])
    request = _request(oidc_issuer, kind="group", group="unpacked", access_token=token)
    _refusal(parser.authorize(request, token_verifier), "invalid_name")
    request = _request(oidc_issuer, kind="personal", bucket="cvmfs-stratum0")
    _refusal(parser.authorize(request, token_verifier), "invalid_name")


def test_issuer_down_is_raised_not_refused(parser: RequestParser) -> None:
    with TestIssuer() as gone:
        settings = OidcSettings(issuer_url=gone.url, audience=gone.audience)
        request = ProvisionRequest(
            request_id="r", access_token=SecretStr(gone.mint()), kind="personal"
        )
    with TokenVerifier(settings) as verifier, pytest.raises(IssuerUnavailable):
        parser.authorize(request, verifier)


def test_parser_from_settings_reserves_stratum0_bucket() -> None:
    settings = Settings(provisioning=RULES)
    parser = RequestParser.from_settings(settings)
    body = f"alice,{SUBJECT},{settings.stratum0.bucket}.{settings.repository_domain},P".encode()
    _refusal(parser.parse(body, TRUSTED), "invalid_name")
