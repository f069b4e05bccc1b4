"""Replies to repository requests on the status queue (`cvmfs.repository-replies`)."""

from __future__ import annotations

import pika

from bridge.amqp import connection_parameters
from service.messages import ProvisionReply
from service.settings import Settings

REPLY_ROUTING_KEY = "reply.repository"
REPLY_QUEUE = "cvmfs.repository-replies"


def publish_reply(settings: Settings, reply: ProvisionReply) -> None:
    """Durable, confirmed reply on `reply.repository.<status>`, correlated by request id."""
    connection = pika.BlockingConnection(connection_parameters(settings.rabbitmq))
    try:
        channel = connection.channel()
        channel.confirm_delivery()
        exchange = settings.rabbitmq.events_exchange
        channel.exchange_declare(exchange, exchange_type="topic", durable=True)
        channel.queue_declare(REPLY_QUEUE, durable=True)
        channel.queue_bind(REPLY_QUEUE, exchange, routing_key=f"{REPLY_ROUTING_KEY}.#")
        channel.basic_publish(
            exchange=exchange,
            routing_key=f"{REPLY_ROUTING_KEY}.{reply.status}",
            body=reply.to_bytes(),
            properties=pika.BasicProperties(
                delivery_mode=pika.DeliveryMode.Persistent,
                content_type="application/json",
                correlation_id=reply.request_id,
            ),
            mandatory=True,
        )
    finally:
        connection.close()
