"""How the bridge connects to RabbitMQ: one place for connection parameters.

Credentials come from settings; heartbeats keep a quiet consumer's connection alive.
"""

from __future__ import annotations

import pika

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
