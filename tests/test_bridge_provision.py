"""Repository requests through the bridge on the real broker, with a real local OIDC issuer:
authorized ones start `provision` with the identity only; refused ones get a reply and a
dead letter with the reason; the same request delivered three times maps to one run.
"""

from __future__ import annotations

import json

import pytest

from bridge.consumer import BridgeConsumer
from bridge.provision_requests import ProvisionRequestParameters
from service.auth import TokenVerifier
from service.messages import ProvisionReply, RequestParser
from service.naming import RepositoryNamer
from service.settings import ProvisioningSettings, Settings
from tests.issuer import TestIssuer
from tests.test_bridge_support import (
    LOOKUP,
    RecordingStarter,
    declare,
    drain,
    isolated,
    publish,
    ready_count,
    running,
    wait_for,
)

pytest_plugins = ("tests.fixtures_auth",)
pytestmark = pytest.mark.stack

RULES = ProvisioningSettings(trusted_legacy_user_ids=["dashboard"])


def request_body(token: str, request_id: str, **fields: object) -> bytes:
    document = {"version": 1, "request_id": request_id, "access_token": token, "kind": "personal"}
    return json.dumps(document | fields).encode()


def test_requests_are_authorized_before_provisioning(
    rabbitmq: Settings, oidc_issuer: TestIssuer, token_verifier: TokenVerifier
) -> None:
    iso = isolated(rabbitmq)
    declare(iso)
    replies: list[ProvisionReply] = []
    parameters = ProvisionRequestParameters(
        RequestParser(RULES, RepositoryNamer("sw.example.org", RULES)),
        token_verifier,
        replies.append,
    )
    good = request_body(oidc_issuer.mint(), "req-good")
    expired = request_body(oidc_issuer.mint(exp=1), "req-expired")
    outsider = request_body(oidc_issuer.mint(), "req-group", kind="group", group="/atlas")
    untrusted_legacy = b"alice,sub-1,alice.sw.example.org,P"  # no trusted user_id
    key = "repository.request"
    publish(iso.mq, key, [good, good, expired, outsider, untrusted_legacy, good])
    starter = RecordingStarter()
    consumer = BridgeConsumer(iso.mq, iso.config, LOOKUP, starter, request_params=parameters)
    with running(consumer):
        wait_for(lambda: ready_count(iso.mq, iso.config.dead_letter_queue) == 3, "3 refusals")
        wait_for(lambda: len(starter.snapshot()) == 3, "the good request's three deliveries")
    assert {call.idempotency_key for call in starter.calls} == {starter.calls[0].idempotency_key}
    [request] = {json.dumps(call.parameters, sort_keys=True) for call in starter.calls}
    authorized = json.loads(request)["request"]
    assert authorized["fqrn"] == "alice-personal.sw.example.org"
    assert authorized["identity"]["username"] == "alice"
    assert "access_token" not in request and "eyJ" not in request  # no token reaches Prefect
    assert all(call.deployment == "provision/provision" for call in starter.calls)
    reasons = [str(h["x-cvmfs-reason"]) for h, _ in drain(iso.mq, iso.config.dead_letter_queue)]
    assert "unauthenticated" in reasons[0]
    assert "forbidden" in reasons[1] and "atlas" in reasons[1]
    assert "untrusted_producer" in reasons[2]
    assert [(r.request_id, r.status) for r in replies[:2]] == [
        ("req-expired", "refused"),
        ("req-group", "refused"),
    ]
    assert replies[2].status == "refused" and str(replies[2].request_id).startswith("legacy-")
