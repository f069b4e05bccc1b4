"""The long-running RabbitMQ consumer: validates messages and turns them into flow runs.

Bucket events are coalesced per repository into one `sync` run per batch; registry events and
repository requests start one run each. Nothing ever blocks a queue:

* a message that can never be processed (malformed, forged, unknown bucket, wrong owner, key
  outside `cvmfs/`, run refused by Prefect) is published to the dead-letter exchange with
  the reason in the `x-cvmfs-reason` header (publisher confirms), then acked; a key of the
  repository's bucket that can never be a path (`..`, an empty component) goes to the sync,
  which refuses it where the user sees it (and dead-letters it as `sync.refused.<fqrn>`);
* a transient failure (Prefect unreachable, 5xx) sends the message to its queue's `.retry`
  queue with a per-message TTL (exponential backoff); the broker puts it back in the work
  queue when the TTL expires; after `max_attempts` it is dead-lettered with the last error;
* a message is acked only once its flow run exists (or it is safely in the retry or
  dead-letter queue), so a crash, a lost connection or a broker restart only causes
  redelivery, never loss. Open batches are not acked; they come back after a reconnect.
* after a lost broker connection, one `reconcile` run of every repository is started shortly
  after reconnecting (bridge/catch_up.py): it repairs what RGW could not deliver meanwhile.

Duplicates and ordering with several bridge copies (competing consumers):

* Events only say "this key changed". The sync flow never replays them: it reads the bucket's
  current state of each key it is given (events arrive duplicated, late and out of order) and
  makes the repository equal to it. Two runs for the same key therefore converge on the same
  result, in whatever order they execute.
* Each repository has a publish lock (a Prefect concurrency limit taken by the flow), so the
  runs of one repository, from whichever bridge copy, publish one after another, and the
  last to publish has read the newest state of the keys it touched.
* A batch's idempotency key is a hash of its distinct events (bucket, key, kind, sequencer,
  ETag, version, event time), so a batch redelivered after a crash maps to the run that
  already exists (Prefect returns it for the same key) instead of a second run, and a
  duplicate notification inside a batch changes nothing.
* When one batch's messages were split across two copies, each copy starts a run for its
  part; both read the truth under the lock, so the work is not done twice in effect, and
  nothing is reordered: no run can publish an older state than the bucket had when it ran.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from datetime import UTC, datetime
from functools import partial
from typing import Any

import pika
import pika.exceptions
from pika.adapters.blocking_connection import BlockingChannel
from pika.spec import Basic, BasicProperties

from bridge.amqp import connection_parameters
from bridge.catch_up import CatchUpAfterReconnect
from bridge.coalescer import Coalescer, InboundMessage, SyncBatch
from bridge.config import BridgeConfig
from bridge.errors import PermanentStartError, RejectedMessage
from bridge.registry_events import parse_image_event_message
from bridge.repositories import RepositoryLookup
from bridge.run_requests import (
    FlowStarter,
    RequestParameters,
    SyncParameters,
    UnpackParameters,
    message_idempotency_key,
    repository_request_parameters,
    sync_parameters,
    unpack_parameters,
)
from bridge.s3_events import parse_s3_notification
from bridge.topology import REASON_HEADER, declare_topology
from metrics.bridge import BridgeMetrics
from service.settings import RabbitMQSettings

log = logging.getLogger("cvmfs.bridge")

ATTEMPTS_HEADER = "x-cvmfs-attempts"
REASON_KIND_HEADER = "x-cvmfs-reason-kind"
ROUTING_KEY_HEADER = "x-cvmfs-routing-key"
# Broker-added headers that describe a past hop; copying them onto a new publish would lie.
_HOP_HEADERS = ("x-death", "x-first-death-", "x-last-death-", "x-delivery-count")
_MAX_HEADER_TEXT = 1000


def _clean_headers(headers: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in headers.items() if not k.startswith(_HOP_HEADERS)}


class BridgeConsumer:
    """Consumes the bridge's three queues until `request_stop()`; reconnects on its own."""

    tick_s = 0.1
    initial_reconnect_delay_s = 0.5

    def __init__(
        self,
        mq: RabbitMQSettings,
        config: BridgeConfig,
        lookup: RepositoryLookup,
        starter: FlowStarter,
        *,
        sync_params: SyncParameters = sync_parameters,
        unpack_params: UnpackParameters = unpack_parameters,
        request_params: RequestParameters = repository_request_parameters,
        clock: Callable[[], float] = time.monotonic,
        metrics: BridgeMetrics | None = None,
    ) -> None:
        self.mq = mq
        self.metrics = metrics or BridgeMetrics()
        self.config = config
        self.lookup = lookup
        self.starter = starter
        self.sync_params = sync_params
        self.unpack_params = unpack_params
        self.request_params = request_params
        self.clock = clock
        self._stop = False
        self._reconnect_delay_s = self.initial_reconnect_delay_s
        self._broker_lost = False
        self._catch_up = CatchUpAfterReconnect(
            config.reconcile_deployment, config.reconcile_after_reconnect_s, clock
        )
        self._coalescer = Coalescer(
            config.coalesce_window_s, config.coalesce_max_events, quiet_s=config.coalesce_quiet_s
        )
        self._inbox: list[InboundMessage] = []
        self._connection: pika.BlockingConnection | None = None
        self._channel: BlockingChannel | None = None
        self._handlers: dict[str, Callable[[InboundMessage], None]] = {
            config.s3.queue: self._handle_s3,
            config.registry.queue: self._handle_registry,
            config.repository_requests.queue: self._handle_repository_request,
        }

    # --- lifecycle ------------------------------------------------------------------------

    def request_stop(self) -> None:
        """Stop after the message or batch in hand; safe to call from a signal handler."""
        self._stop = True

    def run(self) -> None:
        """Consume until stopped, reconnecting with backoff when the broker goes away."""
        while not self._stop:
            try:
                self._consume()
                return
            except pika.exceptions.AMQPError as error:
                self._broker_lost = True
                self.metrics.broker_reconnects.inc()
                log.warning(
                    "event=broker-lost error=%r unacked=%d retry_in_s=%.1f",
                    error,
                    len(self._coalescer) + len(self._inbox),
                    self._reconnect_delay_s,
                )
            finally:
                self._forget_unacked()
                self._close()
            self._sleep(self._reconnect_delay_s)
            self._reconnect_delay_s = min(
                self._reconnect_delay_s * 2, self.config.reconnect_max_delay_s
            )

    def _consume(self) -> None:
        self._connection = pika.BlockingConnection(connection_parameters(self.mq))
        channel = self._channel = self._connection.channel()
        channel.confirm_delivery()
        channel.basic_qos(prefetch_count=self.config.prefetch_count)
        declare_topology(channel, self.mq, self.config)
        for queue in self._handlers:
            channel.basic_consume(queue, partial(self._on_delivery, queue))
        self._reconnect_delay_s = self.initial_reconnect_delay_s  # a healthy connection again
        if self._broker_lost:
            self._broker_lost = False
            self._catch_up.reconnected()
        log.info("event=consuming queues=%s", ",".join(self._handlers))
        while not self._stop:
            self._connection.process_data_events(time_limit=self.tick_s)
            self._drain_inbox()
            for batch in self._coalescer.due(self.clock()):
                self._start_sync(batch)
            self._catch_up.tick(self.starter)
            self.metrics.open_messages.set(len(self))
        log.info("event=stopping open_messages=%d (left unacked for redelivery)", len(self))

    def _forget_unacked(self) -> None:
        # Unacked messages go back to the queue when the channel closes: forget our copies.
        self._coalescer.drop_all()
        self._inbox.clear()

    def _close(self) -> None:
        connection, self._connection, self._channel = self._connection, None, None
        if connection is not None and connection.is_open:
            try:
                connection.close()
            except pika.exceptions.AMQPError as error:
                log.info("event=close-failed error=%r", error)

    def _sleep(self, seconds: float) -> None:
        deadline = time.monotonic() + seconds
        while not self._stop and time.monotonic() < deadline:
            time.sleep(min(0.1, seconds))

    def __len__(self) -> int:
        return len(self._coalescer) + len(self._inbox)

    # --- deliveries -----------------------------------------------------------------------

    def _on_delivery(
        self,
        queue: str,
        _channel: BlockingChannel,
        method: Basic.Deliver,
        properties: BasicProperties,
        body: bytes,
    ) -> None:
        # Only record it: handling (which publishes and acks) runs outside pika's dispatch.
        self.metrics.messages_received.labels(queue).inc()
        headers = dict(properties.headers or {})
        self._inbox.append(
            InboundMessage(
                queue=queue,
                delivery_tag=method.delivery_tag,
                routing_key=str(headers.get(ROUTING_KEY_HEADER, method.routing_key)),
                body=body,
                headers=headers,
                content_type=properties.content_type,
                message_id=properties.message_id,
                correlation_id=properties.correlation_id,
                user_id=properties.user_id,
                app_id=properties.app_id,
            )
        )

    def _drain_inbox(self) -> None:
        while self._inbox and not self._stop:
            message = self._inbox.pop(0)
            try:
                self._handlers[message.queue](message)
            except RejectedMessage as refused:
                self._dead_letter(message, refused.reason, refused.kind)
            except pika.exceptions.AMQPError:
                raise  # the connection is gone: reconnect, the broker redelivers
            except Exception as error:  # a dependency failed (issuer, registry): retry later
                log.warning("event=handler-failed queue=%s error=%r", message.queue, error)
                self._retry_or_dead_letter(message, error)

    def _handle_s3(self, message: InboundMessage) -> None:
        events = parse_s3_notification(message.body)
        self.metrics.events_received.inc(len(events))
        if not events:
            self._ack(message)
            return
        buckets = sorted({event.bucket for event in events})
        if len(buckets) != 1:
            raise RejectedMessage(f"one notification names several buckets: {buckets}")
        target = self.lookup.repository_for_bucket(buckets[0])
        if target is None:
            raise RejectedMessage(f"bucket {buckets[0]!r} feeds no repository", "unknown_bucket")
        for event in events:
            if event.owner_id is None:
                raise RejectedMessage(
                    f"event for bucket {event.bucket!r} carries no bucket owner identity"
                )
            if event.owner_id != target.owner_id:
                raise RejectedMessage(
                    f"bucket {event.bucket!r} is owned by {event.owner_id!r} in the event, but "
                    f"repository {target.fqrn} belongs to {target.owner_id!r}",
                    "owner_mismatch",
                )
        for event in events:
            if event.unsafe_reason is not None:
                log.info(
                    "event=unsafe-key-to-sync repo=%s key=%r reason=%r",
                    target.fqrn,
                    event.key,
                    event.unsafe_reason,
                )
        self._coalescer.add(target, message, events, self.clock())
        if len(self._coalescer) >= self.config.prefetch_count:
            # Every prefetched message sits in an open batch: start them rather than stall.
            for batch in self._coalescer.due(float("inf")):
                self._start_sync(batch)

    def _handle_registry(self, message: InboundMessage) -> None:
        event = parse_image_event_message(message.body)
        self._start(
            [message],
            self.config.unpack_deployment,
            self.unpack_params(event),
            f"unpack-{event.message_id()}",
        )

    def _handle_repository_request(self, message: InboundMessage) -> None:
        parameters = self.request_params(message)
        key = message_idempotency_key("provision", message)
        self._start([message], self.config.provision_deployment, parameters, key)

    def _start_sync(self, batch: SyncBatch) -> None:
        log.info(
            "event=batch repo=%s messages=%d events=%d keys=%d key=%s",
            batch.target.fqrn,
            len(batch.messages),
            len(batch.events),
            len(batch.keys),
            batch.idempotency_key,
        )
        self.metrics.batch_events.observe(len(batch.events))
        self.metrics.events_coalesced.inc(len(batch.events) - 1)
        self._start(
            batch.messages,
            self.config.sync_deployment,
            self.sync_params(batch),
            batch.idempotency_key,
        )

    def _start(
        self,
        messages: list[InboundMessage],
        deployment: str,
        parameters: dict[str, Any],
        idempotency_key: str,
    ) -> None:
        try:
            run_id = self.starter(deployment, parameters, idempotency_key)
        except PermanentStartError as refused:
            for message in messages:
                self._dead_letter(
                    message, f"flow run for {deployment} refused: {refused}", "run_refused"
                )
            return
        except Exception as error:  # anything else may pass: bounded delayed retries
            log.warning("event=start-failed deployment=%s error=%r", deployment, error)
            for message in messages:
                self._retry_or_dead_letter(message, error)
            return
        log.info(
            "event=run-started deployment=%s run=%s key=%s", deployment, run_id, idempotency_key
        )
        self.metrics.runs_started.labels(deployment).inc()
        for message in messages:
            self._ack(message)

    # --- outcomes -------------------------------------------------------------------------

    def _ack(self, message: InboundMessage) -> None:
        assert self._channel is not None
        self._channel.basic_ack(message.delivery_tag)

    def _publish(
        self,
        exchange: str,
        routing_key: str,
        message: InboundMessage,
        headers: dict[str, Any],
        expiration_ms: int | None = None,
    ) -> None:
        assert self._channel is not None
        self._channel.basic_publish(
            exchange=exchange,
            routing_key=routing_key,
            body=message.body,
            properties=BasicProperties(
                delivery_mode=pika.DeliveryMode.Persistent,
                content_type=message.content_type,
                message_id=message.message_id,
                headers=headers,
                expiration=None if expiration_ms is None else str(expiration_ms),
            ),
            mandatory=True,
        )

    def _dead_letter(self, message: InboundMessage, reason: str, kind: str) -> None:
        log.warning(
            "event=dead-letter queue=%s routing_key=%s kind=%s reason=%r",
            message.queue,
            message.routing_key,
            kind,
            reason,
        )
        headers = _clean_headers(message.headers) | {
            REASON_HEADER: reason[:_MAX_HEADER_TEXT],
            REASON_KIND_HEADER: kind,
            "x-cvmfs-queue": message.queue,
            ROUTING_KEY_HEADER: message.routing_key,
            "x-cvmfs-dead-lettered-at": datetime.now(UTC).isoformat(),
        }
        self._publish(self.mq.dead_letter_exchange, message.queue, message, headers)
        self._ack(message)
        self.metrics.dead_lettered.labels(message.queue, kind).inc()

    def _retry_or_dead_letter(self, message: InboundMessage, error: BaseException) -> None:
        attempts = message.attempts + 1
        if attempts >= self.config.max_attempts:
            self._dead_letter(
                message, f"still failing after {attempts} attempts: {error!r}", "retries_exhausted"
            )
            return
        delay_s = self.config.retry_delay_s(attempts)
        headers = _clean_headers(message.headers) | {
            ATTEMPTS_HEADER: attempts,
            ROUTING_KEY_HEADER: message.routing_key,
            "x-cvmfs-last-error": repr(error)[:_MAX_HEADER_TEXT],
        }
        retry_queue = f"{message.queue}.retry"
        log.info("event=retry queue=%s attempt=%d delay_s=%.1f", message.queue, attempts, delay_s)
        self._publish("", retry_queue, message, headers, expiration_ms=int(delay_s * 1000))
        self._ack(message)
        self.metrics.retried.labels(message.queue).inc()
