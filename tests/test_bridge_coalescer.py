"""Coalescing of S3 events per repository and the stability of batch idempotency keys."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta

from bridge.coalescer import Coalescer, InboundMessage
from bridge.repositories import RepositoryTarget
from bridge.s3_events import ObjectEvent, ObjectEventKind, parse_s3_notification
from tests.shared_paths import EVENTS

FIXTURE = EVENTS / "ceph-rgw-amqp-messages.jsonl"
REPO_A = RepositoryTarget(fqrn="a.sw.example.org", bucket="bucket-a", owner_id="alice")
REPO_B = RepositoryTarget(fqrn="b.sw.example.org", bucket="bucket-b", owner_id="bob")
T0 = datetime(2026, 11, 28, 3, 0, tzinfo=UTC)


def event(key: str, kind: str = "created", seq: str = "01", at: int = 0) -> ObjectEvent:
    return ObjectEvent(
        source="ceph:s3",
        bucket="bucket-a",
        key=f"cvmfs/{key}",
        kind=ObjectEventKind(kind),
        event_name="ObjectCreated:Put" if kind == "created" else "ObjectRemoved:Delete",
        event_time=T0 + timedelta(seconds=at),
        etag="e",
        sequencer=seq,
        owner_id="alice",
    )


def message(tag: int) -> InboundMessage:
    return InboundMessage(
        queue="q", delivery_tag=tag, routing_key="s3.a", body=b"{}", headers={}, message_id=None
    )


def batch_key(events: list[ObjectEvent]) -> str:
    coalescer = Coalescer(window_s=1.0, max_events=100)
    for tag, item in enumerate(events):
        coalescer.add(REPO_A, message(tag), [item], now=0.0)
    [batch] = coalescer.due(now=1.0)
    return batch.idempotency_key


def test_batches_per_repository_after_the_window() -> None:
    coalescer = Coalescer(window_s=1.0, max_events=100)
    coalescer.add(REPO_A, message(1), [event("x")], now=0.0)
    coalescer.add(REPO_B, message(2), [event("y")], now=0.5)
    coalescer.add(REPO_A, message(3), [event("z")], now=0.9)
    assert coalescer.due(now=0.99) == []
    [a] = coalescer.due(now=1.0)
    assert a.target == REPO_A
    assert [m.delivery_tag for m in a.messages] == [1, 3]
    assert a.keys == ["cvmfs/x", "cvmfs/z"]
    [b] = coalescer.due(now=1.5)
    assert b.target == REPO_B
    assert len(coalescer) == 0


def test_a_full_batch_is_due_before_its_window() -> None:
    coalescer = Coalescer(window_s=60.0, max_events=3)
    for tag in range(3):
        coalescer.add(REPO_A, message(tag), [event(f"k{tag}")], now=0.0)
    [batch] = coalescer.due(now=0.0)
    assert len(batch.events) == 3


def test_key_ignores_order_and_duplicates() -> None:
    first, second = event("x", seq="01"), event("x", "removed", seq="02", at=1)
    assert batch_key([first, second]) == batch_key([second, first, second, first])


def test_key_changes_with_a_later_event_of_the_same_content() -> None:
    # Delete then re-upload of identical bytes: same key and ETag, but a new event.
    assert batch_key([event("x", seq="01", at=0)]) != batch_key([event("x", seq="01", at=5)])
    assert batch_key([event("x")]) != batch_key([event("x", "removed")])
    assert batch_key([event("x")]) != batch_key([event("y")])


def test_key_of_a_real_rgw_notification_survives_a_redelivery() -> None:
    bodies = FIXTURE.read_text().splitlines()
    parsed = [parse_s3_notification(body)[0] for body in bodies]
    redelivered = [parse_s3_notification(json.loads(json.dumps(body)))[0] for body in bodies]
    assert batch_key(parsed) == batch_key(list(reversed(redelivered)))
    assert batch_key(parsed).startswith("sync-a.sw.example.org-")
