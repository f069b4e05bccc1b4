"""End to end on the real stack: uploads to a Ceph RGW bucket → RabbitMQ → bridge → flow starter.

The bucket is wired with the service's own topic and notification code (buckets/bucket_wiring);
the bridge's queue is private to the test but bound to the real events exchange.
"""

from __future__ import annotations

import uuid

import pytest

from bridge.config import QueueRoute
from bridge.consumer import BridgeConsumer
from bridge.repositories import RepositoryTarget, StaticRepositoryLookup
from buckets.bucket_wiring import ensure_bucket_notification, ensure_topic, topic_name_for
from buckets.s3_clients import bucket_agent_s3, bucket_agent_sns, demo_s3
from service.settings import Settings
from tests.test_bridge_support import (
    RecordingStarter,
    declare,
    drain,
    isolated,
    ready_count,
    running,
    wait_for,
)

pytestmark = [pytest.mark.stack, pytest.mark.slow]


def test_rgw_uploads_become_sync_runs_and_a_foreign_bucket_is_refused(
    ceph: Settings, rabbitmq: Settings
) -> None:
    suffix = uuid.uuid4().hex[:8]
    fqrn = f"e2e{suffix}.sw.example.org"
    bucket, foreign = f"e2e-{suffix}", f"e2e-foreign-{suffix}"
    topic = topic_name_for(fqrn)
    base = isolated(ceph)
    # RGW publishes to exactly one exchange per broker (services-notes §2.7): the real one.
    iso = isolated(
        ceph,
        s3=QueueRoute(queue=f"{base.prefix}.s3-events", binding_keys=[topic]),
        coalesce_window_s=3.0,
    )
    iso = type(iso)(
        mq=iso.mq.model_copy(update={"events_exchange": ceph.rabbitmq.events_exchange}),
        config=iso.config,
        prefix=iso.prefix,
    )
    declare(iso)

    user = demo_s3(ceph)
    user.create_bucket(Bucket=bucket)
    user.create_bucket(Bucket=foreign)
    service = bucket_agent_s3(ceph)
    arn = ensure_topic(bucket_agent_sns(ceph), ceph.rabbitmq, fqrn)
    ensure_bucket_notification(service, bucket, arn, fqrn)
    ensure_bucket_notification(service, foreign, arn, f"foreign-{fqrn}")
    owner = user.get_bucket_acl(Bucket=bucket)["Owner"]["ID"]
    # The foreign bucket feeds a repository of another user: the demo user's uploads into a
    # bucket of the same name must not publish into it.
    lookup = StaticRepositoryLookup(
        {
            bucket: RepositoryTarget(fqrn=fqrn, bucket=bucket, owner_id=owner),
            foreign: RepositoryTarget(fqrn=f"x{fqrn}", bucket=foreign, owner_id="someone-else"),
        }
    )

    keys = ["cvmfs/dir/hello.txt", "cvmfs/with space+plus.txt", "cvmfs/données/日本.txt"]
    starter = RecordingStarter()
    with running(BridgeConsumer(iso.mq, iso.config, lookup, starter)):
        for key in keys:
            user.put_object(Bucket=bucket, Key=key, Body=key.encode())
        user.put_object(Bucket=bucket, Key="outside/ignored.txt", Body=b"no")
        user.delete_object(Bucket=bucket, Key=keys[0])
        user.put_object(Bucket=foreign, Key="cvmfs/planted.txt", Body=b"evil")

        def seen() -> set[str]:
            calls = starter.snapshot()
            return {k for call in calls for k in call.parameters["req"]["changed_keys"]}

        wait_for(lambda: seen() == set(keys), "runs covering every uploaded key", 120)
        wait_for(
            lambda: ready_count(iso.mq, iso.config.dead_letter_queue) == 1,
            "the foreign bucket's event in the dead-letter queue",
            60,
        )
        wait_for(lambda: ready_count(iso.mq, iso.config.s3.queue) == 0, "an empty queue")
    assert all(call.parameters["req"]["repo"] == fqrn for call in starter.calls)
    assert all(call.parameters["req"]["bucket"] == bucket for call in starter.calls)
    [(headers, body)] = drain(iso.mq, iso.config.dead_letter_queue)
    assert foreign.encode() in body
    assert "is owned by" in str(headers["x-cvmfs-reason"])
    assert "'someone-else'" in str(headers["x-cvmfs-reason"])
