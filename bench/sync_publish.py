"""The sync flow's tasks for one changed file in a repository of 100,000 files: wall and CPU.

Runs OpenBao and Ceph (RGW) on the test ports (dev + `--offset`, holding that test stack's
lock) in a temporary directory. The repository (the layout of `bench.publish_one`: one
catalog, or with `--markers` one per top directory of 1,000 files), its
registry (SQLite, one provenance row per file) and its keys are built in `--work` once and
kept with `--keep`; each run stores the keys in the fresh OpenBao and creates the bucket.

Each repetition uploads a new version of one file and runs the sync flow's task bodies
(`Task.fn`, without Prefect's orchestration) with the flow's inputs, each timed: read bucket
state, plan, publish, record provenance, record refusals. Every other repetition replays the
publish task's own calls one by one instead, to split it into phases (Vault keys, writer
open, S3 client, GET + add, publish).

    .venv/bin/python -m bench.sync_publish --offset 170 --keep [--markers] [--files 100000]
        [--repeat 6] [--profile] [--flow N]

`--flow N` then runs the sync flow itself N times in this process against a Prefect server on
the same offset, and prints each task's time as Prefect recorded it.
"""

from __future__ import annotations

import argparse
import cProfile
import dataclasses
import hashlib
import json
import os
import pstats
import resource
import shutil
import statistics
import time
from collections import defaultdict
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, TypeVar

from pydantic import SecretStr

from bench.private_stack import private_data_dir, running
from buckets.bucket_sync import apply_changes
from buckets.s3_clients import bucket_agent_s3, demo_s3
from cvmfs.keys import KeySet, generate_keyset
from cvmfs.storage import LocalStorage
from cvmfs.tarball import TarPolicy
from cvmfs.writer import RepositoryWriter, WriterOptions, create_repository
from service.keystore import KeyOwner, KeyStore
from service.repositories import FileProvenance, RepositoryClaim, RepositoryRegistry
from service.settings import Settings
from tasks.storage import repository_storage
from tasks.sync import (
    RunClients,
    SyncRequest,
    look_up_repository,
    plan_sync,
    publish_changes,
    read_bucket_state,
    record_provenance,
    record_refusals,
)

FQRN = "bench-sync.sw.example.org"
BUCKET = "bench-sync-publish"
OWNER = "bench-owner"
SUBDIRECTORIES = 10
FILES_PER_DIRECTORY = 100
COMPONENTS = ("openbao", "ceph")
FLOW_COMPONENTS = ("prefect",)  # --flow: the flow runs against a Prefect server
T = TypeVar("T")


@dataclasses.dataclass
class Clock:
    """Wall and CPU (all threads of this process) per named phase."""

    wall: dict[str, list[float]] = dataclasses.field(default_factory=lambda: defaultdict(list))
    cpu: dict[str, list[float]] = dataclasses.field(default_factory=lambda: defaultdict(list))

    @contextmanager
    def phase(self, name: str) -> Iterator[None]:
        wall, cpu = time.perf_counter(), time.process_time()
        yield
        self.wall[name].append(time.perf_counter() - wall)
        self.cpu[name].append(time.process_time() - cpu)

    def timed(self, name: str, call: Callable[[], T]) -> T:
        with self.phase(name):
            return call()

    def report(self) -> None:
        for name in self.wall:
            print(
                f"  {name:<28} runs={len(self.wall[name])} "
                f"median_wall_s={statistics.median(self.wall[name]):.3f} "
                f"median_cpu_s={statistics.median(self.cpu[name]):.3f} "
                f"max_wall_s={max(self.wall[name]):.3f}"
            )


def path_of(top: int, sub: int, number: int) -> str:
    return f"/d{top:03d}/s{sub:02d}/f{number:03d}.txt"


def content_of(path: str) -> bytes:
    return f"{path} initial content\n".encode()


def build(work: Path, files: int, markers: bool) -> tuple[KeySet, int]:
    """The repository and its registry in `work` (reused when complete); returns (keys, tops)."""
    tops = max(1, files // (SUBDIRECTORIES * FILES_PER_DIRECTORY))
    repo_dir, keys_file, done = work / "stratum0" / FQRN, work / "keys.json", work / "built"
    if done.exists():
        print(f"reusing {work}")
        return KeySet(**json.loads(keys_file.read_text())), tops
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir(parents=True)
    keys = generate_keyset(FQRN)
    writer, _ = create_repository(LocalStorage(repo_dir), FQRN, keys, WriterOptions())
    started = time.perf_counter()
    provenance: list[FileProvenance] = []
    with writer.transaction() as transaction:
        for top in range(tops):
            if markers:  # a nested catalog per top directory, as the uploaded file makes it
                marker = f"/d{top:03d}/.cvmfscatalog"
                transaction.add_file(marker, b"")
                provenance.append(
                    FileProvenance(
                        path=marker,
                        s3_key=f"cvmfs{marker}",
                        etag=hashlib.md5(b"").hexdigest(),
                        version_id=None,
                        size_bytes=0,
                        revision=2,
                    )
                )
            for sub in range(SUBDIRECTORIES):
                for number in range(FILES_PER_DIRECTORY):
                    path = path_of(top, sub, number)
                    content = content_of(path)
                    transaction.add_file(path, content)
                    provenance.append(
                        FileProvenance(
                            path=path,
                            s3_key=f"cvmfs{path}",
                            etag=hashlib.md5(content).hexdigest(),  # S3's ETag of a one-part PUT
                            version_id=None,
                            size_bytes=len(content),
                            revision=2,
                        )
                    )
        revision = transaction.publish().revision
    built_s = time.perf_counter() - started
    print(f"built files={len(provenance)} revision={revision} wall_s={built_s:.1f}")
    registry = RepositoryRegistry.open_url(f"sqlite:///{work / 'registry.sqlite'}")
    try:
        registry.claim(
            RepositoryClaim(
                fqrn=FQRN, kind="personal", owner_subject=OWNER, owner_username=OWNER, bucket=BUCKET
            )
        )
        registry.set_status(FQRN, "ready")
        started = time.perf_counter()
        registry.record_sync(FQRN, published=provenance, removed=[])
        registry.record_publish(FQRN, revision)
        print(f"provenance rows={len(provenance)} wall_s={time.perf_counter() - started:.1f}")
    finally:
        registry.close()
    keys_file.write_text(json.dumps(dataclasses.asdict(keys)))
    done.touch()
    return keys, tops


def publish_phases(clock: Clock, settings: Settings, repository_fqrn: str, plan: object) -> None:
    """The publish task's calls one by one (tasks/sync.py publish_changes), timed each."""
    from buckets.bucket_sync import Plan

    assert isinstance(plan, Plan)
    registry = RepositoryRegistry.open(settings)
    try:
        repository = registry.require(repository_fqrn)
    finally:
        registry.close()
    owner = KeyOwner.for_repository(repository.kind, repository.owner_subject, repository.group)
    keys = clock.timed(
        "p.vault keys", lambda: KeyStore.from_settings(settings.vault).read(owner, FQRN)
    )
    writer = clock.timed(
        "p.writer open",
        lambda: RepositoryWriter.open(repository_storage(settings, FQRN), FQRN, keys),
    )
    s3 = clock.timed("p.s3 client", lambda: bucket_agent_s3(settings))
    policy = TarPolicy(max_file_size=settings.sync.max_object_bytes)
    transaction = clock.timed("p.transaction open", writer.transaction)
    with clock.phase("p.GET + add, publish, close"), transaction as txn:
        clock.timed("p.GET + add", lambda: apply_changes(txn, s3, BUCKET, plan, tar_policy=policy))
        clock.timed("p.publish", lambda: txn.publish(description="bench"))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--files", type=int, default=100_000)
    parser.add_argument("--work", type=Path, default=Path("/tmp/cvmfs-bench/sync-publish"))
    parser.add_argument("--repeat", type=int, default=6)
    parser.add_argument("--offset", type=int, default=100, help="test stack port offset")
    parser.add_argument(
        "--markers", action="store_true", help="a .cvmfscatalog in every top directory"
    )
    parser.add_argument("--keep", action="store_true", help="keep the repository for next time")
    parser.add_argument(
        "--profile", action="store_true", help="cProfile one publish task (the last but one)"
    )
    parser.add_argument(
        "--flow",
        type=int,
        default=0,
        metavar="N",
        help="then N runs of the sync flow itself (a Prefect server too): task times as "
        "Prefect records them",
    )
    args = parser.parse_args()
    work = args.work / f"{args.files}{'-markers' if args.markers else ''}"
    keys, tops = build(work, args.files, args.markers)

    with private_data_dir(args.offset, "bench-sync") as (settings, data_dir):
        settings = settings.model_copy(
            update={"database_url": SecretStr(f"sqlite:///{work / 'registry.sqlite'}")}
        )
        (data_dir / "stratum0").symlink_to(work / "stratum0")
        components = COMPONENTS + (FLOW_COMPONENTS if args.flow else ())
        started = time.perf_counter()
        with running(settings, components) as settings:
            print(f"stack up {components} wall_s={time.perf_counter() - started:.1f}")
            KeyStore.from_settings(settings.vault).store_if_absent(
                KeyOwner.personal(OWNER), FQRN, keys
            )
            s3 = demo_s3(settings)  # uploads as a research group; the sync reads as the agent
            s3.create_bucket(Bucket=BUCKET)
            run(settings, s3, tops, args.repeat, args.profile)
            if args.flow:
                run_flows(settings, s3, tops, args.flow)
    if not args.keep:
        shutil.rmtree(work, ignore_errors=True)


def run(settings: Settings, s3: object, tops: int, repeat: int, profile: bool) -> None:
    changed = path_of(tops // 2, 5, 42)
    key = f"cvmfs{changed}"
    tasks, phases = Clock(), Clock()
    profiler: cProfile.Profile | None = None
    req = SyncRequest(repo=FQRN, changed_keys=[key])
    for attempt in range(repeat):
        s3.put_object(Bucket=BUCKET, Key=key, Body=f"{changed} change {attempt}\n".encode())  # type: ignore[attr-defined]
        clock = tasks if attempt % 2 == 0 else phases
        clients = RunClients(settings)  # one per run, as flows/sync.py makes it
        with clock.phase("look up repository"):
            repository = look_up_repository.fn(settings, req)
        with clock.phase("read bucket state"):
            truth = read_bucket_state.fn(settings, repository, req, clients)
        with clock.phase("plan changes"):
            plan = plan_sync.fn(settings, repository, truth, clients)
        assert len(plan.changes) == 1, plan
        if clock is phases:
            with phases.phase("publish (phases)"):
                publish_phases(phases, settings, FQRN, plan)
            print(f"repetition {attempt}: publish split into phases")
            continue
        with tasks.phase("publish changes"):
            if profile and attempt == repeat - 2:
                profiler = cProfile.Profile()
                outcome = profiler.runcall(publish_changes.fn, settings, repository, plan, clients)
            else:
                outcome = publish_changes.fn(settings, repository, plan, clients)
        with tasks.phase("record provenance"):
            record_provenance.fn(settings, outcome)
        with tasks.phase("record refusals"):
            record_refusals.fn(settings, repository, plan)
        print(
            f"repetition {attempt}: revision {outcome.revision}, publish changes "
            f"wall_s={tasks.wall['publish changes'][-1]:.3f} "
            f"cpu_s={tasks.cpu['publish changes'][-1]:.3f}"
            + (" (the first task of this process, as in a flow run)" if attempt == 0 else "")
        )
    print(f"tasks (every other repetition), load_avg={os.getloadavg()[0]:.2f}:")
    tasks.report()
    print("publish task split into its calls (the other repetitions):")
    phases.report()
    if profiler is not None:
        print("publish changes under cProfile (its own times are inflated):")
        pstats.Stats(profiler).sort_stats("cumulative").print_stats(25)
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(f"peak_rss_mib={peak:.0f} load_avg={os.getloadavg()[0]:.2f}")


def run_flows(settings: Settings, s3: object, tops: int, runs: int) -> None:
    """The sync flow called in this process (as a flow-run process runs it), `runs` times; each
    run's task times read back from the Prefect server."""
    from prefect.settings import (
        PREFECT_API_URL,
        PREFECT_HOME,
        PREFECT_LOGGING_LEVEL,
        temporary_settings,
    )

    from flows.sync import sync
    from tasks.locks import create_publish_lock
    from tests.conftest import settings_env

    os.environ.update(settings_env(settings))  # the flow's load_settings() reads them
    # Prefect read its settings when it was imported (at the top): set them for these runs.
    updates = {
        PREFECT_API_URL: settings.prefect.api_url,
        PREFECT_HOME: str(settings.absolute_data_dir / "prefect-home"),
        PREFECT_LOGGING_LEVEL: "WARNING",
    }
    with temporary_settings(updates=updates):
        flow_runs(settings, s3, tops, runs, sync, create_publish_lock)


def flow_runs(
    settings: Settings,
    s3: object,
    tops: int,
    runs: int,
    sync: Any,
    create_publish_lock: Callable[[str], None],
) -> None:
    from bench.sync_latency import _task_spans, prefect_client

    changed = path_of(tops // 2, 5, 42)
    key = f"cvmfs{changed}"
    create_publish_lock(FQRN)
    spans: dict[str, list[float]] = defaultdict(list)
    walls: list[float] = []
    for attempt in range(runs):
        body = f"{changed} flow change {attempt}\n".encode()
        s3.put_object(Bucket=BUCKET, Key=key, Body=body)  # type: ignore[attr-defined]
        started = time.perf_counter()
        state = sync(SyncRequest(repo=FQRN, changed_keys=[key]), return_state=True)
        walls.append(time.perf_counter() - started)
        assert state.is_completed() and state.result() is not None, state
        with prefect_client(settings) as client:
            for name, (start, end) in _task_spans(client, state.state_details.flow_run_id).items():
                spans[name].append(end - start)
        print(
            f"flow run {attempt}: revision {state.result()}, wall_s={walls[-1]:.3f}, "
            f"publish changes {spans['publish changes'][-1]:.3f} s"
        )
    print(f"sync flow runs={runs} median_wall_s={statistics.median(walls):.3f}, task times:")
    for name, values in spans.items():
        print(
            f"  {name:<28} median_s={statistics.median(values):.3f} max_s={max(values):.3f} "
            f"first_s={values[0]:.3f}"
        )
    print(f"load_avg={os.getloadavg()[0]:.2f}")


if __name__ == "__main__":
    main()
