"""Publishes durable, confirmed messages to the events exchange (webhook receiver, API) and
to the dead-letter exchange (what a flow refuses after the bridge accepted it).

One connection, used under a lock (pika is not thread-safe), reopened when the broker went away.
"""

from __future__ import annotations

import logging
import threading
from datetime import UTC, datetime
from typing import Any

import pika
import pika.exceptions
from pika.adapters.blocking_connection import BlockingChannel

from bridge.amqp import connection_parameters
from bridge.config import BridgeConfig
from bridge.errors import BrokerUnavailable
from bridge.topology import REASON_HEADER, declare_topology
from service.settings import RabbitMQSettings

log = logging.getLogger("cvmfs.bridge.publisher")


class EventPublisher:
    def __init__(self, mq: RabbitMQSettings, config: BridgeConfig) -> None:
        self.mq = mq
        self.config = config
        self._lock = threading.Lock()
        self._connection: pika.BlockingConnection | None = None
        self._channel: BlockingChannel | None = None

    def publish(self, routing_key: str, body: bytes, message_id: str) -> None:
        """Publish persistently to the events exchange; return once the broker confirmed it.

        Tries a fresh connection once if the current one is dead; raises BrokerUnavailable
        when the broker cannot take the message.
        """
        self._publish(self.mq.events_exchange, routing_key, body, _properties(message_id, {}))

    def dead_letter(self, routing_key: str, body: bytes, message_id: str, reason: str) -> None:
        """Park a refused message in the dead-letter queue with its reason, as the bridge does."""
        headers = {
            REASON_HEADER: reason[:1000],
            "x-cvmfs-dead-lettered-at": datetime.now(UTC).isoformat(),
        }
        properties = _properties(message_id, headers)
        self._publish(self.mq.dead_letter_exchange, routing_key, body, properties)

    def _publish(
        self, exchange: str, routing_key: str, body: bytes, properties: pika.BasicProperties
    ) -> None:
        with self._lock:
            for attempt in (1, 2):
                try:
                    self._publish_locked(exchange, routing_key, body, properties)
                    return
                except pika.exceptions.AMQPError as error:
                    self._close_locked()
                    if attempt == 2:
                        raise BrokerUnavailable(
                            f"RabbitMQ at {self.mq.host}:{self.mq.port} did not take the "
                            f"message: {error!r}"
                        ) from error
                    log.info("event=publisher-reconnect error=%r", error)

    def _publish_locked(
        self, exchange: str, routing_key: str, body: bytes, properties: pika.BasicProperties
    ) -> None:
        if self._channel is None or not self._channel.is_open:
            self._connection = pika.BlockingConnection(connection_parameters(self.mq))
            self._channel = self._connection.channel()
            self._channel.confirm_delivery()
            declare_topology(self._channel, self.mq, self.config)
        self._channel.basic_publish(
            exchange=exchange,
            routing_key=routing_key,
            body=body,
            properties=properties,
            mandatory=True,
        )

    def _close_locked(self) -> None:
        connection, self._connection, self._channel = self._connection, None, None
        if connection is not None and connection.is_open:
            try:
                connection.close()
            except pika.exceptions.AMQPError as error:
                log.info("event=publisher-close-failed error=%r", error)

    def close(self) -> None:
        with self._lock:
            self._close_locked()


def _properties(message_id: str, headers: dict[str, Any]) -> pika.BasicProperties:
    return pika.BasicProperties(
        delivery_mode=pika.DeliveryMode.Persistent,
        content_type="application/json",
        message_id=message_id,
        headers=headers or None,
    )
