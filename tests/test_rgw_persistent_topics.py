"""RGW persistent topics as the provision flow wires them: S3 events made while RabbitMQ is down
are kept by RGW and delivered, every one, once the broker is back.

Stops and starts the session's RabbitMQ, so it runs last (disrupts_stack).
"""

from __future__ import annotations

import json
import time
import uuid

import pytest

from bridge.config import BridgeConfig
from bridge.topology import declare_topology
from buckets.bucket_wiring import (
    describe_topic,
    ensure_bucket_notification,
    ensure_topic,
    topic_name_for,
)
from buckets.s3_clients import bucket_agent_s3, bucket_agent_sns, demo_s3
from service.settings import RabbitMQSettings, Settings
from stack.rabbitmq import RabbitMQ
from tests.test_bridge_support import channel

pytestmark = [pytest.mark.stack, pytest.mark.slow, pytest.mark.disrupts_stack]

# RGW 16.2's notification manager looks for new persistent queues every 30 s, so the first
# event of a freshly wired bucket can take that long; after a broker restart RGW reconnects
# and retries on its own.
EVENT_WAIT_S = 120.0
Event = tuple[str, str]  # (eventName, object key)


def _collect(mq: RabbitMQSettings, queue: str, wanted: set[Event]) -> set[Event]:
    """Events from `queue` until every wanted one arrived or EVENT_WAIT_S passed."""
    seen: set[Event] = set()
    deadline = time.monotonic() + EVENT_WAIT_S
    with channel(mq) as ch:
        while not wanted <= seen and time.monotonic() < deadline:
            method, _props, body = ch.basic_get(queue, auto_ack=True)
            if method is None:
                time.sleep(0.2)
                continue
            for record in json.loads(body)["Records"]:
                seen.add((record["eventName"], record["s3"]["object"]["key"]))
    return seen


def test_events_made_while_rabbitmq_is_down_arrive_after_it_returns(
    ceph: Settings, rabbitmq: Settings
) -> None:
    suffix = uuid.uuid4().hex[:8]
    fqrn = f"persist{suffix}.sw.example.org"
    bucket = f"persist-{suffix}"
    queue = f"test.rgw-persistent.{suffix}"
    mq = rabbitmq.rabbitmq
    with channel(mq) as ch:
        declare_topology(ch, mq, BridgeConfig())
        # Quorum, like the bridge's S3 queue: it keeps RGW's transient messages over a restart.
        ch.queue_declare(queue, durable=True, arguments={"x-queue-type": "quorum"})
        ch.queue_bind(queue, mq.events_exchange, routing_key=topic_name_for(fqrn))

    user = demo_s3(ceph)
    user.create_bucket(Bucket=bucket)
    sns = bucket_agent_sns(ceph)
    arn = ensure_topic(sns, mq, fqrn, persistent=True)
    ensure_bucket_notification(bucket_agent_s3(ceph), bucket, arn, fqrn)
    endpoint = describe_topic(sns, arn)["EndPoint"]
    assert endpoint["Persistent"] == "true"
    assert "amqp-ack-level=none" in endpoint["EndpointArgs"]

    # Once RGW processes this topic's queue, the outage below is the only thing in the way.
    before = {("ObjectCreated:Put", "cvmfs/before.txt")}
    user.put_object(Bucket=bucket, Key="cvmfs/before.txt", Body=b"before")
    assert _collect(mq, queue, before) == before

    puts = [f"cvmfs/outage/{n}.txt" for n in range(5)] + ["cvmfs/outage/with space+ü.txt"]
    batch_deleted, single_deleted = puts[:2], puts[2]
    broker = RabbitMQ(rabbitmq, rabbitmq.absolute_data_dir / RabbitMQ.name)
    broker.stop()
    try:
        for key in puts:
            user.put_object(Bucket=bucket, Key=key, Body=key.encode())
        user.delete_objects(
            Bucket=bucket, Delete={"Objects": [{"Key": key} for key in batch_deleted]}
        )
        user.delete_object(Bucket=bucket, Key=single_deleted)
    finally:
        broker.start()

    during = {("ObjectCreated:Put", key) for key in puts} | {
        ("ObjectRemoved:Delete", key) for key in [*batch_deleted, single_deleted]
    }
    try:
        assert _collect(mq, queue, during) == during
    finally:
        with channel(mq) as ch:
            ch.queue_delete(queue)
        for key in (set(puts) - {*batch_deleted, single_deleted}) | {"cvmfs/before.txt"}:
            user.delete_object(Bucket=bucket, Key=key)
        sns.delete_topic(TopicArn=arn)
        user.delete_bucket(Bucket=bucket)
