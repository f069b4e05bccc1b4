"""The dead-letter queue for operators: list its messages with their reasons, replay, drop.

Listing takes messages without acknowledging them and gives every one back before it returns,
so it removes nothing; dropping removes only the messages of the kind an operator names.
Replaying moves a message the bridge dead-lettered back onto the events exchange with its
original routing key, once what refused it is fixed (`retries_exhausted` while Prefect was
down, `unknown_bucket` before the bucket was wired); it is acked in the dead-letter queue only
after the broker confirmed the new publish, so nothing is lost.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Callable
from typing import Any

import pika
from pika.adapters.blocking_connection import BlockingChannel
from pydantic import BaseModel

from bridge.amqp import confirmed_channel
from bridge.consumer import REASON_KIND_HEADER, ROUTING_KEY_HEADER
from bridge.topology import REASON_HEADER
from service.settings import RabbitMQSettings

SOURCE_QUEUE_HEADER = "x-cvmfs-queue"
DEAD_LETTERED_AT_HEADER = "x-cvmfs-dead-lettered-at"


class DeadLetter(BaseModel):
    """One message of the dead-letter queue, as an operator needs to judge it."""

    reason: str
    # A fixed word (`invalid`, `unsafe_key`, `unknown_bucket`, `owner_mismatch`,
    # `run_refused`, `retries_exhausted`), or `broker:<why>` when RabbitMQ itself dead-lettered
    # it (a quorum queue's delivery limit), `sync_refused` for a sync's refusal of a bucket key
    # (routing key `sync.refused.<fqrn>`, also in `GET /repositories/<fqrn>`'s refusals).
    kind: str | None
    # The bridge queue it came from and the routing key it had on the events exchange; a
    # message without them (a flow's refusal) cannot be replayed.
    source_queue: str | None
    routing_key: str | None
    dead_letter_routing_key: str
    dead_lettered_at: str | None
    message_id: str | None
    content_type: str | None
    body: bytes

    @property
    def replayable(self) -> bool:
        return self.routing_key is not None


class Sorted(BaseModel):
    """What one pass over the queue did: `taken` were replayed or dropped, `kept` stay."""

    taken: list[DeadLetter]
    kept: list[DeadLetter]


def _text(value: Any) -> str | None:
    if value is None:
        return None
    if isinstance(value, bytes):
        return value.decode("utf-8", "replace")
    return str(value)


def dead_letter_of(routing_key: str, properties: pika.BasicProperties, body: bytes) -> DeadLetter:
    headers: dict[str, Any] = dict(properties.headers or {})
    reason = _text(headers.get(REASON_HEADER))
    kind = _text(headers.get(REASON_KIND_HEADER))
    source_queue = _text(headers.get(SOURCE_QUEUE_HEADER))
    original_key = _text(headers.get(ROUTING_KEY_HEADER))
    deaths = headers.get("x-death") or []
    if reason is None and deaths:
        # Dead-lettered by the broker, not by the bridge: x-death says from where and why.
        death = dict(deaths[0])
        why = _text(death.get("reason")) or "unknown"
        source_queue = _text(death.get("queue"))
        keys = death.get("routing-keys") or []
        original_key = _text(keys[0]) if keys else None
        kind = f"broker:{why}"
        reason = f"RabbitMQ dead-lettered it from {source_queue} ({why})"
    if kind is None and routing_key.startswith("sync.refused."):
        kind = "sync_refused"
    return DeadLetter(
        reason=reason or "no reason recorded",
        kind=kind,
        source_queue=source_queue,
        routing_key=original_key,
        dead_letter_routing_key=routing_key,
        dead_lettered_at=_text(headers.get(DEAD_LETTERED_AT_HEADER)),
        message_id=properties.message_id,
        content_type=properties.content_type,
        body=body,
    )


def message_count(mq: RabbitMQSettings, queue: str) -> int:
    with confirmed_channel(mq) as channel:
        return int(channel.queue_declare(queue, passive=True).method.message_count)


# Takes one message: True once it is safely elsewhere (replayed, or judged for dropping), so
# the pass acks it; False leaves it in the queue.
Take = Callable[[BlockingChannel, pika.BasicProperties, bytes, DeadLetter], bool]


def _sort_out(mq: RabbitMQSettings, queue: str, limit: int, take: Take) -> Sorted:
    """Get up to `limit` messages without acknowledging them, ack those `take` takes, and give
    every other one back (one nack with requeue) before returning."""
    taken: list[DeadLetter] = []
    kept: list[DeadLetter] = []
    with confirmed_channel(mq) as channel:
        while len(taken) + len(kept) < limit:
            method, properties, body = channel.basic_get(queue, auto_ack=False)
            if method is None:
                break
            letter = dead_letter_of(method.routing_key, properties, body)
            if take(channel, properties, body, letter):
                channel.basic_ack(method.delivery_tag)
                taken.append(letter)
            else:
                kept.append(letter)
        if kept:  # still unacked on this channel: give them all back in one go
            channel.basic_nack(delivery_tag=0, multiple=True, requeue=True)
    return Sorted(taken=taken, kept=kept)


def peek_dead_letters(mq: RabbitMQSettings, queue: str, limit: int) -> list[DeadLetter]:
    """The first `limit` messages of `queue`, all given back (nack with requeue) at the end.

    Every look counts as a delivery. The dead-letter queue is declared without a delivery
    limit (bridge/topology.py), so on RabbitMQ 3.x (Debian 12 ships 3.10) reading it any number
    of times drops nothing; RabbitMQ 4 gives quorum queues a default limit of 20, so there give
    the queue a policy with `delivery-limit` -1 before listing it often.
    """
    return _sort_out(mq, queue, limit, lambda *_: False).kept


def replay_dead_letters(
    mq: RabbitMQSettings, queue: str, limit: int, kind: str | None = None
) -> Sorted:
    """Move up to `limit` replayable messages (of `kind`, if given) back onto the events
    exchange with their original routing key; the rest stay where they are.

    Each replayed message loses the dead-letter headers (it starts again with no attempts)
    and keeps its body, content type and message id. The AMQP `user_id` is not copied: the
    broker only accepts the connection's own user there, so a legacy request of a trusted
    producer comes back refused (untrusted) and has to be sent again by that producer.
    """

    def republish(
        channel: BlockingChannel, properties: pika.BasicProperties, body: bytes, letter: DeadLetter
    ) -> bool:
        if letter.routing_key is None or (kind is not None and letter.kind != kind):
            return False
        headers = {
            k: v
            for k, v in (properties.headers or {}).items()
            if not k.startswith(("x-cvmfs-", "x-death", "x-first-death-", "x-last-death-"))
        }
        headers["x-cvmfs-replayed-at"] = dt.datetime.now(dt.UTC).isoformat()
        channel.basic_publish(
            mq.events_exchange,
            letter.routing_key,
            body,
            pika.BasicProperties(
                delivery_mode=pika.DeliveryMode.Persistent,
                content_type=properties.content_type,
                message_id=properties.message_id,
                correlation_id=properties.correlation_id,
                app_id=properties.app_id,
                headers=headers,
            ),
            mandatory=True,
        )  # confirmed (confirm_delivery): raises if the broker did not take it
        return True

    return _sort_out(mq, queue, limit, republish)


def drop_dead_letters(mq: RabbitMQSettings, queue: str, limit: int, kind: str) -> Sorted:
    """Remove up to `limit` messages of `kind` (judged: garbage, a user's mistake); the rest
    stay."""
    return _sort_out(
        mq, queue, limit, lambda _channel, _properties, _body, letter: letter.kind == kind
    )


def describe(letter: DeadLetter, body_chars: int = 300) -> str:
    """A few lines per message: when, from where, why, and the start of the body."""
    text = letter.body.decode("utf-8", "replace")
    excerpt = text if len(text) <= body_chars else text[:body_chars] + "..."
    origin = (
        f"from {letter.source_queue} (routing key {letter.routing_key})"
        if letter.routing_key is not None
        else f"routing key {letter.dead_letter_routing_key}"
    )
    return (
        f"{letter.dead_lettered_at or '(time not recorded)'}  {letter.kind or '-'}  "
        f"{origin}\n"
        f"  reason: {letter.reason}\n"
        f"  message id: {letter.message_id or '-'}  body ({len(letter.body)} bytes): "
        f"{excerpt!r}"
    )
