"""Groups S3 events per repository over a short window into batches, one flow run each.

Pure bookkeeping with an injected clock: no broker, no Prefect; the consumer feeds and drains it.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from bridge.repositories import RepositoryTarget
from bridge.s3_events import ObjectEvent


@dataclass(frozen=True)
class InboundMessage:
    """A delivered AMQP message the consumer still has to ack, kept whole for retries."""

    queue: str
    delivery_tag: int
    routing_key: str
    body: bytes
    headers: dict[str, Any]
    content_type: str | None = None
    message_id: str | None = None
    correlation_id: str | None = None
    user_id: str | None = None  # verified by RabbitMQ against the publishing connection's user
    app_id: str | None = None

    @property
    def attempts(self) -> int:
        """How many times the bridge already failed to process this message (transiently)."""
        value = self.headers.get("x-cvmfs-attempts", 0)
        return value if isinstance(value, int) else 0


@dataclass
class SyncBatch:
    """Events of one repository, coalesced; `idempotency_key` names the flow run."""

    target: RepositoryTarget
    opened_at: float
    last_added_at: float = 0.0  # when the newest event joined (set by Coalescer.add)
    messages: list[InboundMessage] = field(default_factory=list)
    events: list[ObjectEvent] = field(default_factory=list)

    @property
    def keys(self) -> list[str]:
        """The changed object keys, sorted, each once: the sync flow reads their current state."""
        return sorted({event.key for event in self.events})

    @property
    def earliest_event_times(self) -> dict[str, datetime]:
        """When S3 first reported a change of each key in this batch (its eventTime)."""
        earliest: dict[str, datetime] = {}
        for event in self.events:
            seen = earliest.get(event.key)
            if seen is None or event.event_time < seen:
                earliest[event.key] = event.event_time
        return earliest

    @property
    def idempotency_key(self) -> str:
        """Same events (in any order, duplicates included) give the same key.

        Event time and sequencer are part of an event's identity, so a later change of the same
        key with the same content (delete, then re-upload) is a new batch, while a redelivery
        of the same notification is not.
        """
        identities = sorted(
            {
                (
                    e.bucket,
                    e.key,
                    e.kind.value,
                    e.sequencer or "",
                    e.etag or "",
                    e.version_id or "",
                    e.event_time.isoformat(),
                )
                for e in self.events
            }
        )
        digest = hashlib.sha256(json.dumps([self.target.fqrn, identities]).encode()).hexdigest()
        return f"sync-{self.target.fqrn}-{digest[:32]}"


class Coalescer:
    """Open batches per repository; a batch is due when its window elapsed or it is full.

    With `quiet_s`, a batch is also due once no event came for it for that long: a lone
    upload goes out after `quiet_s` instead of the whole window, while a steady stream of
    events (a burst) still fills batches of up to `window_s` or `max_events`.
    """

    def __init__(self, window_s: float, max_events: int, quiet_s: float | None = None) -> None:
        self.window_s = window_s
        self.max_events = max_events
        self.quiet_s = quiet_s
        self._open: dict[str, SyncBatch] = {}

    def add(
        self,
        target: RepositoryTarget,
        message: InboundMessage,
        events: list[ObjectEvent],
        now: float,
    ) -> None:
        batch = self._open.get(target.fqrn)
        if batch is None:
            batch = self._open[target.fqrn] = SyncBatch(target=target, opened_at=now)
        batch.last_added_at = now
        batch.messages.append(message)
        batch.events.extend(events)

    def _is_due(self, batch: SyncBatch, now: float) -> bool:
        if now - batch.opened_at >= self.window_s or len(batch.events) >= self.max_events:
            return True
        quiet_since = max(batch.opened_at, batch.last_added_at)
        return self.quiet_s is not None and now - quiet_since >= self.quiet_s

    def due(self, now: float) -> list[SyncBatch]:
        """Remove and return the batches to start now, oldest first."""
        ready = [fqrn for fqrn, batch in self._open.items() if self._is_due(batch, now)]
        return [self._open.pop(fqrn) for fqrn in ready]

    def drop_all(self) -> list[SyncBatch]:
        """Forget every open batch (their messages go back to the broker unacked)."""
        batches = list(self._open.values())
        self._open.clear()
        return batches

    def __len__(self) -> int:
        return sum(len(batch.messages) for batch in self._open.values())
