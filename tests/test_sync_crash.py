"""A sync's flow-run process SIGKILLed in the middle of a publish, on the real stack: no reader
of the stratum-0 URL ever sees a half-published revision, and a retry completes the publish.

The run is started through the `sync` deployment served by `cvmfs-svc serve-deployments` (the
process `./svc up` runs), so a real Prefect runner spawns the flow-run subprocess that is
killed. Meanwhile a thread keeps opening the repository over HTTP with the verifying reader and
runs fsck on every revision it sees (its first test shows it notices a missing object).
"""

from __future__ import annotations

import datetime as dt
import hashlib
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import pytest
from prefect import get_client
from prefect.client.schemas.objects import FlowRun, StateType
from prefect.deployments import run_deployment
from prefect.states import Scheduled

from buckets.bucket_sync import list_objects
from buckets.s3_clients import bucket_agent_s3, demo_s3
from cvmfs.fsck import fsck
from cvmfs.objects import ObjectSuffix
from cvmfs.reader import RepositoryReader
from cvmfs.storage import LocalStorage, is_object_key
from flows.sync import sync
from service.client_config import stratum0_url
from service.run import child_environment
from service.settings import Settings
from tasks.locks import publish_lock_name
from tasks.storage import local_stratum0_dir
from tasks.sync import SyncRequest
from tests.conftest import settings_env
from tests.cvmfs_golden import FQRN, PINNED_NOW, PUBLIC_KEY, writable_copy
from tests.fixtures_service import ProvisionedRepository, public_key_file

pytest_plugins = ("tests.fixtures_auth", "tests.fixtures_service")

PROJECT_DIR = Path(__file__).resolve().parents[1]
BIG_BYTES = 64 << 20  # about eight chunks: the publish streams for several seconds
SMALL_FILES = 20
# The kill comes once this many new objects are in stratum-0 (the publish is streaming).
NEW_OBJECTS_BEFORE_KILL = 2
# Lease (tasks.locks.LEASE_S, the server's minimum) + the server's repossessor loop (15 s)
# + slack for a loaded machine.
LEASE_RELEASE_WAIT_S = 120.0


@dataclass
class Runner:
    process: subprocess.Popen[bytes]
    log: Path

    def tail(self) -> str:
        return self.log.read_text(errors="replace")[-4000:]


@pytest.fixture
def runner(service_settings: Settings, tmp_path: Path) -> Iterator[Runner]:
    """`cvmfs-svc serve-deployments` with the environment `./svc up` gives it (service.run)."""
    env = {**child_environment(service_settings), **settings_env(service_settings)}
    log = tmp_path / "serve-deployments.log"
    with log.open("wb") as out:
        process = subprocess.Popen(
            [sys.executable, "-m", "service.cli", "serve-deployments"],
            env=env,
            cwd=PROJECT_DIR,
            stdout=out,
            stderr=subprocess.STDOUT,
        )
    try:
        yield Runner(process, log)
    finally:
        process.terminate()
        try:
            process.wait(timeout=20)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


def _until(
    condition: Callable[[], bool],
    what: str,
    timeout_s: float,
    poll_s: float = 0.5,
    runner: Runner | None = None,
) -> None:
    deadline = time.monotonic() + timeout_s
    while not condition():
        if time.monotonic() > deadline:
            log = f"; the runner's log ends with:\n{runner.tail()}" if runner else ""
            raise TimeoutError(f"{what} within {timeout_s:.0f} s{log}")
        time.sleep(poll_s)


def _deployment_served(settings: Settings) -> bool:
    try:
        return httpx.get(f"{settings.prefect.api_url}/deployments/name/sync/sync").is_success
    except httpx.TransportError:
        return False


@dataclass
class RevisionWatcher:
    """A client that keeps reading the repository over HTTP, as cvmfs2 would, and checks every
    revision it sees: signatures, manifest → catalogs → every object they name (fsck)."""

    url: str
    fqrn: str
    key_file: Path
    now: dt.datetime | None = None  # None: the real time, as a client
    seen: dict[str, int] = field(default_factory=dict)  # root catalog hash → revision
    problems: list[str] = field(default_factory=list)
    reads: int = 0
    _stop: threading.Event = field(default_factory=threading.Event)
    _thread: threading.Thread | None = None

    def __enter__(self) -> RevisionWatcher:
        self._thread = threading.Thread(target=self._run, name="revision-watcher", daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=60)

    def _run(self) -> None:
        while not self._stop.is_set():
            self.check_once()
            self._stop.wait(0.2)

    def check_once(self) -> None:
        try:
            with RepositoryReader.open(
                self.url, self.fqrn, [self.key_file], now=self.now
            ) as reader:
                self.reads += 1
                root = reader.root_hash.hex
                if root in self.seen:
                    return
                report = fsck(reader)
                if not report.ok:
                    self.problems.append(
                        f"revision {reader.revision}: " + "; ".join(map(str, report.problems))
                    )
                self.seen[root] = reader.revision
        except Exception as exc:  # any failure to read is what a client would hit: record it
            self.problems.append(f"{type(exc).__name__}: {exc}")


def _stored_objects(repo_dir: Path) -> set[str]:
    return {key for key in LocalStorage(repo_dir).list("data/") if is_object_key(key)}


def _children(pid: int) -> list[int]:
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue
        # pid (comm) state ppid ...: comm may hold spaces, so split after the last ')'.
        if int(stat.rsplit(")", 1)[1].split()[1]) == pid:
            found.append(int(entry.name))
    return found


def _flow_run_process(runner_pid: int, run_id: object) -> int | None:
    """The runner's child running `run_id`: the runner starts `python -m prefect.engine` with
    the run's id in its environment."""
    wanted = f"PREFECT__FLOW_RUN_ID={run_id}".encode()
    for pid in _children(runner_pid):
        try:
            environment = Path(f"/proc/{pid}/environ").read_bytes().split(b"\0")
        except OSError:
            continue
        if wanted in environment:
            return pid
    return None


def _flow_run(run_id: object) -> FlowRun:
    with get_client(sync_client=True) as client:
        return client.read_flow_run(run_id)  # type: ignore[arg-type]


def _state_type(run_id: object) -> StateType | None:
    state = _flow_run(run_id).state
    return state.type if state is not None else None


def _lock_slots_in_use(fqrn: str) -> int:
    with get_client(sync_client=True) as client:
        limit = client.read_global_concurrency_limit_by_name(publish_lock_name(fqrn))
    return limit.active_slots


def _tree(reader: RepositoryReader) -> dict[str, bytes]:
    """Regular file path → sha256 of its content."""
    return {
        entry.path: hashlib.sha256(reader.read(entry.path)).digest()
        for entry in reader.walk()
        if entry.is_regular
    }


def test_watcher_reports_a_revision_with_a_missing_object(tmp_path: Path) -> None:
    """What a manifest published before its objects looks like to the watcher."""
    stratum0 = writable_copy(tmp_path / "stratum0")
    watcher = RevisionWatcher(str(stratum0), FQRN, PUBLIC_KEY, now=PINNED_NOW)
    watcher.check_once()
    assert watcher.problems == [] and list(watcher.seen.values()) == [4]
    with RepositoryReader.open(stratum0, FQRN, [PUBLIC_KEY], now=PINNED_NOW) as reader:
        entry = next(e for e in reader.walk() if e.is_regular and e.content_hash is not None)
        assert entry.content_hash is not None
        missing = entry.content_hash.object_key(ObjectSuffix.FILE)
    (stratum0 / missing).unlink()
    fresh = RevisionWatcher(str(stratum0), FQRN, PUBLIC_KEY, now=PINNED_NOW)
    fresh.check_once()
    assert len(fresh.problems) == 1 and missing in fresh.problems[0], fresh.problems


@pytest.mark.stack
@pytest.mark.slow
def test_killed_publish_is_never_half_visible_and_a_retry_completes(
    runner: Runner,
    service_settings: Settings,
    provisioned: ProvisionedRepository,
    tmp_path: Path,
) -> None:
    settings = service_settings
    fqrn, bucket = provisioned.fqrn, provisioned.bucket
    s3 = demo_s3(settings)
    repo_dir = local_stratum0_dir(settings, fqrn)
    key_file = public_key_file(settings, fqrn, tmp_path)

    # A published revision with content, the base the crashed publish starts from.
    expected = {"/base.txt": b"published before the crash\n"}
    s3.put_object(Bucket=bucket, Key="cvmfs/base.txt", Body=expected["/base.txt"])
    base_revision = sync(SyncRequest(repo=fqrn, changed_keys=["cvmfs/base.txt"]))
    assert base_revision is not None

    # A change big enough that its publish streams for a while.
    big = os.urandom(BIG_BYTES)
    s3.put_object(Bucket=bucket, Key="cvmfs/big/blob.bin", Body=big)
    expected["/big/blob.bin"] = big
    for i in range(SMALL_FILES):
        body = f"small file {i}\n".encode()
        s3.put_object(Bucket=bucket, Key=f"cvmfs/small/{i:03d}.txt", Body=body)
        expected[f"/small/{i:03d}.txt"] = body
    changed_keys = [f"cvmfs{path}" for path in expected if path != "/base.txt"]

    _until(lambda: _deployment_served(settings), "the runner serving sync/sync", timeout_s=120)
    objects_before = _stored_objects(repo_dir)
    manifest_before = (repo_dir / ".cvmfspublished").read_bytes()

    with RevisionWatcher(stratum0_url(settings, fqrn), fqrn, key_file) as watcher:
        flow_run = run_deployment(
            "sync/sync",
            parameters={"req": SyncRequest(repo=fqrn, changed_keys=changed_keys).model_dump()},
            timeout=0,
        )
        assert isinstance(flow_run, FlowRun)
        reads_at_start = watcher.reads

        victims: list[int] = []

        def publish_streaming() -> bool:
            assert (repo_dir / ".cvmfspublished").read_bytes() == manifest_before, (
                "the publish finished before it could be killed: make the change bigger"
            )
            if len(_stored_objects(repo_dir) - objects_before) < NEW_OBJECTS_BEFORE_KILL:
                return False
            victim = _flow_run_process(runner.process.pid, flow_run.id)
            victims[:] = [] if victim is None else [victim]
            return bool(victims)

        _until(
            publish_streaming,
            "the sync run streaming objects",
            timeout_s=120,
            poll_s=0.05,
            runner=runner,
        )
        os.kill(victims[0], signal.SIGKILL)
        reads_at_kill = watcher.reads

        # The runner survives and reports the run Crashed (prefect-notes §3).
        _until(
            lambda: _state_type(flow_run.id) == StateType.CRASHED,
            "the killed run marked Crashed",
            timeout_s=60,
        )
        crashed = _flow_run(flow_run.id).state
        assert crashed is not None and "SIGKILL" in (crashed.message or ""), crashed
        assert runner.process.poll() is None, runner.tail()
        # Killed mid-publish: objects written, no manifest; the repository is still the base.
        assert (repo_dir / ".cvmfspublished").read_bytes() == manifest_before
        assert len(_stored_objects(repo_dir) - objects_before) >= NEW_OBJECTS_BEFORE_KILL
        with RepositoryReader.open(repo_dir, fqrn, [key_file]) as local:
            assert local.revision == base_revision
            report = fsck(local, all_revisions=True)
            assert report.ok, report.problems

        # The dead holder's lease expires (it is no longer renewed) and frees the repository.
        assert _lock_slots_in_use(fqrn) == 1
        _until(
            lambda: _lock_slots_in_use(fqrn) == 0,
            "the crashed run's publish lease expired",
            timeout_s=LEASE_RELEASE_WAIT_S,
            poll_s=2.0,
        )

        # An operator's Retry (the UI button, `prefect flow-run retry`): the same run again.
        with get_client(sync_client=True) as client:
            client.set_flow_run_state(
                flow_run.id, Scheduled(message="retried by test_sync_crash"), force=True
            )
        _until(
            lambda: _state_type(flow_run.id) in (StateType.COMPLETED, StateType.FAILED),
            "the retried run finished",
            timeout_s=180,
            runner=runner,
        )
        retried = _flow_run(flow_run.id)
        assert retried.state is not None and retried.state.is_completed(), (
            retried.state,
            runner.tail(),
        )
        assert retried.run_count == 2
        # One more read after the final revision, so the watcher has checked it too.
        _until(lambda: len(watcher.seen) >= 2, "the watcher reading the new revision", 60)

    assert watcher.problems == [], watcher.problems
    # It read during the publish, between the kill and the retry, and after.
    assert reads_at_start < reads_at_kill < watcher.reads, (reads_at_start, reads_at_kill)
    assert sorted(watcher.seen.values()) == [base_revision, base_revision + 1]

    # The final repository equals the bucket, and every revision checks clean.
    bucket_keys = {obj.key for obj in list_objects(bucket_agent_s3(settings), bucket, "cvmfs/")}
    assert bucket_keys == {f"cvmfs{path}" for path in expected}
    with RepositoryReader.open(stratum0_url(settings, fqrn), fqrn, [key_file]) as reader:
        assert reader.revision == base_revision + 1
        assert _tree(reader) == {
            path: hashlib.sha256(body).digest() for path, body in expected.items()
        }
        report = fsck(reader, all_revisions=True)
        assert report.ok, report.problems
