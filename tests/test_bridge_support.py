"""Helpers for the bridge tests (no tests here): isolated topology, messages, a recording starter.

The recording starter is the consumer's injection point for "create a flow run" (a plain
in-process function that remembers its calls), not a stand-in for a service.
"""

from __future__ import annotations

import copy
import json
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

import pika

from bridge.amqp import confirmed_channel as channel
from bridge.config import BridgeConfig, QueueRoute
from bridge.consumer import BridgeConsumer
from bridge.repositories import RepositoryTarget, StaticRepositoryLookup
from service.settings import RabbitMQSettings, Settings
from tests.shared_paths import EVENTS

FIXTURES = EVENTS
REPO_A = RepositoryTarget(fqrn="alpha.sw.example.org", bucket="alpha-bucket", owner_id="alice")
REPO_B = RepositoryTarget(fqrn="beta.sw.example.org", bucket="beta-bucket", owner_id="bob")
LOOKUP = StaticRepositoryLookup({REPO_A.bucket: REPO_A, REPO_B.bucket: REPO_B})


@dataclass(frozen=True)
class Isolated:
    """Exchanges, queues and routing keys private to one test."""

    mq: RabbitMQSettings
    config: BridgeConfig
    prefix: str

    @property
    def s3_key(self) -> str:
        return f"s3.{self.prefix}"


def isolated(settings: Settings, **config: Any) -> Isolated:
    prefix = f"t{uuid.uuid4().hex[:10]}"
    mq = settings.rabbitmq.model_copy(
        update={
            "events_exchange": f"{prefix}.events",
            "dead_letter_exchange": f"{prefix}.dead-letter",
        }
    )
    defaults: dict[str, Any] = {
        "s3": QueueRoute(queue=f"{prefix}.s3-events", binding_keys=["s3.#"]),
        "registry": QueueRoute(queue=f"{prefix}.registry-events", binding_keys=["registry.#"]),
        "repository_requests": QueueRoute(
            queue=f"{prefix}.repository-requests", binding_keys=["repository.#"]
        ),
        "dead_letter_queue": f"{prefix}.dead-letter",
        "coalesce_window_s": 2.0,
        # Batches close on the window only, so tests can hold several messages in one batch
        # (the quiet flush has its own tests in test_bridge_coalescer_quiet.py).
        "coalesce_quiet_s": None,
        "retry_base_delay_s": 0.2,
        "retry_max_delay_s": 0.5,
        "reconnect_max_delay_s": 1.0,
    }
    return Isolated(mq=mq, config=BridgeConfig(**(defaults | config)), prefix=prefix)


def rgw_body(
    bucket: str,
    key: str,
    *,
    kind: str = "created",
    owner: str | None = None,
    sequencer: str = "0000000000000001",
    at_s: float = 0.0,
) -> bytes:
    """An RGW notification like the fixture's, for another bucket, key and time."""
    line = (FIXTURES / "ceph-rgw-amqp-messages.jsonl").read_text().splitlines()[0]
    document = json.loads(line)
    record = copy.deepcopy(document["Records"][0])
    record["eventName"] = "ObjectCreated:Put" if kind == "created" else "ObjectRemoved:Delete"
    when = datetime(2026, 11, 28, 3, 0, tzinfo=UTC) + timedelta(seconds=at_s)
    record["eventTime"] = when.isoformat().replace("+00:00", "Z")
    record["s3"]["bucket"]["name"] = bucket
    record["s3"]["bucket"]["ownerIdentity"]["principalId"] = owner or _owner_of(bucket)
    record["s3"]["object"]["key"] = key
    record["s3"]["object"]["sequencer"] = sequencer
    return json.dumps({"Records": [record]}).encode()


def _owner_of(bucket: str) -> str:
    target = LOOKUP.repository_for_bucket(bucket)
    return target.owner_id if target else "nobody"


@dataclass
class StarterCall:
    deployment: str
    parameters: dict[str, Any]
    idempotency_key: str


@dataclass
class RecordingStarter:
    """Remembers each call; `failures` are raised (in order) before calls start succeeding."""

    failures: list[BaseException] = field(default_factory=list)
    calls: list[StarterCall] = field(default_factory=list)
    attempts: int = 0
    lock: threading.Lock = field(default_factory=threading.Lock)

    def __call__(self, deployment: str, parameters: dict[str, Any], idempotency_key: str) -> str:
        with self.lock:
            self.attempts += 1
            if self.failures:
                raise self.failures.pop(0)
            self.calls.append(StarterCall(deployment, parameters, idempotency_key))
            return f"run-{len(self.calls)}"

    def snapshot(self) -> list[StarterCall]:
        with self.lock:
            return list(self.calls)


def wait_for(condition: Callable[[], bool], what: str, timeout_s: float = 60.0) -> None:
    deadline = time.monotonic() + timeout_s
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout_s:.0f} s waiting for {what}")
        time.sleep(0.05)


def publish(mq: RabbitMQSettings, routing_key: str, bodies: list[bytes], **props: Any) -> None:
    with channel(mq) as ch:
        for body in bodies:
            ch.basic_publish(
                mq.events_exchange,
                routing_key,
                body,
                pika.BasicProperties(delivery_mode=2, **props),
                mandatory=True,
            )


def drain(mq: RabbitMQSettings, queue: str) -> list[tuple[dict[str, Any], bytes]]:
    """Take every ready message off `queue`: (headers, body) pairs."""
    found: list[tuple[dict[str, Any], bytes]] = []
    with channel(mq) as ch:
        while True:
            method, properties, body = ch.basic_get(queue, auto_ack=True)
            if method is None:
                return found
            found.append((dict(properties.headers or {}), body))


def ready_count(mq: RabbitMQSettings, queue: str) -> int:
    with channel(mq) as ch:
        return int(ch.queue_declare(queue, passive=True).method.message_count)


@contextmanager
def running(consumer: BridgeConsumer) -> Iterator[threading.Thread]:
    """The consumer's loop in a thread, stopped and joined when the block ends."""
    errors: list[BaseException] = []

    def target() -> None:
        try:
            consumer.run()
        except BaseException as error:  # surfaced by the assertion below
            errors.append(error)

    thread = threading.Thread(target=target, name="bridge-consumer", daemon=True)
    thread.start()
    try:
        yield thread
    finally:
        consumer.request_stop()
        thread.join(timeout=30)
        assert not thread.is_alive(), "consumer did not stop within 30 s of request_stop()"
        assert not errors, f"consumer loop raised {errors[0]!r}"


def declare(iso: Isolated) -> None:
    """Create the topology before publishing (as the running service would have)."""
    from bridge.topology import declare_topology

    with channel(iso.mq) as ch:
        declare_topology(ch, iso.mq, iso.config)
