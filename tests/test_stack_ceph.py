"""The local Ceph cluster of the stack: S3 for both users, restart with data, stop, and the
RGW → RabbitMQ bucket notification path the service relies on (services-notes §2.5-2.7).
"""

from __future__ import annotations

import hashlib
import json
import os
import signal
import subprocess
import time
import uuid
from typing import TYPE_CHECKING, Any

import boto3
import pika
import pytest
from botocore.config import Config
from botocore.exceptions import ClientError
from pydantic import SecretStr

from service.settings import Settings
from stack import procs
from stack.ceph import SERVICE_USER, Ceph
from tests.fixtures_s3 import empty_and_delete

if TYPE_CHECKING:
    from mypy_boto3_s3 import S3Client
    from mypy_boto3_sns import SNSClient

pytestmark = [pytest.mark.stack, pytest.mark.slow]

MIB = 1024 * 1024
EVENT_WAIT_S = 90.0  # the first event: an AMQP connection (~2 s), a persistent queue scan (30 s)


# ----------------------------------------------------------------------------- fixtures
# tests/conftest.py starts the session's stack; its `ceph` and `rabbitmq` fixtures yield the
# test stack's Settings.


@pytest.fixture
def cluster(ceph: Settings) -> Ceph:
    """The session's Ceph component itself: same directory, so the same running cluster."""
    return Ceph(ceph, ceph.absolute_data_dir / Ceph.name)


# ------------------------------------------------------------------------------ helpers


def s3_client(settings: Settings, access_key: str, secret_key: str) -> S3Client:
    return boto3.client(
        "s3",
        endpoint_url=settings.ceph.s3_endpoint,
        aws_access_key_id=access_key,
        aws_secret_access_key=secret_key,
        region_name=settings.ceph.region,
        config=Config(s3={"addressing_style": "path"}, retries={"max_attempts": 2}),
    )


def service_s3(settings: Settings) -> S3Client:
    c = settings.ceph
    return s3_client(settings, c.service_access_key, c.service_secret_key.get_secret_value())


def demo_s3(settings: Settings) -> S3Client:
    c = settings.ceph
    return s3_client(settings, c.demo_access_key, c.demo_secret_key.get_secret_value())


def service_sns(settings: Settings) -> SNSClient:
    c = settings.ceph
    return boto3.client(
        "sns",
        endpoint_url=c.s3_endpoint,
        aws_access_key_id=c.service_access_key,
        aws_secret_access_key=c.service_secret_key.get_secret_value(),
        region_name=c.region,
    )


def unique(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:10]}"


def radosgw_admin(cluster: Ceph, *args: str) -> str:
    # Drives RGW the way an operator would: to inspect users, and to damage what start() repairs.
    return subprocess.run(
        ["radosgw-admin", "--conf", str(cluster.layout.conf), *args],
        check=True,
        capture_output=True,
        text=True,
        timeout=60,
    ).stdout


# -------------------------------------------------------------------------------- tests


def test_start_leaves_a_healthy_cluster_and_start_again_is_a_no_op(
    cluster: Ceph, ceph: Settings
) -> None:
    health = cluster.health()
    assert health.healthy, health.detail
    assert health.url == ceph.ceph.s3_endpoint
    before = cluster.running_pids()
    assert set(before) == {"mon.a", "osd.0", "client.rgw.svc"}

    cluster.start()

    assert cluster.running_pids() == before
    record = cluster.record()
    assert record is not None
    conf = cluster.layout.conf.read_text()
    assert f"fsid = {record.fsid}" in conf
    assert f"civetweb port=127.0.0.1:{ceph.ceph.rgw_port}" in conf
    assert f"v2:127.0.0.1:{ceph.ceph.mon_port_v2}" in conf
    # Everything lives under the component's directory, nothing in /etc/ceph.
    paths = [line.split("=", 1)[1].strip() for line in conf.splitlines() if "= /" in line]
    assert len(paths) >= 10
    assert all(p.startswith(f"{cluster.layout.base}/") for p in paths), paths
    # The two S3 users, under their fixed ids, with the keys of the settings.
    c = ceph.ceph
    for uid, access_key in ((SERVICE_USER, c.service_access_key), (c.demo_user, c.demo_access_key)):
        info = json.loads(radosgw_admin(cluster, "user", "info", f"--uid={uid}"))
        assert access_key in [k["access_key"] for k in info["keys"]]


@pytest.mark.parametrize("user", ["service", "demo"])
def test_s3_put_get_list_and_multipart_for_each_user(
    cluster: Ceph, ceph: Settings, user: str
) -> None:
    s3 = service_s3(ceph) if user == "service" else demo_s3(ceph)
    bucket = unique(f"test-ceph-{user}")
    s3.create_bucket(Bucket=bucket)
    try:
        s3.put_object(Bucket=bucket, Key="cvmfs/a.txt", Body=b"hello a")
        s3.put_object(Bucket=bucket, Key="cvmfs/sub/b.txt", Body=b"hello b")
        s3.put_object(Bucket=bucket, Key="other/c.txt", Body=b"hello c")
        assert s3.get_object(Bucket=bucket, Key="cvmfs/a.txt")["Body"].read() == b"hello a"
        listed = s3.list_objects_v2(Bucket=bucket, Prefix="cvmfs/")
        assert [o["Key"] for o in listed.get("Contents", [])] == ["cvmfs/a.txt", "cvmfs/sub/b.txt"]

        big = os.urandom(9 * MIB)
        upload = s3.create_multipart_upload(Bucket=bucket, Key="cvmfs/big.bin")
        parts = []
        for number, chunk in enumerate((big[: 5 * MIB], big[5 * MIB :]), start=1):
            etag = s3.upload_part(
                Bucket=bucket,
                Key="cvmfs/big.bin",
                UploadId=upload["UploadId"],
                PartNumber=number,
                Body=chunk,
            )["ETag"]
            parts.append({"PartNumber": number, "ETag": etag})
        s3.complete_multipart_upload(
            Bucket=bucket,
            Key="cvmfs/big.bin",
            UploadId=upload["UploadId"],
            MultipartUpload={"Parts": parts},  # type: ignore[typeddict-item]
        )
        got = s3.get_object(Bucket=bucket, Key="cvmfs/big.bin")
        assert got["ETag"].strip('"').endswith("-2")  # stored as two parts
        assert got["ContentLength"] == 9 * MIB
        assert hashlib.sha256(got["Body"].read()).digest() == hashlib.sha256(big).digest()
    finally:
        empty_and_delete(s3, bucket)


def test_users_are_separate_accounts(cluster: Ceph, ceph: Settings) -> None:
    service, demo = service_s3(ceph), demo_s3(ceph)
    bucket = unique("test-ceph-private")
    service.create_bucket(Bucket=bucket)
    try:
        service.put_object(Bucket=bucket, Key="secret.txt", Body=b"x")
        with pytest.raises(ClientError) as refused:
            demo.get_object(Bucket=bucket, Key="secret.txt")
        assert refused.value.response["Error"]["Code"] == "AccessDenied"
        assert bucket not in [b["Name"] for b in demo.list_buckets()["Buckets"]]
    finally:
        empty_and_delete(service, bucket)


def test_start_creates_a_missing_user_and_repairs_a_removed_key(
    cluster: Ceph, ceph: Settings
) -> None:
    # A demo user of its own, so the session's shared users (and their buckets) stay intact.
    tag = uuid.uuid4().hex[:12].upper()
    own = ceph.model_copy(
        update={
            "ceph": ceph.ceph.model_copy(
                update={
                    "demo_user": f"test-ceph-{tag.lower()}",
                    "demo_access_key": f"TESTCEPH{tag}",
                    "demo_secret_key": SecretStr(f"testcephsecret{tag}{tag}".ljust(40, "0")),
                }
            )
        }
    )
    with pytest.raises(ClientError):
        demo_s3(own).list_buckets()
    same_cluster = Ceph(own, cluster.layout.base)
    try:
        same_cluster.start()
        assert same_cluster.running_pids() == cluster.running_pids()
        demo_s3(own).list_buckets()
        same_cluster.start()  # the user exists now: nothing to do, no error

        radosgw_admin(
            cluster, "key", "rm", f"--uid={own.ceph.demo_user}", f"--access-key=TESTCEPH{tag}"
        )
        with pytest.raises(ClientError):
            demo_s3(own).list_buckets()
        same_cluster.start()
        demo_s3(own).list_buckets()
        service_s3(ceph).list_buckets()  # the service user was never disturbed
    finally:
        radosgw_admin(cluster, "user", "rm", f"--uid={own.ceph.demo_user}")


def test_start_restarts_only_the_daemon_that_died(cluster: Ceph) -> None:
    before = cluster.running_pids()
    rgw = before["client.rgw.svc"]
    # A crash of radosgw, caused for real; its pid file stays behind, naming a dead process.
    os.kill(rgw, signal.SIGKILL)
    assert procs.wait_gone([rgw], 10.0) == []
    assert cluster.layout.pid_file("client.rgw.svc").exists()
    assert not cluster.health().healthy

    cluster.start()

    after = cluster.running_pids()
    assert after["client.rgw.svc"] != rgw
    assert {k: v for k, v in after.items() if k != "client.rgw.svc"} == {
        k: v for k, v in before.items() if k != "client.rgw.svc"
    }
    assert cluster.health().healthy


def test_restart_keeps_data_and_stop_leaves_nothing_running(cluster: Ceph, ceph: Settings) -> None:
    s3 = service_s3(ceph)
    bucket = unique("test-ceph-restart")
    s3.create_bucket(Bucket=bucket)
    payload = os.urandom(64 * 1024)
    s3.put_object(Bucket=bucket, Key="cvmfs/kept.bin", Body=payload)
    record = cluster.record()
    pids = cluster.running_pids()

    cluster.stop()

    assert cluster.running_pids() == {}
    assert not any(procs.is_alive(pid) for pid in pids.values())
    assert list(cluster.layout.run_dir.glob("*.pid")) == []
    stopped = cluster.health()
    assert not stopped.healthy
    assert "not running" in stopped.detail

    cluster.start()

    assert cluster.health().healthy
    assert cluster.record() == record  # the same cluster, not a new one
    s3 = service_s3(ceph)
    try:
        assert s3.get_object(Bucket=bucket, Key="cvmfs/kept.bin")["Body"].read() == payload
    finally:
        empty_and_delete(s3, bucket)


# ----------------------------------------------------------------- notifications to AMQP


def event_pairs(bodies: list[dict[str, Any]]) -> list[tuple[str, str]]:
    return sorted(
        (record["eventName"], record["s3"]["object"]["key"])
        for body in bodies
        for record in body["Records"]
    )


def test_bucket_notifications_reach_rabbitmq_with_prefix_filter_and_survive_multi_delete(
    cluster: Ceph, ceph: Settings, rabbitmq: Settings
) -> None:
    mq = rabbitmq.rabbitmq
    topic = unique("test-ceph-events")
    queue = f"test.ceph.{topic}"
    bucket = unique("test-ceph-notify")
    s3, sns = service_s3(ceph), service_sns(ceph)

    connection = pika.BlockingConnection(
        pika.ConnectionParameters(
            mq.host,
            mq.port,
            mq.vhost,
            pika.PlainCredentials(mq.username, mq.password.get_secret_value()),
        )
    )
    channel = connection.channel()
    # RGW never declares the exchange; it must exist before the topic publishes (pitfall 5).
    channel.exchange_declare(mq.events_exchange, exchange_type="topic", durable=True)
    channel.queue_declare(queue, durable=True)
    channel.queue_bind(queue, mq.events_exchange, routing_key=topic)

    arn = sns.create_topic(
        Name=topic,
        Attributes={
            # No user:password in the URL: refused over plain HTTP (pitfall 1).
            "push-endpoint": f"amqp://{mq.host}:{mq.port}",
            "amqp-exchange": mq.events_exchange,
            # Broker acks on a persistent topic crash radosgw 16.2 (see bucket_wiring).
            "amqp-ack-level": "none",
            "persistent": "true",
        },
    )["TopicArn"]
    s3.create_bucket(Bucket=bucket)
    try:
        s3.put_bucket_notification_configuration(
            Bucket=bucket,
            NotificationConfiguration={
                "TopicConfigurations": [
                    {
                        "Id": "cvmfs-sync",
                        "TopicArn": arn,
                        "Events": ["s3:ObjectCreated:*", "s3:ObjectRemoved:*"],
                        "Filter": {"Key": {"FilterRules": [{"Name": "prefix", "Value": "cvmfs/"}]}},
                    }
                ]
            },
        )
        rgw_pid = cluster.running_pids()["client.rgw.svc"]

        s3.put_object(Bucket=bucket, Key="cvmfs/repo/hello.txt", Body=b"hello")
        s3.put_object(Bucket=bucket, Key="other/ignored.txt", Body=b"ignored")
        s3.delete_object(Bucket=bucket, Key="cvmfs/repo/hello.txt")
        s3.delete_object(Bucket=bucket, Key="other/ignored.txt")
        for key in ("cvmfs/m1", "cvmfs/m2", "other/m3"):
            s3.put_object(Bucket=bucket, Key=key, Body=b"m")
        # DeleteObjects with a notification aborts radosgw on the beast front end (pitfall 2).
        deleted = s3.delete_objects(
            Bucket=bucket,
            Delete={"Objects": [{"Key": k} for k in ("cvmfs/m1", "cvmfs/m2", "other/m3")]},
        )
        assert len(deleted.get("Deleted", [])) == 3
        assert deleted.get("Errors", []) == []
        # Last, so that any unwanted event for other/ has had its chance to arrive first.
        s3.put_object(Bucket=bucket, Key="cvmfs/zz-last", Body=b"z")

        expected = sorted(
            [
                ("ObjectCreated:Put", "cvmfs/repo/hello.txt"),
                ("ObjectRemoved:Delete", "cvmfs/repo/hello.txt"),
                ("ObjectCreated:Put", "cvmfs/m1"),
                ("ObjectCreated:Put", "cvmfs/m2"),
                ("ObjectRemoved:Delete", "cvmfs/m1"),
                ("ObjectRemoved:Delete", "cvmfs/m2"),
                ("ObjectCreated:Put", "cvmfs/zz-last"),
            ]
        )
        bodies: list[dict[str, Any]] = []
        routing_keys: set[str] = set()
        deadline = time.monotonic() + EVENT_WAIT_S
        while len(event_pairs(bodies)) < len(expected) and time.monotonic() < deadline:
            method, _properties, body = channel.basic_get(queue, auto_ack=True)
            if method is None:
                connection.sleep(0.2)
                continue
            routing_keys.add(method.routing_key)
            bodies.append(json.loads(body))
        # A short drain: anything extra (an event for other/) would be a failure too.
        connection.sleep(1.0)
        while (message := channel.basic_get(queue, auto_ack=True))[0] is not None:
            bodies.append(json.loads(message[2]))

        assert event_pairs(bodies) == expected
        assert routing_keys == {topic}
        record = bodies[0]["Records"][0]
        assert record["eventSource"] == "ceph:s3"
        assert record["s3"]["bucket"]["name"] == bucket
        assert record["s3"]["configurationId"] == "cvmfs-sync"
        # radosgw survived the multi-object delete: same process, still answering.
        assert cluster.running_pids().get("client.rgw.svc") == rgw_pid
        assert cluster.health().healthy
    finally:
        empty_and_delete(s3, bucket)  # removes the bucket's notification with it
        sns.delete_topic(TopicArn=arn)
        channel.queue_delete(queue)
        connection.close()
