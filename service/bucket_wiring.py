"""Wire a user's bucket to RabbitMQ so that changes under `cvmfs/` reach the service.

One RGW topic per repository pushes to the one pre-declared events exchange (RGW binds one
exchange per broker URL, services-notes §2.7 pitfall 3) with routing key = topic name; the
repository's queue is bound to that key. Every step is idempotent, so a retried provisioning
step converges instead of failing.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from service.settings import RabbitMQSettings

if TYPE_CHECKING:
    from mypy_boto3_s3 import S3Client
    from mypy_boto3_sns import SNSClient
    from pika.adapters.blocking_connection import BlockingChannel

NOTIFICATION_PREFIX = "cvmfs/"
NOTIFIED_EVENTS = ["s3:ObjectCreated:*", "s3:ObjectRemoved:*"]


@dataclass(frozen=True)
class BucketWiring:
    """The names that connect one repository's bucket to its queue."""

    fqrn: str
    bucket: str
    topic_name: str
    topic_arn: str
    notification_id: str
    queue: str


def topic_name_for(fqrn: str) -> str:
    """RGW topic (and AMQP routing key) of a repository; SNS names allow no dots."""
    return "cvmfs-" + fqrn.replace(".", "-")


def queue_name_for(fqrn: str) -> str:
    return f"cvmfs.repo.{fqrn}"


def notification_id_for(fqrn: str) -> str:
    return f"cvmfs-sync-{fqrn}"


def repository_queue_arguments(rabbitmq: RabbitMQSettings) -> dict[str, Any]:
    """Durable quorum queue; one active consumer keeps a repository's events in order."""
    return {
        "x-queue-type": "quorum",
        "x-single-active-consumer": True,
        "x-dead-letter-exchange": rabbitmq.dead_letter_exchange,
    }


def declare_events_exchange(channel: BlockingChannel, rabbitmq: RabbitMQSettings) -> None:
    """RGW never declares the exchange it publishes to: it must exist before any topic is used."""
    channel.exchange_declare(rabbitmq.events_exchange, exchange_type="topic", durable=True)
    channel.exchange_declare(rabbitmq.dead_letter_exchange, exchange_type="topic", durable=True)


def declare_repository_queue(
    channel: BlockingChannel, rabbitmq: RabbitMQSettings, fqrn: str
) -> str:
    queue = queue_name_for(fqrn)
    declare_events_exchange(channel, rabbitmq)
    channel.queue_declare(queue, durable=True, arguments=repository_queue_arguments(rabbitmq))
    channel.queue_bind(queue, rabbitmq.events_exchange, routing_key=topic_name_for(fqrn))
    return queue


def ensure_topic(sns: SNSClient, rabbitmq: RabbitMQSettings, fqrn: str) -> str:
    """Create (or update in place) the repository's persistent AMQP topic; returns its ARN.

    No credentials in the push endpoint: RGW refuses them over plain AMQP (services-notes §2.7
    pitfall 1) and would print them back in GetTopicAttributes. `persistent` queues events in
    RADOS while the broker is down instead of dropping them (pitfall 4).
    """
    response = sns.create_topic(
        Name=topic_name_for(fqrn),
        Attributes={
            "push-endpoint": f"amqp://{rabbitmq.host}:{rabbitmq.port}",
            "amqp-exchange": rabbitmq.events_exchange,
            "amqp-ack-level": "broker",
            "persistent": "true",
        },
    )
    return response["TopicArn"]


def ensure_bucket_notification(s3: S3Client, bucket: str, topic_arn: str, fqrn: str) -> str:
    """Add (or replace) this repository's notification, keeping the bucket's other ones."""
    notification_id = notification_id_for(fqrn)
    current = s3.get_bucket_notification_configuration(Bucket=bucket)
    others = [
        entry
        for entry in current.get("TopicConfigurations", [])
        if entry.get("Id") != notification_id
    ]
    ours: Any = {
        "Id": notification_id,
        "TopicArn": topic_arn,
        "Events": NOTIFIED_EVENTS,
        "Filter": {"Key": {"FilterRules": [{"Name": "prefix", "Value": NOTIFICATION_PREFIX}]}},
    }
    configuration: Any = {"TopicConfigurations": [*others, ours]}
    for kind in ("QueueConfigurations", "LambdaFunctionConfigurations"):
        if current.get(kind):
            configuration[kind] = current[kind]
    s3.put_bucket_notification_configuration(Bucket=bucket, NotificationConfiguration=configuration)
    return notification_id


def wire_bucket(
    *,
    s3: S3Client,
    sns: SNSClient,
    channel: BlockingChannel,
    rabbitmq: RabbitMQSettings,
    fqrn: str,
    bucket: str,
) -> BucketWiring:
    """Queue first, then topic, then notification: no event can arrive before its queue."""
    queue = declare_repository_queue(channel, rabbitmq, fqrn)
    topic_arn = ensure_topic(sns, rabbitmq, fqrn)
    notification_id = ensure_bucket_notification(s3, bucket, topic_arn, fqrn)
    return BucketWiring(
        fqrn=fqrn,
        bucket=bucket,
        topic_name=topic_name_for(fqrn),
        topic_arn=topic_arn,
        notification_id=notification_id,
        queue=queue,
    )


def unwire_bucket(
    *,
    s3: S3Client,
    sns: SNSClient,
    channel: BlockingChannel,
    fqrn: str,
    bucket: str,
    topic_arn: str,
) -> None:
    """Remove notification, topic and queue; each step tolerates an earlier partial removal."""
    notification_id = notification_id_for(fqrn)
    current = s3.get_bucket_notification_configuration(Bucket=bucket)
    remaining = [
        entry
        for entry in current.get("TopicConfigurations", [])
        if entry.get("Id") != notification_id
    ]
    configuration: Any = {"TopicConfigurations": remaining}
    s3.put_bucket_notification_configuration(Bucket=bucket, NotificationConfiguration=configuration)
    sns.delete_topic(TopicArn=topic_arn)
    channel.queue_delete(queue_name_for(fqrn))


def describe_topic(sns: SNSClient, topic_arn: str) -> dict[str, Any]:
    """Topic attributes with the endpoint JSON decoded (for status output and tests)."""
    attributes: dict[str, Any] = dict(sns.get_topic_attributes(TopicArn=topic_arn)["Attributes"])
    endpoint = attributes.get("EndPoint")
    if isinstance(endpoint, str):
        attributes["EndPoint"] = json.loads(endpoint)
    return attributes
