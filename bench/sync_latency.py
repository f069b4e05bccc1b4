"""Upload-to-visible latency on the full running service (RGW → RabbitMQ → bridge → Prefect →
sync → stratum-0), measured from outside like a user: PUT, then poll the stratum-0 URL.

Needs `./svc up` running (it provisions the demo repository this uses). Prints:
- latency of N single small uploads (p50 / p95 / max),
- a burst of M small files: time until all are visible and how many revisions it took,
- reconcile of a bucket of K unchanged objects: time and S3 requests made.

    .venv/bin/python -m bench.sync_latency --uploads 50 --burst 1000 --reconcile 20000
"""

from __future__ import annotations

import argparse
import os
import statistics
import time
import uuid
from concurrent.futures import ThreadPoolExecutor

from cvmfs.reader import RepositoryReader
from service.client_config import stratum0_url
from service.demo import DEMO_BUCKET, demo_request
from service.runtime import load_settings
from service.s3_clients import demo_s3
from service.settings import Settings

POLL_S = 0.1


def _open(settings: Settings, fqrn: str) -> RepositoryReader:
    key = settings.absolute_data_dir / f"{fqrn}.pub"
    return RepositoryReader.open(stratum0_url(settings, fqrn), fqrn, [key])


def _wait_visible(settings: Settings, fqrn: str, paths: list[str], timeout_s: float) -> int:
    """Poll the published manifest until every path exists; returns the revision."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        with _open(settings, fqrn) as reader:
            if all(reader.exists(p) for p in paths):
                return reader.manifest.revision
        time.sleep(POLL_S)
    raise TimeoutError(f"{len(paths)} paths not visible after {timeout_s} s")


def _revision(settings: Settings, fqrn: str) -> int:
    with _open(settings, fqrn) as reader:
        return reader.manifest.revision


def single_uploads(settings: Settings, fqrn: str, count: int) -> list[float]:
    s3 = demo_s3(settings)
    run = uuid.uuid4().hex[:8]
    latencies = []
    for i in range(count):
        key = f"cvmfs/bench/{run}/single-{i}.txt"
        started = time.monotonic()
        s3.put_object(Bucket=DEMO_BUCKET, Key=key, Body=f"{run} {i}\n".encode())
        _wait_visible(settings, fqrn, ["/" + key.removeprefix("cvmfs/")], 120)
        latencies.append(time.monotonic() - started)
    return latencies


def burst(settings: Settings, fqrn: str, count: int) -> tuple[float, int]:
    s3 = demo_s3(settings)
    run = uuid.uuid4().hex[:8]
    keys = [f"cvmfs/bench/{run}/burst/{i // 100:02d}/f{i:04d}.txt" for i in range(count)]
    before = _revision(settings, fqrn)
    started = time.monotonic()
    with ThreadPoolExecutor(16) as pool:
        list(pool.map(lambda k: s3.put_object(Bucket=DEMO_BUCKET, Key=k, Body=k.encode()), keys))
    paths = ["/" + k.removeprefix("cvmfs/") for k in keys]
    revision = _wait_visible(settings, fqrn, paths, 600)
    return time.monotonic() - started, revision - before


def reconcile_unchanged(settings: Settings, fqrn: str, count: int) -> tuple[float, int]:
    """Seed `count` objects (published once), then time a reconcile that finds nothing."""
    from flows.sync import ReconcileRequest, reconcile

    s3 = demo_s3(settings)
    existing = sum(
        page.get("KeyCount", 0)
        for page in s3.get_paginator("list_objects_v2").paginate(
            Bucket=DEMO_BUCKET, Prefix="cvmfs/bench/reconcile/"
        )
    )
    if existing < count:
        keys = [f"cvmfs/bench/reconcile/{i // 1000:02d}/r{i:05d}" for i in range(existing, count)]
        with ThreadPoolExecutor(32) as pool:
            list(pool.map(lambda k: s3.put_object(Bucket=DEMO_BUCKET, Key=k, Body=b"r"), keys))
    reconcile(ReconcileRequest(repo=fqrn))  # publishes whatever events have not yet
    requests = 0

    def count_request(**_: object) -> None:
        nonlocal requests
        requests += 1

    import boto3  # every client of this process counts its calls

    boto3.DEFAULT_SESSION = None
    session = boto3.Session()
    session.events.register("before-call.s3", count_request)
    boto3.DEFAULT_SESSION = session
    started = time.monotonic()
    result = reconcile(ReconcileRequest(repo=fqrn))
    elapsed = time.monotonic() - started
    assert result == {fqrn: None}, f"an unchanged bucket published something: {result}"
    return elapsed, requests


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--uploads", type=int, default=50)
    parser.add_argument("--burst", type=int, default=1000)
    parser.add_argument("--reconcile", type=int, default=0)
    args = parser.parse_args()
    settings = load_settings()
    os.environ.setdefault("PREFECT_API_URL", settings.prefect.api_url)  # the in-process reconcile
    fqrn = demo_request(settings).fqrn
    if args.uploads:
        lat = sorted(single_uploads(settings, fqrn, args.uploads))
        p95 = lat[min(len(lat) - 1, round(0.95 * len(lat)) - 1)]
        print(
            f"upload-to-visible over {len(lat)} uploads: p50 {statistics.median(lat):.2f} s, "
            f"p95 {p95:.2f} s, max {lat[-1]:.2f} s"
        )
    if args.burst:
        elapsed, revisions = burst(settings, fqrn, args.burst)
        print(
            f"burst of {args.burst} files: all visible after {elapsed:.1f} s, {revisions} revisions"
        )
    if args.reconcile:
        elapsed, requests = reconcile_unchanged(settings, fqrn, args.reconcile)
        print(
            f"reconcile of {args.reconcile} unchanged objects: {elapsed:.1f} s, "
            f"{requests} S3 requests"
        )


if __name__ == "__main__":
    main()
