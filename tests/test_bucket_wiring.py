"""Bucket wiring on the real RGW and RabbitMQ: a user's upload under cvmfs/ reaches the queue."""

from __future__ import annotations

import json
import time
import uuid

import pika
import pytest

from bridge.config import BridgeConfig
from buckets.bucket_wiring import describe_topic, topic_name_for, unwire_bucket, wire_bucket
from buckets.s3_clients import bucket_agent_s3, bucket_agent_sns, demo_s3
from service.settings import Settings

pytestmark = [pytest.mark.stack]

EVENT_WAIT_S = 60.0


def _drain(channel: pika.adapters.blocking_connection.BlockingChannel, queue: str) -> list[dict]:
    bodies = []
    while True:
        method, _props, body = channel.basic_get(queue, auto_ack=True)
        if method is None:
            return bodies
        bodies.append(json.loads(body))


def test_upload_under_cvmfs_reaches_the_bridge_queue(ceph: Settings, rabbitmq: Settings) -> None:
    settings = ceph
    fqrn = f"w{uuid.uuid4().hex[:8]}.sw.example.org"
    bucket = f"bucket-{uuid.uuid4().hex[:8]}"
    user_s3 = demo_s3(settings)
    user_s3.create_bucket(Bucket=bucket)
    connection = pika.BlockingConnection(
        pika.ConnectionParameters(settings.rabbitmq.host, settings.rabbitmq.port)
    )
    channel = connection.channel()
    try:
        wiring = wire_bucket(
            s3=bucket_agent_s3(settings),
            sns=bucket_agent_sns(settings),
            channel=channel,
            rabbitmq=settings.rabbitmq,
            fqrn=fqrn,
            bucket=bucket,
        )
        again = wire_bucket(
            s3=bucket_agent_s3(settings),
            sns=bucket_agent_sns(settings),
            channel=channel,
            rabbitmq=settings.rabbitmq,
            fqrn=fqrn,
            bucket=bucket,
        )
        assert again == wiring  # idempotent: same topic, one notification
        config = bucket_agent_s3(settings).get_bucket_notification_configuration(Bucket=bucket)
        assert [c["Id"] for c in config["TopicConfigurations"]] == [wiring.notification_id]
        attributes = describe_topic(bucket_agent_sns(settings), wiring.topic_arn)
        assert attributes["EndPoint"]["EndpointTopic"] == topic_name_for(fqrn)
        queue = BridgeConfig().s3.queue
        _drain(channel, queue)  # other tests' leftovers

        user_s3.put_object(Bucket=bucket, Key="cvmfs/dir/hello.txt", Body=b"hi")
        user_s3.put_object(Bucket=bucket, Key="elsewhere/ignored.txt", Body=b"no")
        received: list[dict] = []
        deadline = time.monotonic() + EVENT_WAIT_S
        while time.monotonic() < deadline and not received:
            received += [
                body
                for body in _drain(channel, queue)
                if body["Records"][0]["s3"]["bucket"]["name"] == bucket
            ]
            time.sleep(0.2)
        time.sleep(1.0)
        received += [
            body
            for body in _drain(channel, queue)
            if body["Records"][0]["s3"]["bucket"]["name"] == bucket
        ]
        keys = [body["Records"][0]["s3"]["object"]["key"] for body in received]
        assert keys == ["cvmfs/dir/hello.txt"]

        unwire_bucket(
            settings=settings,
            s3=bucket_agent_s3(settings),
            sns=bucket_agent_sns(settings),
            fqrn=fqrn,
            bucket=bucket,
            topic_arn=wiring.topic_arn,
        )
        config = bucket_agent_s3(settings).get_bucket_notification_configuration(Bucket=bucket)
        assert not config.get("TopicConfigurations")
        unwire_bucket(  # again: nothing left to remove is fine
            settings=settings,
            s3=bucket_agent_s3(settings),
            sns=bucket_agent_sns(settings),
            fqrn=fqrn,
            bucket=bucket,
            topic_arn=wiring.topic_arn,
        )
    finally:
        connection.close()
