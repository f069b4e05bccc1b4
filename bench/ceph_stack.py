"""Time the local Ceph cluster's life cycle and measure its daemons' memory; prints figures.

Usage: .venv/bin/python -m bench.ceph_stack [--port-offset N] [--data-dir DIR] [--keep]
"""

from __future__ import annotations

import argparse
import os
import time
from collections.abc import Callable
from pathlib import Path

import boto3
from botocore.config import Config

from service.settings import Settings
from stack import procs
from stack.ceph import Ceph


def timed(what: str, action: Callable[[], None]) -> float:
    started = time.monotonic()
    action()
    took = time.monotonic() - started
    print(f"{what:<28} {took:6.1f} s", flush=True)
    return took


def exercise_s3(settings: Settings) -> None:
    """Some S3 traffic so that the RSS figure is not that of an idle RGW."""
    c = settings.ceph
    s3 = boto3.client(
        "s3",
        endpoint_url=c.s3_endpoint,
        aws_access_key_id=c.service_access_key,
        aws_secret_access_key=c.service_secret_key.get_secret_value(),
        region_name=c.region,
        config=Config(s3={"addressing_style": "path"}),
    )
    bucket = "bench-ceph"
    s3.create_bucket(Bucket=bucket)
    body = os.urandom(256 * 1024)
    for i in range(40):
        s3.put_object(Bucket=bucket, Key=f"cvmfs/obj{i}", Body=body)
    for i in range(40):
        s3.get_object(Bucket=bucket, Key=f"cvmfs/obj{i}")["Body"].read()
    for i in range(40):
        s3.delete_object(Bucket=bucket, Key=f"cvmfs/obj{i}")
    s3.delete_bucket(Bucket=bucket)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--port-offset", type=int, default=0)
    parser.add_argument("--data-dir", type=Path, default=Path(".data/bench"))
    parser.add_argument("--keep", action="store_true", help="leave the cluster running")
    args = parser.parse_args()
    settings = Settings().with_port_offset(args.port_offset, args.data_dir)
    ceph = Ceph(settings, settings.absolute_data_dir / Ceph.name)
    ceph.purge()

    timed("create from nothing", ceph.start)
    exercise_s3(settings)
    rss = {name: procs.rss_bytes(pid) / 2**20 for name, pid in ceph.running_pids().items()}
    timed("start while running (no-op)", ceph.start)
    timed("stop", ceph.stop)
    timed("restart existing cluster", ceph.start)
    for name, mib in rss.items():
        print(f"RSS {name:<24} {mib:6.1f} MiB")
    print(f"RSS {'total':<24} {sum(rss.values()):6.1f} MiB")
    used = sum(f.stat().st_blocks * 512 for f in ceph.layout.base.rglob("*") if f.is_file())
    print(f"disk used under {ceph.layout.base}: {used / 2**20:.0f} MiB")
    if not args.keep:
        ceph.purge()


if __name__ == "__main__":
    main()
