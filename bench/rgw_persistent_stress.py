"""Stress RGW bucket notifications as the provision flow wires them (persistent topic by default):
PUTs and deletes until radosgw crashes or the count is reached; prints how far it got and how
many events reached RabbitMQ.

The bucket is wired like buckets/bucket_wiring does it (bucket agent's topic and notification on
the demo user's bucket); a private quorum queue bound to the events exchange with the topic's
routing key counts what arrives. `--broker-outage-at N` stops RabbitMQ (the stack component)
before PUT N and starts it again `--outage-puts` PUTs later: the events in between must come from
RGW's persistent queue. `--interval-s` paces the PUTs: RGW 16.2 with `--ack-level broker`
crashed within 29-69 PUTs at 0.5 s, and not within 300 back-to-back PUTs. Run it against a
private stack, never a shared one (a crash takes radosgw down):

    .venv/bin/python -m bench.rgw_persistent_stress --port-offset 200 \
        --data-dir /tmp/rgw-persist --rgw-port 8290 --puts 2000 --deletes 200 \
        --interval-s 0.05 --broker-outage-at 1000 --outage-puts 50
"""

from __future__ import annotations

import argparse
import json
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import pika
from botocore.exceptions import BotoCoreError, ClientError

from bridge.config import BridgeConfig
from bridge.topology import declare_topology
from buckets.bucket_wiring import (
    AMQP_ACK_LEVEL,
    ensure_bucket_notification,
    ensure_topic,
    topic_name_for,
)
from buckets.s3_clients import bucket_agent_s3, bucket_agent_sns, demo_s3
from service.settings import Settings
from stack.ceph import RGW_NAME, Ceph
from stack.rabbitmq import RabbitMQ

if TYPE_CHECKING:
    from mypy_boto3_s3 import S3Client
    from pika.adapters.blocking_connection import BlockingChannel

DRAIN_TIMEOUT_S = 180.0
DRAIN_IDLE_S = 45.0  # longer than RGW's 30 s scan for new persistent queues
DELETE_BATCH = 10  # keys per DeleteObjects; each batch is followed by one DeleteObject


@dataclass
class Outcome:
    puts: int = 0
    deleted_keys: int = 0
    expected_events: int = 0
    crashed_at_put: int | None = None
    error: str = ""
    received: int = 0
    keys_seen: set[tuple[str, str]] = field(default_factory=set)
    delivery_modes: dict[int | None, int] = field(default_factory=dict)


def _settings(args: argparse.Namespace) -> Settings:
    settings = Settings.load()
    if args.port_offset:
        settings = settings.with_port_offset(args.port_offset, Path(args.data_dir))
    if args.rgw_port:
        settings = settings.model_copy(
            update={"ceph": settings.ceph.model_copy(update={"rgw_port": args.rgw_port})}
        )
    return settings


def _channel(settings: Settings) -> BlockingChannel:
    mq = settings.rabbitmq
    return pika.BlockingConnection(pika.ConnectionParameters(mq.host, mq.port)).channel()


def _rgw_alive(ceph: Ceph) -> bool:
    return RGW_NAME in ceph.running_pids()


def _delete_some(s3: S3Client, bucket: str, keys: list[str], outcome: Outcome) -> None:
    batch, single = keys[:DELETE_BATCH], keys[DELETE_BATCH]
    s3.delete_objects(Bucket=bucket, Delete={"Objects": [{"Key": k} for k in batch]})
    s3.delete_object(Bucket=bucket, Key=single)
    outcome.deleted_keys += len(batch) + 1
    outcome.expected_events += len(batch) + 1


def run(args: argparse.Namespace) -> Outcome:
    settings = _settings(args)
    base = settings.absolute_data_dir
    ceph = Ceph(settings, base / "ceph")
    rabbitmq = RabbitMQ(settings, base / "rabbitmq")
    run_id = uuid.uuid4().hex[:8]
    fqrn = f"stress{run_id}.sw.example.org"
    bucket = f"stress-{run_id}"
    queue = f"bench.rgw-stress.{run_id}"

    channel = _channel(settings)
    declare_topology(channel, settings.rabbitmq, BridgeConfig())
    # Quorum like the bridge's S3 queue: with amqp-ack-level=none RGW publishes transient
    # messages, which a classic queue drops on a broker restart and a quorum queue keeps.
    channel.queue_declare(queue, durable=True, arguments={"x-queue-type": "quorum"})
    channel.queue_bind(queue, settings.rabbitmq.events_exchange, routing_key=topic_name_for(fqrn))
    channel.connection.close()

    user = demo_s3(settings)
    user.create_bucket(Bucket=bucket)
    arn = ensure_topic(
        bucket_agent_sns(settings),
        settings.rabbitmq,
        fqrn,
        persistent=args.persistent,
        ack_level=args.ack_level,
    )
    ensure_bucket_notification(bucket_agent_s3(settings), bucket, arn, fqrn)

    outcome = Outcome()
    live: list[str] = []
    batches = args.deletes // (DELETE_BATCH + 1)
    delete_every = max(1, args.puts // batches) if batches else 0
    outage_start = args.broker_outage_at
    outage_end = outage_start + args.outage_puts if outage_start else -1
    started = time.monotonic()
    try:
        for i in range(args.puts):
            if outage_start and i == outage_start:
                rabbitmq.stop()
                print(f"put {i}: rabbitmq stopped", flush=True)
            if i == outage_end:
                rabbitmq.start()
                print(f"put {i}: rabbitmq started", flush=True)
            key = f"cvmfs/stress/{i:06d}.txt"
            user.put_object(Bucket=bucket, Key=key, Body=f"{run_id} {i}\n".encode())
            outcome.puts += 1
            outcome.expected_events += 1
            live.append(key)
            if args.interval_s:
                time.sleep(args.interval_s)
            if delete_every and (i + 1) % delete_every == 0 and len(live) > DELETE_BATCH:
                _delete_some(user, bucket, live[: DELETE_BATCH + 1], outcome)
                del live[: DELETE_BATCH + 1]
            if args.check_every and (i + 1) % args.check_every == 0:
                if not _rgw_alive(ceph):
                    outcome.crashed_at_put = outcome.puts
                    break
                print(f"put {i + 1}: rgw alive, {time.monotonic() - started:.1f} s", flush=True)
    except (BotoCoreError, ClientError) as exc:
        outcome.error = f"{type(exc).__name__}: {exc}"
        outcome.crashed_at_put = outcome.puts
    if outage_start and outcome.puts <= outage_end:
        rabbitmq.start()
    time.sleep(1.0)
    if outcome.crashed_at_put is None and not _rgw_alive(ceph):
        outcome.crashed_at_put = outcome.puts
    _drain(settings, queue, outcome)
    return outcome


def _drain(settings: Settings, queue: str, outcome: Outcome) -> None:
    """Count what arrives until the expected number is reached or nothing comes for a while."""
    channel = _channel(settings)
    deadline = time.monotonic() + DRAIN_TIMEOUT_S
    last_progress = time.monotonic()
    while time.monotonic() < deadline and outcome.received < outcome.expected_events:
        method, props, body = channel.basic_get(queue, auto_ack=True)
        if method is None:
            if time.monotonic() - last_progress > DRAIN_IDLE_S:
                break
            time.sleep(0.2)
            continue
        last_progress = time.monotonic()
        mode = props.delivery_mode
        outcome.delivery_modes[mode] = outcome.delivery_modes.get(mode, 0) + 1
        for record in json.loads(body)["Records"]:
            outcome.received += 1
            outcome.keys_seen.add((record["eventName"], record["s3"]["object"]["key"]))
    channel.queue_delete(queue)
    channel.connection.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--port-offset", type=int, default=0)
    parser.add_argument("--data-dir", default=".data/dev")
    parser.add_argument("--rgw-port", type=int, default=0, help="override the RGW port")
    parser.add_argument("--puts", type=int, default=300)
    parser.add_argument("--deletes", type=int, default=33)
    parser.add_argument(
        "--ack-level",
        choices=["broker", "none", "routable"],
        default=AMQP_ACK_LEVEL,
        help="default: what buckets/bucket_wiring uses",
    )
    parser.add_argument("--persistent", action=argparse.BooleanOptionalAction, default=True)
    parser.add_argument("--interval-s", type=float, default=0.0, help="pause after each PUT")
    parser.add_argument("--check-every", type=int, default=25)
    parser.add_argument("--broker-outage-at", type=int, default=0)
    parser.add_argument("--outage-puts", type=int, default=20)
    args = parser.parse_args()
    outcome = run(args)
    state = (
        f"CRASH after {outcome.crashed_at_put} PUTs ({outcome.error or 'radosgw gone'})"
        if outcome.crashed_at_put is not None
        else "no crash"
    )
    print(
        f"persistent={args.persistent} ack_level={args.ack_level} interval_s={args.interval_s}: "
        f"{state}; puts={outcome.puts} deleted={outcome.deleted_keys} "
        f"events expected={outcome.expected_events} received={outcome.received} "
        f"distinct={len(outcome.keys_seen)} delivery_modes={outcome.delivery_modes}"
    )


if __name__ == "__main__":
    main()
