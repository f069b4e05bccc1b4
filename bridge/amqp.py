"""How the bridge connects to RabbitMQ: one place for connection parameters.

Credentials come from settings; heartbeats keep a quiet consumer's connection alive.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import pika
from pika.adapters.blocking_connection import BlockingChannel

from service.settings import RabbitMQSettings


def connection_parameters(mq: RabbitMQSettings) -> pika.ConnectionParameters:
    return pika.ConnectionParameters(
        host=mq.host,
        port=mq.port,
        virtual_host=mq.vhost,
        credentials=pika.PlainCredentials(mq.username, mq.password.get_secret_value()),
        heartbeat=60,
        blocked_connection_timeout=60,
        connection_attempts=1,
    )


@contextmanager
def confirmed_channel(mq: RabbitMQSettings) -> Iterator[BlockingChannel]:
    """A channel on a connection of its own, with publisher confirms (a publish the broker did
    not take raises); the connection is closed on exit."""
    connection = pika.BlockingConnection(connection_parameters(mq))
    try:
        channel = connection.channel()
        channel.confirm_delivery()
        yield channel
    finally:
        if connection.is_open:
            connection.close()
