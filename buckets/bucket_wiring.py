"""Wire a user's bucket to RabbitMQ so that changes under `cvmfs/` reach the service.

One RGW topic per repository pushes to the one pre-declared events exchange (RGW binds one
exchange per broker URL, services-notes §2.7 pitfall 3) with routing key = topic name =
`s3.<fqrn>`; the bridge's S3 queue is bound to `s3.#` (bridge/config.py), so every bridge copy
sees every repository's events and no per-repository consumer has to be discovered. Every step
is idempotent, so a retried provisioning step converges instead of failing.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from bridge.config import BridgeConfig
from bridge.topology import declare_topology
from buckets.s3_clients import delete_bucket_notification
from service.settings import RabbitMQSettings, Settings

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
    """RGW topic of a repository, which is also the routing key of its events."""
    return f"s3.{fqrn}"


def notification_id_for(fqrn: str) -> str:
    return f"cvmfs-sync-{fqrn}"


# `none` for every topic on this RGW. RGW 16.2 segfaults (a msgr-worker thread jumps to a
# pointer whose low 32 bits were zeroed) after 2-69 events of a persistent topic with `broker`
# when PUTs are paced (0.5-30 s apart), most likely a use after free: the notification
# manager's coroutine resumes and frees the waiter of the broker's confirm while the AMQP
# thread still unlocks the waiter's mutex (`routable` uses the same waiter). A synchronous
# topic with `broker` crashed the same way twice under the sync benchmark (after ~15,000 PUTs
# from 32 threads, and during sequential uploads). With `none` RGW keeps a persistent topic's
# event in its RADOS queue until the AMQP client accepts it (it refuses while the broker is
# down) and never crashed (bench/rgw_persistent_stress.py). Those messages are transient (no
# delivery_mode), which the bridge's quorum queue keeps across a broker restart.
AMQP_ACK_LEVEL = "none"


def ensure_topic(
    sns: SNSClient,
    rabbitmq: RabbitMQSettings,
    fqrn: str,
    *,
    persistent: bool = False,
    ack_level: str = AMQP_ACK_LEVEL,
) -> str:
    """Create (or update in place) the repository's AMQP topic; returns its ARN.

    No credentials in the push endpoint: RGW refuses them over plain AMQP (services-notes §2.7
    pitfall 1) and would print them back in GetTopicAttributes. `persistent` queues events in
    RADOS while the broker is down instead of dropping them (pitfall 4). `ack_level` is open
    only for bench/rgw_persistent_stress.py.
    """
    response = sns.create_topic(
        Name=topic_name_for(fqrn),
        Attributes={
            "push-endpoint": f"amqp://{rabbitmq.host}:{rabbitmq.port}",
            "amqp-exchange": rabbitmq.events_exchange,
            "amqp-ack-level": ack_level,
            "persistent": "true" if persistent else "false",
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
    persistent: bool = False,
) -> BucketWiring:
    """Exchange and queues first (RGW never declares them), then topic, then notification."""
    declare_topology(channel, rabbitmq, BridgeConfig())
    topic_arn = ensure_topic(sns, rabbitmq, fqrn, persistent=persistent)
    notification_id = ensure_bucket_notification(s3, bucket, topic_arn, fqrn)
    return BucketWiring(
        fqrn=fqrn,
        bucket=bucket,
        topic_name=topic_name_for(fqrn),
        topic_arn=topic_arn,
        notification_id=notification_id,
        queue=BridgeConfig().s3.queue,
    )


def unwire_bucket(
    *,
    settings: Settings,
    s3: S3Client,
    sns: SNSClient,
    fqrn: str,
    bucket: str,
    topic_arn: str,
) -> None:
    """Remove this repository's notification and its topic; safe to repeat."""
    delete_bucket_notification(settings, bucket, notification_id_for(fqrn))
    sns.delete_topic(TopicArn=topic_arn)


def describe_topic(sns: SNSClient, topic_arn: str) -> dict[str, Any]:
    """Topic attributes with the endpoint JSON decoded (for status output and tests)."""
    attributes: dict[str, Any] = dict(sns.get_topic_attributes(TopicArn=topic_arn)["Attributes"])
    endpoint = attributes.get("EndPoint")
    if isinstance(endpoint, str):
        attributes["EndPoint"] = json.loads(endpoint)
    return attributes
