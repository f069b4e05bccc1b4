"""The registry webhook receiver: auth, refusals, filtering, and durable messages on RabbitMQ."""

from __future__ import annotations

import copy
import json
from collections.abc import Iterator
from typing import Any

import pytest
from fastapi.testclient import TestClient
from pydantic import SecretStr

from bridge.consumer import BridgeConsumer
from bridge.publisher import EventPublisher
from bridge.registry_events import ImagePushed, UnpackFilter, parse_image_event_message
from bridge.webhook import WEBHOOK_PATH, create_webhook_app
from service.settings import Settings
from stack.rabbitmq import RabbitMQ
from tests.shared_paths import EVENTS
from tests.test_bridge_support import (
    LOOKUP,
    Isolated,
    RecordingStarter,
    channel,
    declare,
    isolated,
    ready_count,
    running,
    wait_for,
)

pytestmark = pytest.mark.stack

FIXTURES = EVENTS
SECRET = SecretStr("s3cr3t-webhook-token")
AUTH = {"Authorization": f"Bearer {SECRET.get_secret_value()}"}


def distribution_body() -> dict[str, Any]:
    body: dict[str, Any] = json.loads(
        (FIXTURES / "distribution-registry-push-manifest.json").read_text()
    )["body"]
    return body


def harbor_body() -> dict[str, Any]:
    body: dict[str, Any] = json.loads((FIXTURES / "harbor-push-artifact-example.json").read_text())
    body.pop("_note")
    return body


@pytest.fixture
def iso(rabbitmq: Settings) -> Isolated:
    names = isolated(rabbitmq)
    declare(names)
    return names


@pytest.fixture
def client(iso: Isolated) -> Iterator[TestClient]:
    publisher = EventPublisher(iso.mq, iso.config)
    app = create_webhook_app(SECRET, publisher, UnpackFilter.of(["dev"]))
    with TestClient(app) as test_client:
        yield test_client
    publisher.close()


def get_messages(iso: Isolated) -> list[tuple[Any, bytes]]:
    found: list[tuple[Any, bytes]] = []
    with channel(iso.mq) as ch:
        while True:
            method, properties, body = ch.basic_get(iso.config.registry.queue, auto_ack=True)
            if method is None:
                return found
            found.append((properties, body))


@pytest.mark.parametrize(
    "headers",
    [
        {},
        {"Authorization": "Bearer wrong"},
        {"Authorization": SECRET.get_secret_value()},  # no scheme
        {"Authorization": f"Basic {SECRET.get_secret_value()}"},
    ],
)
def test_unauthenticated_posts_are_refused(client: TestClient, headers: dict[str, str]) -> None:
    answer = client.post(WEBHOOK_PATH, json=distribution_body(), headers=headers)
    assert answer.status_code == 401
    assert "Authorization" in answer.json()["detail"]


def test_distribution_push_becomes_a_durable_message(client: TestClient, iso: Isolated) -> None:
    answer = client.post(WEBHOOK_PATH, json=distribution_body(), headers=AUTH)
    assert answer.status_code == 202
    assert answer.json() == {"accepted": 1, "ignored": 0}
    [(properties, body)] = get_messages(iso)
    assert properties.delivery_mode == 2
    assert properties.content_type == "application/json"
    event = parse_image_event_message(body)
    assert isinstance(event, ImagePushed)
    assert event.reference == "127.0.0.1:5000/dev/hello:1.0"
    assert properties.message_id == event.message_id()


def test_harbor_push_is_accepted(client: TestClient, iso: Isolated) -> None:
    answer = client.post(WEBHOOK_PATH, json=harbor_body(), headers=AUTH)
    assert answer.status_code == 202
    [(_, body)] = get_messages(iso)
    assert parse_image_event_message(body).reference == "harbor.example.org/dev/hello:1.0"


def test_ignored_events_answer_200_with_a_count(client: TestClient, iso: Isolated) -> None:
    body = distribution_body()
    pull = copy.deepcopy(body["events"][0]) | {"action": "pull"}
    elsewhere = copy.deepcopy(body["events"][0])
    elsewhere["target"]["repository"] = "other/image"  # project not unpacked
    body["events"] = [pull, elsewhere]
    answer = client.post(WEBHOOK_PATH, json=body, headers=AUTH)
    assert answer.status_code == 200
    assert answer.json() == {"accepted": 0, "ignored": 2}
    assert get_messages(iso) == []


@pytest.mark.parametrize(
    ("content", "reason"),
    [
        (b"{oops", "not valid JSON"),
        (b'{"something": "else"}', "neither a distribution"),
        (
            json.dumps(
                {
                    "events": [
                        {
                            "action": "push",
                            "request": {"host": "registry.example.org"},
                            "target": {
                                "repository": "../../etc",
                                "tag": "1",
                                "digest": "sha256:" + "0" * 64,
                                "mediaType": "application/vnd.oci.image.manifest.v1+json",
                            },
                        }
                    ]
                }
            ).encode(),
            "repository",
        ),
    ],
)
def test_malformed_payloads_get_400_with_a_reason(
    client: TestClient, iso: Isolated, content: bytes, reason: str
) -> None:
    answer = client.post(WEBHOOK_PATH, content=content, headers=AUTH)
    assert answer.status_code == 400
    assert reason in answer.json()["detail"]
    assert ready_count(iso.mq, iso.config.registry.queue) == 0


def test_push_reaches_the_unpack_deployment_through_the_bridge(
    client: TestClient, iso: Isolated
) -> None:
    # Prefect may be down while this happens: the message waits in the queue.
    assert client.post(WEBHOOK_PATH, json=distribution_body(), headers=AUTH).status_code == 202
    assert ready_count(iso.mq, iso.config.registry.queue) == 1
    starter = RecordingStarter()
    with running(BridgeConsumer(iso.mq, iso.config, LOOKUP, starter)):
        wait_for(lambda: len(starter.snapshot()) == 1, "the unpack run")
    [call] = starter.calls
    assert call.deployment == "unpack/unpack"
    assert call.parameters["req"]["repository"] == "dev/hello"
    assert call.parameters["req"]["digest"].startswith("sha256:f41bca")


def test_broker_refusing_the_message_gives_503(iso: Isolated) -> None:
    # A vhost that does not exist: the broker refuses the connection, as when it is down.
    wrong = iso.mq.model_copy(update={"vhost": f"/missing-{iso.prefix}"})
    publisher = EventPublisher(wrong, iso.config)
    app = create_webhook_app(SECRET, publisher, UnpackFilter.of(["dev"]))
    with TestClient(app) as test_client:
        answer = test_client.post(WEBHOOK_PATH, json=distribution_body(), headers=AUTH)
    assert answer.status_code == 503
    assert "retry later" in answer.json()["detail"]


@pytest.mark.slow
def test_publisher_reconnects_after_a_broker_restart(
    client: TestClient, iso: Isolated, rabbitmq: Settings
) -> None:
    assert client.post(WEBHOOK_PATH, json=distribution_body(), headers=AUTH).status_code == 202
    broker = RabbitMQ(rabbitmq, rabbitmq.absolute_data_dir / RabbitMQ.name)
    broker.stop()
    broker.start()
    assert client.post(WEBHOOK_PATH, json=harbor_body(), headers=AUTH).status_code == 202
    references = [parse_image_event_message(body).reference for _, body in get_messages(iso)]
    # The first message was confirmed before the restart, so it survived it.
    assert references == ["127.0.0.1:5000/dev/hello:1.0", "harbor.example.org/dev/hello:1.0"]
