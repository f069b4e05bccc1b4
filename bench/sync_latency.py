"""Sync figures on the full running service (RGW → RabbitMQ → bridge → Prefect → sync →
stratum-0), measured from outside like a user, with a breakdown from Prefect's run records.

Needs `./svc up` running (it provisions the demo repository this uses). Prints:
- latency of N single small uploads (p50 / p95 / max) and the median of each phase of the
  path (event to run, runner pick-up, flow-run start-up, each task, publish to visible),
- a burst of M small files: time until all are visible and how many revisions it took,
- reconcile of K unchanged objects under `cvmfs/bench/reconcile/`: seeded and synced first
  (one backfill), then one reconcile run of the `reconcile` deployment is timed, the S3
  requests it made are counted by RGW itself (its `rgw.req` perf counter, broken down by
  method from RGW's access log), and the same reconcile is run once more in this process to
  count boto3 calls by operation and files opened under stratum-0.

    .venv/bin/python -m bench.sync_latency --uploads 50 --burst 1000 --reconcile 20000

With `--offset N` it starts its own stack and service on the dev ports + N instead (the test
stack's ports and lock for that offset), provisions the demo repository, and stops them after.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import re
import statistics
import subprocess
import sys
import time
import uuid
from collections import Counter
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from buckets.s3_clients import demo_s3
from cvmfs.reader import RepositoryReader
from service.client_config import stratum0_url
from service.runtime import load_settings
from service.settings import Settings

if TYPE_CHECKING:
    from prefect.client.orchestration import SyncPrefectClient
    from prefect.client.schemas.objects import FlowRun

POLL_S = 0.05
RECONCILE_PREFIX = "bench/reconcile"
RGW_ASOK = "ceph/run/client.rgw.svc.asok"
RGW_LOG = "ceph/log/client.rgw.svc.log"
FINAL_STATES = {"COMPLETED", "FAILED", "CRASHED", "CANCELLED"}


def _open(settings: Settings, fqrn: str) -> RepositoryReader:
    key = settings.absolute_data_dir / f"{fqrn}.pub"
    return RepositoryReader.open(stratum0_url(settings, fqrn), fqrn, [key])


def _wait_visible(settings: Settings, fqrn: str, paths: list[str], timeout_s: float) -> int:
    """Poll until every path is in the published revision; returns the revision.

    The unsigned manifest is fetched every POLL_S (a few ms); the verifying reader (about
    0.13 s to open) looks for the paths whenever the manifest changed.
    """
    import httpx

    deadline = time.monotonic() + timeout_s
    manifest_url = f"{stratum0_url(settings, fqrn)}/.cvmfspublished"
    seen = b""
    with httpx.Client(timeout=10) as http:
        while time.monotonic() < deadline:
            manifest = http.get(manifest_url).content
            if manifest != seen:
                with _open(settings, fqrn) as reader:
                    if all(reader.exists(p) for p in paths):
                        return reader.manifest.revision
                seen = manifest
            time.sleep(POLL_S)
    raise TimeoutError(f"{len(paths)} paths not visible after {timeout_s} s")


def _revision(settings: Settings, fqrn: str) -> int:
    with _open(settings, fqrn) as reader:
        return reader.manifest.revision


def _percentile(values: list[float], fraction: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(round(fraction * len(ordered)) - 1, 0))]


# --- Prefect run records ------------------------------------------------------------------


@contextmanager
def prefect_client(settings: Settings) -> Iterator[SyncPrefectClient]:
    from prefect.client.orchestration import get_client
    from prefect.settings import PREFECT_API_URL, temporary_settings

    with (
        temporary_settings(updates={PREFECT_API_URL: settings.prefect.api_url}),
        get_client(sync_client=True) as client,
    ):
        yield client


def _sync_runs_since(client: SyncPrefectClient, since: dt.datetime) -> list[FlowRun]:
    from prefect.client.schemas.filters import (
        FlowFilter,
        FlowFilterName,
        FlowRunFilter,
        FlowRunFilterExpectedStartTime,
    )

    return client.read_flow_runs(
        flow_filter=FlowFilter(name=FlowFilterName(any_=["sync"])),
        flow_run_filter=FlowRunFilter(
            expected_start_time=FlowRunFilterExpectedStartTime.model_validate({"after_": since})
        ),
        limit=200,
    )


def _unfinished_runs(client: SyncPrefectClient) -> int:
    from prefect.client.schemas.filters import (
        FlowFilter,
        FlowFilterName,
        FlowRunFilter,
        FlowRunFilterState,
        FlowRunFilterStateType,
    )
    from prefect.client.schemas.objects import StateType

    runs = client.read_flow_runs(
        flow_filter=FlowFilter(name=FlowFilterName(any_=["sync", "reconcile"])),
        flow_run_filter=FlowRunFilter(
            state=FlowRunFilterState(
                type=FlowRunFilterStateType(
                    any_=[StateType.SCHEDULED, StateType.PENDING, StateType.RUNNING]
                )
            )
        ),
        limit=200,
    )
    now = dt.datetime.now(dt.UTC)
    # Cron-scheduled reconciles in the future are not work in flight.
    return sum(1 for r in runs if r.expected_start_time is None or r.expected_start_time <= now)


def wait_quiet(settings: Settings, timeout_s: float = 1800) -> None:
    """Until no sync or reconcile run is waiting or running (so one measurement is alone)."""
    deadline = time.monotonic() + timeout_s
    with prefect_client(settings) as client:
        while _unfinished_runs(client):
            if time.monotonic() > deadline:
                raise TimeoutError("sync runs still in flight: see the Prefect UI")
            time.sleep(1.0)


def _state_times(client: SyncPrefectClient, run_id: Any) -> dict[str, float]:
    """First time the run entered each state type (epoch seconds)."""
    times: dict[str, float] = {}
    for state in sorted(client.read_flow_run_states(run_id), key=lambda s: s.timestamp):
        times.setdefault(state.type.value, state.timestamp.timestamp())
    return times


def _task_spans(client: SyncPrefectClient, run_id: Any) -> dict[str, tuple[float, float]]:
    """Task name (without Prefect's suffix) → (start, end) epoch seconds."""
    from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterId

    spans: dict[str, tuple[float, float]] = {}
    for task_run in client.read_task_runs(
        flow_run_filter=FlowRunFilter(id=FlowRunFilterId(any_=[run_id]))
    ):
        if task_run.start_time is None or task_run.end_time is None:
            continue
        name = task_run.name.rsplit("-", 1)[0]
        spans[name] = (task_run.start_time.timestamp(), task_run.end_time.timestamp())
    return spans


SYNC_STEPS = (
    "look up repository",
    "read bucket state",
    "plan changes",
    "publish changes",
    "record provenance",
    "report changes",
)


def run_phases(
    client: SyncPrefectClient, run: FlowRun, states: dict[str, float]
) -> dict[str, float]:
    """Seconds spent in each stage of one sync run, from Prefect's records (`states`: when
    the run entered each state, `_state_times`)."""
    spans = _task_spans(client, run.id)
    created = run.created.timestamp() if run.created else states["SCHEDULED"]
    phases = {
        "runner pick-up (created → Pending)": states["PENDING"] - created,
        "flow-run start (Pending → Running)": states["RUNNING"] - states["PENDING"],
    }
    previous_end = states["RUNNING"]
    for name in SYNC_STEPS:
        if name not in spans:
            continue
        start, end = spans[name]
        gap_name = "between tasks"
        if name in ("look up repository", "read bucket state"):
            gap_name = "lease and flow start (gap before the first two tasks)"
        phases[gap_name] = phases.get(gap_name, 0.0) + start - previous_end
        phases[f"task: {name}"] = end - start
        previous_end = end
    phases["flow end (last task → Completed)"] = states["COMPLETED"] - previous_end
    return phases


# --- upload latency -----------------------------------------------------------------------


@dataclass
class Upload:
    key: str
    put_start: float  # epoch seconds
    put_end: float
    visible: float

    @property
    def latency(self) -> float:
        return self.visible - self.put_start


def single_uploads(settings: Settings, fqrn: str, bucket: str, count: int) -> list[Upload]:
    s3 = demo_s3(settings)
    run = uuid.uuid4().hex[:8]
    uploads = []
    for i in range(count):
        key = f"cvmfs/bench/{run}/single-{i}.txt"
        put_start = time.time()
        s3.put_object(Bucket=bucket, Key=key, Body=f"{run} {i}\n".encode())
        put_end = time.time()
        _wait_visible(settings, fqrn, ["/" + key.removeprefix("cvmfs/")], 120)
        uploads.append(Upload(key, put_start, put_end, time.time()))
    return uploads


def breakdown(settings: Settings, uploads: list[Upload]) -> dict[str, list[float]]:
    """Each phase of each upload's path, in seconds (only uploads whose run was found)."""
    phases: dict[str, list[float]] = {}
    since = dt.datetime.fromtimestamp(uploads[0].put_start - 5, dt.UTC)
    with prefect_client(settings) as client:
        runs = _sync_runs_since(client, since)
        by_key: dict[str, FlowRun] = {}
        for run in runs:
            for key in run.parameters.get("req", {}).get("changed_keys", []):
                by_key[key] = run
        for upload in uploads:
            found = by_key.get(upload.key)
            if found is None or found.state is None or found.state.type.value != "COMPLETED":
                continue
            created = found.created.timestamp() if found.created else upload.put_end
            states = _state_times(client, found.id)
            item = {
                "PUT": upload.put_end - upload.put_start,
                "event → run created (RGW, RabbitMQ, coalescing, create)": created - upload.put_end,
                **run_phases(client, found, states),
            }
            item["Completed → seen by the poller (manifest every 0.05 s, then reader)"] = (
                upload.visible - states["COMPLETED"]
            )
            for name, seconds in item.items():
                phases.setdefault(name, []).append(seconds)
    return phases


# --- burst --------------------------------------------------------------------------------


def burst(settings: Settings, fqrn: str, bucket: str, count: int) -> tuple[float, float, int]:
    s3 = demo_s3(settings)
    run = uuid.uuid4().hex[:8]
    keys = [f"cvmfs/bench/{run}/burst/{i // 100:02d}/f{i:04d}.txt" for i in range(count)]
    before = _revision(settings, fqrn)
    started = time.monotonic()
    with ThreadPoolExecutor(16) as pool:
        list(pool.map(lambda k: s3.put_object(Bucket=bucket, Key=k, Body=k.encode()), keys))
    puts_done = time.monotonic() - started
    paths = ["/" + k.removeprefix("cvmfs/") for k in keys]
    revision = _wait_visible(settings, fqrn, paths, 600)
    return time.monotonic() - started, puts_done, revision - before


# --- reconcile ----------------------------------------------------------------------------


def _start_run(settings: Settings, deployment: str, parameters: dict[str, Any]) -> str:
    from bridge.flow_starter import PrefectFlowStarter

    starter = PrefectFlowStarter(settings.prefect.api_url, tags=("bench",))
    return starter(deployment, parameters, f"bench-{uuid.uuid4()}")


def _wait_run(settings: Settings, run_id: str, timeout_s: float) -> FlowRun:
    deadline = time.monotonic() + timeout_s
    with prefect_client(settings) as client:
        while True:
            run = client.read_flow_run(uuid.UUID(run_id))
            if run.state is not None and run.state.type.value in FINAL_STATES:
                return run
            if time.monotonic() > deadline:
                raise TimeoutError(f"flow run {run_id} not finished after {timeout_s} s")
            time.sleep(0.05)


def seed_reconcile(settings: Settings, fqrn: str, bucket: str, count: int) -> None:
    """`count` one-byte objects under cvmfs/bench/reconcile/, published (not measured)."""
    s3 = demo_s3(settings)
    prefix = f"cvmfs/{RECONCILE_PREFIX}/"
    existing = {
        item["Key"]
        for page in s3.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=prefix)
        for item in page.get("Contents", [])
    }
    keys = [f"{prefix}{i // 1000:02d}/r{i:05d}" for i in range(count)]
    missing = [k for k in keys if k not in existing]
    if missing:
        started = time.monotonic()
        # 8 at a time: at 32 the local RGW 16.2.15 segfaulted (messenger thread) after 15,000.
        with ThreadPoolExecutor(8) as pool:
            list(pool.map(lambda k: s3.put_object(Bucket=bucket, Key=k, Body=b"r"), missing))
        print(f"seed: {len(missing)} objects put in {time.monotonic() - started:.1f} s")
    # The PUTs' events start sync runs too; one backfill makes sure all are published even
    # if an event was lost (non-persistent topics), then wait until every run is done.
    started = time.monotonic()
    run_id = _start_run(settings, "sync/sync", {"req": {"repo": fqrn, "prefix": RECONCILE_PREFIX}})
    run = _wait_run(settings, run_id, 1800)
    wait_quiet(settings)
    state = run.state.type.value if run.state else "?"
    print(f"seed: backfill sync {state}, all runs done after {time.monotonic() - started:.1f} s")
    # Drift elsewhere in the bucket (events lost earlier) is repaired now, so the measured
    # reconcile finds nothing to do.
    run_id = _start_run(settings, "reconcile/reconcile", {"req": {"repo": fqrn}})
    run = _wait_run(settings, run_id, 1800)
    print(f"seed: a first reconcile {run.state.type.value if run.state else '?'}")


def _rgw_requests(settings: Settings) -> int:
    """RGW's own count of requests served (perf counter `rgw.req`, via its admin socket)."""
    asok = settings.absolute_data_dir / RGW_ASOK
    out = subprocess.run(
        ["ceph", "--admin-daemon", str(asok), "perf", "dump", "rgw"],
        capture_output=True,
        text=True,
        check=True,
        timeout=30,
    ).stdout
    return int(json.loads(out)["rgw"]["req"])


_ACCESS = re.compile(r'civetweb: \S+ \S+ - - \[[^]]*\] "(\w+) (\S+) HTTP')


def _rgw_access_kinds(log: Path, offset: int) -> Counter[str]:
    """Requests in RGW's access log after `offset`, by kind (list, HEAD, GET, ...)."""
    kinds: Counter[str] = Counter()
    with log.open("rb") as handle:
        handle.seek(offset)
        for raw in handle:
            match = _ACCESS.search(raw.decode(errors="replace"))
            if match is None:
                continue
            method, target = match.groups()
            path, _, query = target.partition("?")
            if "list-type=2" in query:
                kinds["ListObjectsV2"] += 1
            elif method in ("GET", "HEAD") and not query and path.count("/") > 1:
                kinds[f"{method} object"] += 1
            else:
                scope = "object" if path.count("/") > 1 else "bucket"
                kinds[f"{method} {scope}?{query}"] += 1
    return kinds


@dataclass
class ReconcileFigures:
    objects: int
    wall_s: float  # request → Completed, as an operator sees it
    running_s: float  # Running → Completed of the reconcile run
    rgw_requests: int
    rgw_kinds: Counter[str]
    sync_phases: dict[str, float] = field(default_factory=dict)
    sync_summary: str = ""


def _sync_child(client: SyncPrefectClient, parent: FlowRun) -> FlowRun | None:
    from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterParentFlowRunId

    children = client.read_flow_runs(
        flow_run_filter=FlowRunFilter(
            parent_flow_run_id=FlowRunFilterParentFlowRunId(any_=[parent.id])
        )
    )
    return children[0] if children else None


def _summary_line(client: SyncPrefectClient, run: FlowRun) -> str:
    from prefect.client.schemas.filters import LogFilter, LogFilterFlowRunId

    # Run logs reach the server in batches, a moment after the run's final state.
    for _ in range(40):
        for log in client.read_logs(LogFilter(flow_run_id=LogFilterFlowRunId(any_=[run.id]))):
            if log.message.startswith("sync repo="):
                return log.message
        time.sleep(0.25)
    return ""


def reconcile_deployed(settings: Settings, fqrn: str) -> ReconcileFigures:
    """One run of the `reconcile` deployment on the running service, counted by RGW."""
    log = settings.absolute_data_dir / RGW_LOG
    offset = log.stat().st_size
    before = _rgw_requests(settings)
    started = time.time()
    run_id = _start_run(settings, "reconcile/reconcile", {"req": {"repo": fqrn}})
    run = _wait_run(settings, run_id, 600)
    wall = time.time() - started
    requests = _rgw_requests(settings) - before
    kinds = _rgw_access_kinds(log, offset)
    with prefect_client(settings) as client:
        states = _state_times(client, run.id)
        if "COMPLETED" not in states:
            raise RuntimeError(f"reconcile run {run_id} ended {run.state}: see the Prefect UI")
        child = _sync_child(client, run)
        phases = {} if child is None else _task_durations(client, child)
        summary = "" if child is None else _summary_line(client, child)
    if "changes=0 " not in summary:
        raise RuntimeError(f"the measured reconcile was not a no-op: {summary!r}")
    match = re.search(r"unchanged=(\d+)", summary)
    return ReconcileFigures(
        objects=int(match.group(1)) if match else -1,
        wall_s=wall,
        running_s=states["COMPLETED"] - states["RUNNING"],
        rgw_requests=requests,
        rgw_kinds=kinds,
        sync_phases=phases,
        sync_summary=summary,
    )


def _task_durations(client: SyncPrefectClient, run: FlowRun) -> dict[str, float]:
    return {name: end - start for name, (start, end) in _task_spans(client, run.id).items()}


def reconcile_in_process(settings: Settings, fqrn: str) -> tuple[float, Counter[str], int]:
    """The same reconcile called in this process: boto3 calls by operation, stratum-0 opens."""
    import boto3

    from flows.sync import ReconcileRequest, reconcile

    calls: Counter[str] = Counter()

    def count_call(event_name: str, **_: object) -> None:
        calls[event_name.rsplit(".", 1)[-1]] += 1

    stratum0 = str(settings.absolute_data_dir / "stratum0")
    opened: list[str] = []

    def audit(event: str, args: tuple[Any, ...]) -> None:
        if event == "open" and isinstance(args[0], str) and args[0].startswith(stratum0):
            opened.append(args[0])

    session = boto3.Session()  # every client this process makes counts its calls
    session.events.register("before-call.s3", count_call)
    boto3.DEFAULT_SESSION = session
    sys.addaudithook(audit)  # cannot be removed; the process ends soon after
    started = time.monotonic()
    result = reconcile(ReconcileRequest(repo=fqrn))
    elapsed = time.monotonic() - started
    opened_during = len(opened)
    if result != {fqrn: None}:
        raise RuntimeError(f"an unchanged bucket published something: {result}")
    return elapsed, calls, opened_during


# --- main ---------------------------------------------------------------------------------


def main() -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--uploads", type=int, default=50)
    parser.add_argument("--burst", type=int, default=1000)
    parser.add_argument("--reconcile", type=int, default=0)
    parser.add_argument(
        "--no-breakdown", action="store_true", help="skip the per-phase table of the uploads"
    )
    parser.add_argument(
        "--offset",
        type=int,
        help="instead of the running service: start a stack and the service on the dev ports "
        "+ OFFSET in a temporary directory (holding that test stack's lock), stopped at the end",
    )
    args = parser.parse_args()
    if args.offset is None:
        measure(load_settings(), args)
        return
    with private_service(args.offset) as settings:
        measure(settings, args)


@contextmanager
def private_service(offset: int) -> Iterator[Settings]:
    """The whole stack and service as `./svc up` runs them, on the test stack's ports of
    `offset`, with the demo repository provisioned; this process's environment points at it."""
    from bench.private_stack import private_data_dir, running
    from service.demo import run_demo
    from tests.conftest import settings_env
    from tests.service_processes import running_service

    with private_data_dir(offset, "bench-latency") as (settings, data_dir):
        started = time.monotonic()
        with running(settings) as settings:
            os.environ.update(settings_env(settings))
            os.environ["PREFECT_API_URL"] = settings.prefect.api_url
            with running_service(settings, data_dir):
                run_demo(settings)
                took = time.monotonic() - started
                print(f"private stack and service up, demo published: {took:.0f} s")
                yield settings


def measure(settings: Settings, args: argparse.Namespace) -> None:
    # Before anything imports Prefect: the in-process reconcile talks to the stack's server.
    os.environ.setdefault("PREFECT_API_URL", settings.prefect.api_url)
    from service.demo import demo_request

    demo = demo_request(settings)
    fqrn, bucket = demo.fqrn, demo.bucket
    if args.uploads:
        wait_quiet(settings)
        uploads = single_uploads(settings, fqrn, bucket, args.uploads)
        lat = [u.latency for u in uploads]
        print(
            f"upload-to-visible over {len(lat)} uploads: p50 {statistics.median(lat):.2f} s, "
            f"p95 {_percentile(lat, 0.95):.2f} s, max {max(lat):.2f} s"
        )
        if not args.no_breakdown:
            phases = breakdown(settings, uploads)
            counted = len(next(iter(phases.values()), []))
            print(f"  phases, median / p95 over the {counted} uploads with one completed run:")
            for name, values in phases.items():
                print(
                    f"    {name:<60} {statistics.median(values):6.2f} "
                    f"{_percentile(values, 0.95):6.2f}"
                )
            total = sum(statistics.median(v) for v in phases.values())
            print(f"    {'sum of the medians':<60} {total:6.2f}")
    if args.burst:
        wait_quiet(settings)
        elapsed, puts_s, revisions = burst(settings, fqrn, bucket, args.burst)
        print(
            f"burst of {args.burst} files: PUTs done after {puts_s:.1f} s, all visible after "
            f"{elapsed:.1f} s, {revisions} revisions"
        )
    if args.reconcile:
        seed_reconcile(settings, fqrn, bucket, args.reconcile)
        figures = reconcile_deployed(settings, fqrn)
        kinds = ", ".join(f"{k} {n}" for k, n in figures.rgw_kinds.most_common())
        print(
            f"reconcile of {figures.objects} unchanged objects (reconcile deployment): "
            f"{figures.wall_s:.1f} s from request to Completed, {figures.running_s:.1f} s "
            f"Running; RGW served {figures.rgw_requests} requests ({kinds})"
        )
        for name, seconds in figures.sync_phases.items():
            print(f"    sync subflow task {name:<40} {seconds:6.2f} s")
        print(f"    {figures.sync_summary}")
        elapsed, calls, opened = reconcile_in_process(settings, fqrn)
        by_operation = ", ".join(f"{k} {n}" for k, n in calls.most_common())
        print(
            f"reconcile in this process: {elapsed:.1f} s, boto3 calls: {by_operation or 'none'}; "
            f"files opened under stratum-0: {opened}"
        )


if __name__ == "__main__":
    main()
