"""Declares the bridge's exchanges and queues on RabbitMQ; idempotent, safe to run from any process.

The consumer and the webhook publisher both call it, so whichever starts first creates
everything and a publish never lands on an exchange with no queue behind it.
"""

from __future__ import annotations

from typing import Any

from pika.adapters.blocking_connection import BlockingChannel

from bridge.config import BridgeConfig, QueueRoute
from service.settings import RabbitMQSettings

# Every message in the dead-letter queue carries why it is there in this header.
REASON_HEADER = "x-cvmfs-reason"


def declare_topology(channel: BlockingChannel, mq: RabbitMQSettings, config: BridgeConfig) -> None:
    """Exchanges, work queues with their retry queues, and the dead-letter queue.

    Re-declaring with the same arguments is a no-op; different arguments make the broker close
    the channel (PRECONDITION_FAILED): delete the queue or keep `queue_type` unchanged.
    """
    channel.exchange_declare(mq.events_exchange, exchange_type="topic", durable=True)
    channel.exchange_declare(mq.dead_letter_exchange, exchange_type="topic", durable=True)
    channel.queue_declare(config.dead_letter_queue, durable=True, arguments=_queue_args(config))
    channel.queue_bind(config.dead_letter_queue, mq.dead_letter_exchange, routing_key="#")
    for route in (config.s3, config.registry, config.repository_requests):
        _declare_route(channel, mq, config, route)


def _queue_args(config: BridgeConfig) -> dict[str, Any]:
    if config.queue_type == "quorum":
        return {"x-queue-type": "quorum"}
    return {}


def _declare_route(
    channel: BlockingChannel, mq: RabbitMQSettings, config: BridgeConfig, route: QueueRoute
) -> None:
    arguments = _queue_args(config) | {
        # What the broker itself rejects (delivery limit) still reaches the dead-letter queue.
        "x-dead-letter-exchange": mq.dead_letter_exchange,
        "x-dead-letter-routing-key": route.queue,
    }
    if config.queue_type == "quorum":
        arguments["x-delivery-limit"] = config.delivery_limit
    channel.queue_declare(route.queue, durable=True, arguments=arguments)
    for key in route.binding_keys:
        channel.queue_bind(route.queue, mq.events_exchange, routing_key=key)
    # Delayed retries: a message waits here for its per-message TTL, then the broker
    # dead-letters it back into the work queue through the default exchange.
    channel.queue_declare(
        route.retry_queue,
        durable=True,
        arguments={"x-dead-letter-exchange": "", "x-dead-letter-routing-key": route.queue},
    )
