"""The bridge consumer on the real test RabbitMQ: routing, coalescing, dead letters, retries."""

from __future__ import annotations

import json

import pika
import pytest
from click.testing import CliRunner

from bridge.config import BridgeConfig
from bridge.consumer import BridgeConsumer
from bridge.dead_letters import dead_letter_of, peek_dead_letters
from bridge.errors import PermanentStartError, TransientStartError
from bridge.registry_events import image_event_message, parse_registry_webhook
from metrics.bridge import BridgeMetrics
from service.cli import app
from service.settings import Settings
from tests.conftest import settings_env
from tests.shared_paths import EVENTS
from tests.test_bridge_support import (
    LOOKUP,
    REPO_A,
    REPO_B,
    Isolated,
    RecordingStarter,
    declare,
    drain,
    isolated,
    publish,
    ready_count,
    rgw_body,
    running,
    wait_for,
)

pytestmark = pytest.mark.stack

FIXTURES = EVENTS


def consumer_for(iso: Isolated, starter: RecordingStarter) -> BridgeConsumer:
    return BridgeConsumer(iso.mq, iso.config, LOOKUP, starter)


def reasons(iso: Isolated) -> list[str]:
    return [
        str(headers["x-cvmfs-reason"]) for headers, _ in drain(iso.mq, iso.config.dead_letter_queue)
    ]


def test_poison_messages_are_dead_lettered_with_their_reason_and_block_nothing(
    rabbitmq: Settings,
) -> None:
    iso = isolated(rabbitmq)
    declare(iso)
    good = rgw_body(REPO_A.bucket, "cvmfs/good/file.txt")
    poison = [
        b"{this is not json",
        rgw_body(REPO_A.bucket, "cvmfs/x").replace(b'"size": 12', b'"size": "12"'),
        rgw_body("stranger-bucket", "cvmfs/x"),
        rgw_body(REPO_A.bucket, "cvmfs/x", owner="mallory"),
    ]
    # Keys of the repository's own bucket that can never be paths go to the sync, which
    # refuses them where the user sees it (tests/test_sync_flow.py), not to the operators.
    unsafe = [
        rgw_body(REPO_A.bucket, "cvmfs/../../etc/passwd"),
        rgw_body(REPO_A.bucket, "cvmfs//etc/passwd"),
    ]
    # With prefetch 1 the old service stalled behind the first bad message; here it must not.
    publish(iso.mq, iso.s3_key, [*poison, *unsafe, good])
    starter = RecordingStarter()
    metrics = BridgeMetrics()
    consumer = BridgeConsumer(iso.mq, iso.config, LOOKUP, starter, metrics=metrics)
    with running(consumer):
        wait_for(lambda: len(starter.snapshot()) == 1, "the good event's flow run")
        wait_for(
            lambda: ready_count(iso.mq, iso.config.dead_letter_queue) == len(poison),
            "every poison message in the dead-letter queue",
        )
    [call] = starter.calls
    assert call.deployment == "sync/sync"
    keys = ["cvmfs/../../etc/passwd", "cvmfs//etc/passwd", "cvmfs/good/file.txt"]
    assert call.parameters["req"] == {
        "repo": REPO_A.fqrn,
        "bucket": REPO_A.bucket,
        "changed_keys": keys,
        "event_times": {key: "2026-11-28T03:00:00+00:00" for key in keys},
    }
    dead = drain(iso.mq, iso.config.dead_letter_queue)
    assert [body for _, body in dead] == poison  # bodies kept verbatim, in order
    found = [str(headers["x-cvmfs-reason"]) for headers, _ in dead]
    assert "not valid JSON" in found[0]
    assert "s3.object.size" in found[1]
    assert "feeds no repository" in found[2]
    assert "'mallory'" in found[3] and REPO_A.fqrn in found[3]
    assert all(headers["x-cvmfs-queue"] == iso.config.s3.queue for headers, _ in dead)
    assert all(headers["x-cvmfs-routing-key"] == iso.s3_key for headers, _ in dead)
    assert ready_count(iso.mq, iso.config.s3.queue) == 0
    kinds = [headers["x-cvmfs-reason-kind"] for headers, _ in dead]
    assert kinds == [
        "invalid",
        "invalid",
        "unknown_bucket",
        "owner_mismatch",
    ]
    queue = iso.config.s3.queue
    count = metrics.registry.get_sample_value
    assert count("cvmfs_bridge_messages_received_total", {"queue": queue}) == 7
    # Records of the notifications that parsed: the good one, the two unsafe keys, the
    # stranger's and mallory's.
    assert count("cvmfs_bridge_s3_events_received_total") == 5
    for kind, expected in [("invalid", 2), ("unknown_bucket", 1)]:
        labels = {"queue": queue, "reason": kind}
        assert count("cvmfs_bridge_dead_lettered_total", labels) == expected, kind
    assert count("cvmfs_bridge_flow_runs_started_total", {"deployment": "sync/sync"}) == 1
    assert count("cvmfs_bridge_sync_batch_events_count") == 1


def test_duplicates_and_out_of_order_events_make_one_run_per_repository(
    rabbitmq: Settings,
) -> None:
    iso = isolated(rabbitmq)
    declare(iso)
    put_x = rgw_body(REPO_A.bucket, "cvmfs/x", sequencer="01", at_s=1)
    delete_x = rgw_body(REPO_A.bucket, "cvmfs/x", kind="removed", sequencer="02", at_s=2)
    put_y = rgw_body(REPO_A.bucket, "cvmfs/dir/y z.txt", sequencer="03", at_s=3)
    put_b = rgw_body(REPO_B.bucket, "cvmfs/b", sequencer="01", at_s=1)
    # Out of order (delete before put) and duplicated, as S3 notifications may arrive.
    publish(iso.mq, iso.s3_key, [delete_x, put_y, put_b, put_x, put_y, delete_x, put_b])
    starter = RecordingStarter()
    with running(consumer_for(iso, starter)):
        wait_for(lambda: len(starter.snapshot()) == 2, "one run per repository")
        wait_for(lambda: ready_count(iso.mq, iso.config.s3.queue) == 0, "an empty queue")
    by_repo = {c.parameters["req"]["repo"]: c.parameters["req"] for c in starter.calls}
    assert by_repo[REPO_A.fqrn]["changed_keys"] == ["cvmfs/dir/y z.txt", "cvmfs/x"]
    assert by_repo[REPO_B.fqrn]["changed_keys"] == ["cvmfs/b"]
    assert ready_count(iso.mq, iso.config.dead_letter_queue) == 0

    # The same events again, in another order and without the duplicates: the same keys.
    again = isolated(rabbitmq)
    declare(again)
    publish(again.mq, again.s3_key, [put_b, put_x, delete_x, put_y])
    second = RecordingStarter()
    with running(consumer_for(again, second)):
        wait_for(lambda: len(second.snapshot()) == 2, "one run per repository, again")
    assert {c.idempotency_key for c in second.calls} == {c.idempotency_key for c in starter.calls}


def test_transient_start_failures_are_retried_with_the_same_key(rabbitmq: Settings) -> None:
    iso = isolated(rabbitmq)
    declare(iso)
    publish(iso.mq, iso.s3_key, [rgw_body(REPO_A.bucket, "cvmfs/x")])
    starter = RecordingStarter(
        failures=[TransientStartError("Prefect down"), ConnectionError("refused")]
    )
    with running(consumer_for(iso, starter)):
        wait_for(lambda: len(starter.snapshot()) == 1, "the run after two failures")
        wait_for(lambda: ready_count(iso.mq, iso.config.s3.queue) == 0, "an empty queue")
    assert starter.attempts == 3
    assert ready_count(iso.mq, iso.config.dead_letter_queue) == 0
    assert ready_count(iso.mq, iso.config.s3.retry_queue) == 0


def test_retries_are_bounded_then_dead_lettered(rabbitmq: Settings) -> None:
    iso = isolated(rabbitmq, max_attempts=3)
    declare(iso)
    body = rgw_body(REPO_A.bucket, "cvmfs/x")
    publish(iso.mq, iso.s3_key, [body])
    starter = RecordingStarter(failures=[TransientStartError(f"down {i}") for i in range(10)])
    dlq = iso.config.dead_letter_queue
    with running(consumer_for(iso, starter)):
        wait_for(lambda: ready_count(iso.mq, dlq) == 1, "the dead letter")
    assert starter.attempts == 3 and starter.calls == []
    [letter] = peek_dead_letters(iso.mq, dlq, limit=10)
    assert letter.body == body and letter.kind == "retries_exhausted"
    assert "still failing after 3 attempts" in letter.reason and "down 2" in letter.reason
    assert (letter.source_queue, letter.routing_key) == (iso.config.s3.queue, iso.s3_key)

    # What an operator runs: the listing says why, and looking removes nothing.
    env = settings_env(rabbitmq.model_copy(update={"rabbitmq": iso.mq}))
    listed = CliRunner().invoke(app, ["dead-letters", "--queue", dlq], env=env)
    assert listed.exit_code == 0, listed.output
    assert "retries_exhausted" in listed.output and "down 2" in listed.output
    assert f"1 message(s) in {dlq}" in listed.output and iso.s3_key in listed.output
    assert ready_count(iso.mq, dlq) == 1
    # Dropping another kind leaves it alone.
    kept = CliRunner().invoke(
        app, ["dead-letters", "--queue", dlq, "--drop", "--kind", "invalid"], env=env
    )
    assert kept.exit_code == 0 and "0 dropped, 1 kept" in kept.output, kept.output
    assert ready_count(iso.mq, dlq) == 1
    # Prefect is back: the replayed event starts its run, so nothing was lost.
    replayed = CliRunner().invoke(app, ["dead-letters", "--queue", dlq, "--replay"], env=env)
    assert replayed.exit_code == 0, replayed.output
    assert f"1 replayed onto {iso.mq.events_exchange}, 0 kept" in replayed.output
    assert ready_count(iso.mq, dlq) == 0
    after = RecordingStarter()
    with running(consumer_for(iso, after)):
        wait_for(lambda: len(after.snapshot()) == 1, "the replayed event's run")
    assert after.calls[0].parameters["req"]["changed_keys"] == ["cvmfs/x"]


def test_an_operator_drops_the_dead_letters_of_a_kind(rabbitmq: Settings) -> None:
    iso = isolated(rabbitmq)
    declare(iso)
    dlq = iso.config.dead_letter_queue
    publish(iso.mq, iso.s3_key, [b"{this is not json", rgw_body("stranger-bucket", "cvmfs/x")])
    with running(consumer_for(iso, RecordingStarter())):
        wait_for(lambda: ready_count(iso.mq, dlq) == 2, "both dead letters")
    env = settings_env(rabbitmq.model_copy(update={"rabbitmq": iso.mq}))
    dropped = CliRunner().invoke(
        app, ["dead-letters", "--queue", dlq, "--drop", "--kind", "invalid"], env=env
    )
    assert dropped.exit_code == 0, dropped.output
    assert "1 dropped, 1 kept" in dropped.output and "not valid JSON" in dropped.output
    [left] = peek_dead_letters(iso.mq, dlq, limit=10)
    assert left.kind == "unknown_bucket" and ready_count(iso.mq, dlq) == 1


def test_the_default_retry_budget_outlasts_a_prefect_restart() -> None:
    """A Prefect server down for minutes (a restart, an upgrade) must not dead-letter events:
    8 attempts gave up after 2 min (seen on `./svc up`)."""
    config = BridgeConfig()
    waited_s = sum(config.retry_delay_s(attempt) for attempt in range(1, config.max_attempts))
    assert waited_s >= 10 * 60


def test_a_message_the_broker_dead_lettered_is_listed_with_its_source() -> None:
    """A quorum queue's delivery limit dead-letters without the bridge's headers: the listing
    takes where it came from and why from the broker's x-death header, and it can be replayed."""
    properties = pika.BasicProperties(
        headers={
            "x-death": [
                {
                    "reason": "delivery_limit",
                    "queue": "cvmfs.bridge.s3-events",
                    "routing-keys": [b"s3.a.example.org"],
                    "exchange": "cvmfs.events",
                    "count": 1,
                }
            ]
        }
    )
    letter = dead_letter_of("cvmfs.bridge.s3-events", properties, b"{}")
    assert letter.kind == "broker:delivery_limit"
    assert (letter.source_queue, letter.routing_key) == (
        "cvmfs.bridge.s3-events",
        "s3.a.example.org",
    )
    assert letter.reason == "RabbitMQ dead-lettered it from cvmfs.bridge.s3-events (delivery_limit)"
    assert letter.replayable
    # A sync's refusal of a bucket key (bridge/publisher.py) has a kind to drop it by.
    headers = {"x-cvmfs-reason": "/.cvmfs is reserved"}
    refused = dead_letter_of(
        "sync.refused.a.example.org", pika.BasicProperties(headers=headers), b"{}"
    )
    assert (refused.kind, refused.reason) == ("sync_refused", "/.cvmfs is reserved")
    assert not refused.replayable


def test_a_refused_run_is_dead_lettered_at_once(rabbitmq: Settings) -> None:
    iso = isolated(rabbitmq)
    declare(iso)
    publish(iso.mq, iso.s3_key, [rgw_body(REPO_A.bucket, "cvmfs/x")])
    starter = RecordingStarter(failures=[PermanentStartError("409: Validation failed")])
    with running(consumer_for(iso, starter)):
        wait_for(lambda: ready_count(iso.mq, iso.config.dead_letter_queue) == 1, "the dead letter")
    [reason] = reasons(iso)
    assert "refused" in reason and "409" in reason
    assert starter.attempts == 1


def test_registry_events_and_repository_requests_are_routed(rabbitmq: Settings) -> None:
    iso = isolated(rabbitmq)
    declare(iso)
    sample = json.loads((FIXTURES / "distribution-registry-push-manifest.json").read_text())
    [pushed] = parse_registry_webhook(json.dumps(sample["body"])).events
    publish(iso.mq, "registry.image-pushed", [image_event_message(pushed), b'{"event": 1}'])
    request = json.dumps({"version": 1, "kind": "personal", "token": "eyJ..."}).encode()
    publish(iso.mq, "repository.create", [request], message_id="req-42")
    publish(iso.mq, "repository.create", [b"alice,sub-1,alice.sw.example.org,P"])
    starter = RecordingStarter()
    with running(consumer_for(iso, starter)):
        wait_for(lambda: len(starter.snapshot()) == 3, "three runs")
        wait_for(
            lambda: ready_count(iso.mq, iso.config.dead_letter_queue) == 1, "the bad image event"
        )
    by_deployment: dict[str, list[dict[str, object]]] = {}
    for call in starter.calls:
        by_deployment.setdefault(call.deployment, []).append(
            {"params": call.parameters, "key": call.idempotency_key}
        )
    [unpack] = by_deployment["unpack/unpack"]
    assert unpack["params"] == {"req": pushed.model_dump(mode="json")}
    assert unpack["key"] == f"unpack-{pushed.message_id()}"
    provisions = by_deployment["provision/provision"]
    assert {"params": {"req": json.loads(request)}, "key": "provision-req-42"} in provisions
    assert any(p["params"] == {"raw": "alice,sub-1,alice.sw.example.org,P"} for p in provisions)
    [reason] = reasons(iso)
    assert "image event message" in reason


def test_competing_consumers_start_each_event_once(rabbitmq: Settings) -> None:
    iso = isolated(rabbitmq, coalesce_window_s=0.5, prefetch_count=5)
    declare(iso)
    keys = [f"cvmfs/many/{n:03}.txt" for n in range(40)]
    bodies = [
        rgw_body(repo.bucket, key, sequencer=f"{n:04}")
        for n, key in enumerate(keys)
        for repo in (REPO_A, REPO_B)
    ]
    first, second = RecordingStarter(), RecordingStarter()
    copies = consumer_for(iso, first), consumer_for(iso, second)
    with running(copies[0]), running(copies[1]):
        publish(iso.mq, iso.s3_key, bodies)

        def started() -> list[tuple[str, str]]:
            return [
                (call.parameters["req"]["repo"], key)
                for starter in (first, second)
                for call in starter.snapshot()
                for key in call.parameters["req"]["changed_keys"]
            ]

        wait_for(lambda: len(set(started())) == len(bodies), "every event in a run")
        # Started and acked: neither copy holds a message a stop would hand back.
        wait_for(lambda: all(len(copy) == 0 for copy in copies), "every message acked")
    assert ready_count(iso.mq, iso.config.s3.queue) == 0
    assert len(started()) == len(bodies)  # no event was started twice
    assert first.calls and second.calls  # both copies took a share


def test_a_full_prefetch_starts_batches_before_the_window(rabbitmq: Settings) -> None:
    # Every delivered message sits in an open batch until the window ends; with a window
    # longer than the test, only the prefetch bound can start them.
    iso = isolated(rabbitmq, coalesce_window_s=3600.0, prefetch_count=3)
    declare(iso)
    publish(iso.mq, iso.s3_key, [rgw_body(REPO_A.bucket, f"cvmfs/{n}") for n in range(6)])
    starter = RecordingStarter()
    with running(consumer_for(iso, starter)):
        wait_for(lambda: len(starter.snapshot()) == 2, "two forced batches of three")
    assert [len(c.parameters["req"]["changed_keys"]) for c in starter.calls] == [3, 3]
    assert ready_count(iso.mq, iso.config.s3.queue) == 0


def test_one_notification_for_several_buckets_is_refused(rabbitmq: Settings) -> None:
    iso = isolated(rabbitmq)
    declare(iso)
    a = json.loads(rgw_body(REPO_A.bucket, "cvmfs/a"))
    b = json.loads(rgw_body(REPO_B.bucket, "cvmfs/b"))
    mixed = json.dumps({"Records": a["Records"] + b["Records"]}).encode()
    publish(iso.mq, iso.s3_key, [mixed])
    starter = RecordingStarter()
    with running(consumer_for(iso, starter)):
        wait_for(lambda: ready_count(iso.mq, iso.config.dead_letter_queue) == 1, "the refusal")
    assert "several buckets" in reasons(iso)[0]
    assert starter.calls == []
