"""The registry of repositories on a real SQLite file: idempotent claims, request dedup,
races between threads and between processes, provenance and audit records."""

from __future__ import annotations

import datetime as dt
import multiprocessing
import os
import pwd
import shutil
import subprocess
import tempfile
import threading
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
from pydantic import SecretStr
from sqlalchemy import create_engine, text

from service.repositories import (
    SQLITE_FILE,
    BucketTaken,
    ClaimMismatch,
    FileProvenance,
    NameTaken,
    RepositoryClaim,
    RepositoryRegistry,
    RequestConflict,
    UnknownRepository,
)
from service.settings import Settings

ALICE = RepositoryClaim(
    fqrn="alice-personal.sw.example.org",
    kind="personal",
    owner_subject="sub-alice",
    owner_username="alice",
    bucket="alice-personal",
)
CMS = RepositoryClaim(
    fqrn="cms.sw.example.org",
    kind="group",
    owner_subject="sub-bob",
    owner_username="bob",
    group="cms",
    bucket="cms-software",
)


PG_BIN = Path("/usr/lib/postgresql/15/bin")


@pytest.fixture(scope="session")
def postgres_socket_dir() -> Iterator[Path]:
    """A private PostgreSQL cluster listening on a Unix socket only (no TCP port)."""
    try:
        pwd.getpwnam("postgres")
    except KeyError:
        pytest.skip("PostgreSQL tests need the postgres system user")
    if not (PG_BIN / "pg_ctl").exists() or os.geteuid() != 0 or shutil.which("runuser") is None:
        pytest.skip("PostgreSQL 15 binaries (and root, to run them as postgres) are needed")
    # Not under pytest's tmp dir: that is mode 0700 root, and the server runs as postgres.
    base = Path(tempfile.mkdtemp(prefix="cvmfs-svc-registry-pg-"))
    shutil.chown(base, "postgres", "postgres")
    data, socket_dir = base / "data", base / "socket"

    def as_postgres(*args: str) -> None:
        subprocess.run(["runuser", "-u", "postgres", "--", *args], check=True, capture_output=True)

    as_postgres("mkdir", str(socket_dir))
    as_postgres(str(PG_BIN / "initdb"), "-D", str(data), "-A", "trust", "-U", "postgres")
    options = f"-c listen_addresses='' -k {socket_dir}"
    as_postgres(
        str(PG_BIN / "pg_ctl"),
        "-D",
        str(data),
        "-l",
        str(base / "log"),
        "-o",
        options,
        "-w",
        "start",
    )
    try:
        yield socket_dir
    finally:
        as_postgres(str(PG_BIN / "pg_ctl"), "-D", str(data), "-m", "fast", "-w", "stop")
        shutil.rmtree(base, ignore_errors=True)


@pytest.fixture(params=["sqlite", pytest.param("postgresql", marks=pytest.mark.slow)])
def settings(request: pytest.FixtureRequest, tmp_path: Path) -> Settings:
    if request.param == "sqlite":
        return Settings(data_dir=tmp_path / "data")
    socket_dir: Path = request.getfixturevalue("postgres_socket_dir")
    database = f"t_{uuid.uuid4().hex[:12]}"  # one database per test keeps tests independent
    admin = create_engine(
        f"postgresql+psycopg://postgres@/postgres?host={socket_dir}", isolation_level="AUTOCOMMIT"
    )
    with admin.connect() as connection:
        connection.execute(text(f"CREATE DATABASE {database}"))
    admin.dispose()
    url = f"postgresql+psycopg://postgres@/{database}?host={socket_dir}"
    return Settings(data_dir=tmp_path / "data", database_url=SecretStr(url))


@pytest.fixture
def registry(settings: Settings) -> Iterator[RepositoryRegistry]:
    registry = RepositoryRegistry.open(settings)
    yield registry
    registry.close()


def test_open_creates_sqlite_file_under_data_dir(tmp_path: Path) -> None:
    settings = Settings(data_dir=tmp_path / "data")
    registry = RepositoryRegistry.open(settings)
    try:
        assert (settings.absolute_data_dir / SQLITE_FILE).is_file()
        assert registry.repositories() == []
    finally:
        registry.close()


def test_claim_is_idempotent(registry: RepositoryRegistry) -> None:
    first = registry.claim(ALICE)
    second = registry.claim(ALICE)
    assert first == second
    assert first.status == "requested" and first.created_at.tzinfo is not None
    assert [r.fqrn for r in registry.repositories()] == [ALICE.fqrn]


def test_data_survives_reopening(settings: Settings, registry: RepositoryRegistry) -> None:
    registry.claim(ALICE)
    reopened = RepositoryRegistry.open(settings)
    try:
        assert reopened.require(ALICE.fqrn).owner_subject == "sub-alice"
    finally:
        reopened.close()


def test_name_owned_by_another_user_is_refused(registry: RepositoryRegistry) -> None:
    registry.claim(ALICE)
    mallory = ALICE.model_copy(update={"owner_subject": "sub-mallory", "bucket": "m-bucket"})
    with pytest.raises(NameTaken) as caught:
        registry.claim(mallory)
    assert "another user" in caught.value.reason
    assert registry.require(ALICE.fqrn).owner_subject == "sub-alice"


def test_group_repository_claimed_again_by_another_member_is_the_same(
    registry: RepositoryRegistry,
) -> None:
    first = registry.claim(CMS)
    again = registry.claim(CMS.model_copy(update={"owner_subject": "sub-carol"}))
    assert again == first and again.owner_subject == "sub-bob"


def test_group_name_cannot_be_taken_by_a_personal_claim(registry: RepositoryRegistry) -> None:
    registry.claim(CMS)
    with pytest.raises(NameTaken):
        registry.claim(CMS.model_copy(update={"kind": "personal", "group": None}))


def test_bucket_feeds_one_repository(registry: RepositoryRegistry) -> None:
    registry.claim(ALICE)
    other = CMS.model_copy(update={"bucket": ALICE.bucket})
    with pytest.raises(BucketTaken):
        registry.claim(other)
    assert registry.get(CMS.fqrn) is None


def test_same_owner_other_bucket_is_a_mismatch(registry: RepositoryRegistry) -> None:
    registry.claim(ALICE)
    with pytest.raises(ClaimMismatch):
        registry.claim(ALICE.model_copy(update={"bucket": "alice-other"}))


def test_status_changes_and_errors(registry: RepositoryRegistry) -> None:
    registry.claim(ALICE)
    failed = registry.set_status(ALICE.fqrn, "failed", "RGW topic creation: 503")
    assert failed.status == "failed" and failed.last_error == "RGW topic creation: 503"
    ready = registry.set_status(ALICE.fqrn, "ready")
    assert ready.status == "ready" and ready.last_error is None
    assert ready.updated_at >= failed.updated_at
    registry.record_error(ALICE.fqrn, "publish failed: lease busy")
    assert registry.require(ALICE.fqrn).status == "ready"
    assert registry.require(ALICE.fqrn).last_error == "publish failed: lease busy"
    assert [r.fqrn for r in registry.repositories(status="ready")] == [ALICE.fqrn]
    with pytest.raises(UnknownRepository):
        registry.set_status("nope.sw.example.org", "ready")


def test_deprovisioned_repository_claimed_again_by_owner_is_requested(
    registry: RepositoryRegistry,
) -> None:
    created = registry.claim(ALICE)
    registry.set_status(ALICE.fqrn, "deprovisioned")
    again = registry.claim(ALICE)
    assert again.status == "requested" and again.created_at == created.created_at
    registry.set_status(ALICE.fqrn, "deprovisioned")
    with pytest.raises(NameTaken):
        registry.claim(ALICE.model_copy(update={"owner_subject": "sub-mallory"}))


def test_revisions_only_grow(registry: RepositoryRegistry) -> None:
    registry.claim(ALICE)
    at = dt.datetime(2026, 1, 2, 3, 4, 5, tzinfo=dt.UTC)
    assert registry.record_publish(ALICE.fqrn, 3, at)
    assert not registry.record_publish(ALICE.fqrn, 2)
    assert not registry.record_publish(ALICE.fqrn, 3)
    repository = registry.require(ALICE.fqrn)
    assert repository.current_revision == 3 and repository.last_publish_at == at
    assert registry.record_publish(ALICE.fqrn, 4)
    with pytest.raises(UnknownRepository):
        registry.record_publish("nope.sw.example.org", 1)


def test_lookup_by_bucket_and_visibility(registry: RepositoryRegistry) -> None:
    registry.claim(ALICE)
    registry.claim(CMS)
    found = registry.by_bucket("cms-software")
    assert found is not None and found.fqrn == CMS.fqrn
    assert registry.by_bucket("unknown") is None
    assert [r.fqrn for r in registry.visible_to("sub-alice", [])] == [ALICE.fqrn]
    assert [r.fqrn for r in registry.visible_to("sub-alice", ["cms"])] == [
        ALICE.fqrn,
        CMS.fqrn,
    ]
    assert [r.fqrn for r in registry.visible_to("sub-bob", [])] == [CMS.fqrn]
    assert registry.visible_to("sub-zed", ["atlas"]) == []


def test_request_is_recorded_once(registry: RepositoryRegistry) -> None:
    first, created = registry.record_request("req-1", ALICE.fqrn, "sub-alice")
    assert created and first.status == "pending"
    registry.finish_request("req-1", "ok")
    again, created_again = registry.record_request("req-1", ALICE.fqrn, "sub-alice")
    assert not created_again and again.status == "ok"
    assert again.received_at == first.received_at
    with pytest.raises(RequestConflict):
        registry.record_request("req-1", "other.sw.example.org", "sub-alice")
    refused, _ = registry.record_request("req-2", None, None)
    assert refused.fqrn is None
    assert registry.finish_request("req-2", "refused", "malformed").reason == "malformed"
    assert registry.request("req-3") is None


def test_file_provenance(registry: RepositoryRegistry) -> None:
    registry.claim(ALICE)
    v1 = FileProvenance(
        path="software/a%b_c",
        s3_key="cvmfs/software/a%b_c",
        etag="e1",
        version_id=None,
        size_bytes=10,
        revision=2,
    )
    stored = registry.upsert_file(ALICE.fqrn, v1)
    assert stored.updated_at is not None and stored.etag == "e1"
    registry.upsert_file(ALICE.fqrn, v1.model_copy(update={"etag": "e2", "revision": 3}))
    current = registry.get_file(ALICE.fqrn, "software/a%b_c")
    assert current is not None and (current.etag, current.revision) == ("e2", 3)
    other = v1.model_copy(update={"path": "softwareXa", "s3_key": "cvmfs/softwareXa"})
    registry.upsert_file(ALICE.fqrn, other)
    registry.upsert_file(ALICE.fqrn, v1.model_copy(update={"path": "data/x"}))
    # '%' and '_' in the prefix are literal, not wildcards.
    assert [f.path for f in registry.files(ALICE.fqrn, "software/a%")] == ["software/a%b_c"]
    assert [f.path for f in registry.files(ALICE.fqrn, "software_")] == []
    assert len(registry.files(ALICE.fqrn)) == 3
    assert registry.remove_file(ALICE.fqrn, "data/x")
    assert not registry.remove_file(ALICE.fqrn, "data/x")


def test_provenance_needs_a_known_repository(registry: RepositoryRegistry) -> None:
    orphan = FileProvenance(
        path="x", s3_key="cvmfs/x", etag=None, version_id=None, size_bytes=0, revision=1
    )
    with pytest.raises(UnknownRepository):
        registry.upsert_file("nope.sw.example.org", orphan)


def test_key_access_audit(registry: RepositoryRegistry) -> None:
    registry.claim(ALICE)
    registry.record_key_access(ALICE.fqrn, "sub-alice", "read_keys", True)
    registry.record_key_access(ALICE.fqrn, "sub-mallory", "read_keys", False, "not the owner")
    accesses = registry.key_accesses(ALICE.fqrn)
    assert [(a.subject, a.allowed) for a in accesses] == [
        ("sub-alice", True),
        ("sub-mallory", False),
    ]
    assert accesses[1].detail == "not the owner"


# -- races ----------------------------------------------------------------------------------


def _claim_as(settings: Settings, owner: str, barrier: object) -> str:
    """Open an own connection, wait for the others, claim; returns the winner's subject."""
    registry = RepositoryRegistry.open(settings)
    try:
        barrier.wait()  # type: ignore[attr-defined]
        claim = ALICE.model_copy(update={"owner_subject": owner})
        try:
            return registry.claim(claim).owner_subject
        except NameTaken:
            return registry.require(ALICE.fqrn).owner_subject
    finally:
        registry.close()


def test_concurrent_claims_from_threads_have_one_winner(settings: Settings) -> None:
    RepositoryRegistry.open(settings).close()
    workers = 8
    barrier = threading.Barrier(workers)
    results: list[str] = []
    lock = threading.Lock()

    def run(owner: str) -> None:
        winner = _claim_as(settings, owner, barrier)
        with lock:
            results.append(winner)

    threads = [threading.Thread(target=run, args=(f"sub-{i}",)) for i in range(workers)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert len(results) == workers
    assert len(set(results)) == 1  # everybody sees the same single owner


def _claim_in_process(settings: Settings, owner: str, barrier: object, results: object) -> None:
    results.put(_claim_as(settings, owner, barrier))  # type: ignore[attr-defined]


def test_concurrent_claims_from_processes_have_one_winner(settings: Settings) -> None:
    RepositoryRegistry.open(settings).close()
    workers = 4
    context = multiprocessing.get_context("spawn")
    barrier = context.Barrier(workers)
    results = context.Queue()
    processes = [
        context.Process(target=_claim_in_process, args=(settings, f"proc-{i}", barrier, results))
        for i in range(workers)
    ]
    for process in processes:
        process.start()
    winners = [results.get(timeout=120) for _ in range(workers)]
    for process in processes:
        process.join(timeout=60)
        assert process.exitcode == 0
    assert len(set(winners)) == 1 and winners[0].startswith("proc-")


def test_concurrent_request_records_have_one_creator(settings: Settings) -> None:
    RepositoryRegistry.open(settings).close()
    workers = 6
    barrier = threading.Barrier(workers)
    created: list[bool] = []

    def run() -> None:
        registry = RepositoryRegistry.open(settings)
        try:
            barrier.wait()
            _, was_created = registry.record_request("req-race", ALICE.fqrn, "sub-alice")
            created.append(was_created)
        finally:
            registry.close()

    threads = [threading.Thread(target=run) for _ in range(workers)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert sorted(created) == [False] * (workers - 1) + [True]


# -- bucket states and provision resumes --------------------------------------------------


class _Clock:
    def __init__(self) -> None:
        self.now = dt.datetime(2026, 12, 5, 12, 0, tzinfo=dt.UTC)

    def __call__(self) -> dt.datetime:
        return self.now


def test_bucket_state_keeps_since_until_the_state_changes(settings: Settings) -> None:
    clock = _Clock()
    registry = RepositoryRegistry.open(settings, clock)
    try:
        registry.claim(ALICE)
        registry.set_status(ALICE.fqrn, "ready")
        first = registry.record_bucket_state(ALICE.fqrn, ALICE.bucket, "waiting", "waiting for it")
        clock.now += dt.timedelta(seconds=10)
        again = registry.record_bucket_state(ALICE.fqrn, ALICE.bucket, "waiting", "waiting for it")
        assert again.since == first.since and again.checked_at == clock.now
        assert [r.fqrn for r, _ in registry.buckets_to_watch()] == [ALICE.fqrn]
        clock.now += dt.timedelta(seconds=10)
        wired = registry.record_bucket_state(ALICE.fqrn, ALICE.bucket, "wired", "connected", "u")
        assert wired.since == clock.now and wired.observed_owner_id == "u"
        assert registry.buckets_to_watch() == []
        assert registry.bucket_states([ALICE.fqrn, CMS.fqrn]) == {ALICE.fqrn: wired}
        with pytest.raises(UnknownRepository):
            registry.record_bucket_state(CMS.fqrn, CMS.bucket, "waiting", "no such repository")
    finally:
        registry.close()


def test_only_ready_repositories_are_watched(registry: RepositoryRegistry) -> None:
    registry.claim(ALICE)
    registry.record_bucket_state(ALICE.fqrn, ALICE.bucket, "waiting", "waiting for it")
    assert registry.buckets_to_watch() == []  # still provisioning: the flow checks it itself


def test_one_watcher_claims_the_wiring_until_it_may_be_retried(settings: Settings) -> None:
    clock = _Clock()
    registry = RepositoryRegistry.open(settings, clock)
    try:
        registry.claim(ALICE)
        registry.record_bucket_state(ALICE.fqrn, ALICE.bucket, "waiting", "waiting for it")
        retry_after = dt.timedelta(seconds=60)
        assert registry.claim_wiring(ALICE.fqrn, retry_after)
        assert not registry.claim_wiring(ALICE.fqrn, retry_after)
        clock.now += retry_after
        assert registry.claim_wiring(ALICE.fqrn, retry_after)  # the run failed: again
        registry.record_bucket_state(ALICE.fqrn, ALICE.bucket, "wired", "connected", "u")
        clock.now += retry_after
        assert not registry.claim_wiring(ALICE.fqrn, retry_after)  # wired: nothing to do
    finally:
        registry.close()


def test_concurrent_wiring_claims_have_one_winner(settings: Settings) -> None:
    setup = RepositoryRegistry.open(settings)
    setup.claim(ALICE)
    setup.record_bucket_state(ALICE.fqrn, ALICE.bucket, "waiting", "waiting for it")
    setup.close()
    workers = 6
    barrier = threading.Barrier(workers)
    won: list[bool] = []

    def run() -> None:
        registry = RepositoryRegistry.open(settings)
        try:
            barrier.wait()
            won.append(registry.claim_wiring(ALICE.fqrn, dt.timedelta(seconds=60)))
        finally:
            registry.close()

    threads = [threading.Thread(target=run) for _ in range(workers)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert sorted(won) == [False] * (workers - 1) + [True]


def test_failed_provision_is_resumed_once_per_attempt(settings: Settings) -> None:
    clock = _Clock()
    registry = RepositoryRegistry.open(settings, clock)
    try:
        registry.claim(ALICE)
        registry.set_status(ALICE.fqrn, "failed", "Vault sealed")
        delay = dt.timedelta(seconds=30)
        scheduled = registry.schedule_provision_retry(ALICE.fqrn, "req-1", delay)
        assert scheduled.attempts == 0 and scheduled.next_attempt_at == clock.now + delay
        assert registry.due_provision_retries(max_attempts=3) == []
        clock.now += delay
        [(repository, retry)] = registry.due_provision_retries(max_attempts=3)
        assert repository.fqrn == ALICE.fqrn and retry.request_id == "req-1"
        assert registry.claim_provision_retry(retry, dt.timedelta(seconds=60))
        assert not registry.claim_provision_retry(retry, dt.timedelta(seconds=60))  # a 2nd copy
        # Failing again keeps the schedule (and its attempt count) as it is.
        again = registry.schedule_provision_retry(ALICE.fqrn, "req-1", delay)
        assert again.attempts == 1 and again.next_attempt_at == clock.now + 2 * delay
        clock.now += 2 * delay
        assert len(registry.due_provision_retries(max_attempts=3)) == 1
        assert registry.due_provision_retries(max_attempts=1) == []  # attempts used up
        registry.set_status(ALICE.fqrn, "ready")
        assert registry.due_provision_retries(max_attempts=3) == []  # only failed ones
        registry.clear_provision_retry(ALICE.fqrn)
        assert registry.provision_retry(ALICE.fqrn) is None
    finally:
        registry.close()


def test_a_provision_left_requested_is_resumed_once_it_stalled(settings: Settings) -> None:
    clock = _Clock()
    registry = RepositoryRegistry.open(settings, clock)
    try:
        registry.record_request("req-a", ALICE.fqrn, "sub-alice")
        registry.claim(ALICE)  # and then its run died: nothing else is recorded
        stalled_after = dt.timedelta(minutes=15)
        clock.now += dt.timedelta(minutes=14)
        assert registry.schedule_stalled_provisions(stalled_after) == []  # may still run
        clock.now += dt.timedelta(minutes=2)
        [scheduled] = registry.schedule_stalled_provisions(stalled_after)
        assert scheduled.request_id == "req-a" and scheduled.next_attempt_at == clock.now
        assert registry.schedule_stalled_provisions(stalled_after) == []  # scheduled once
        [(repository, retry)] = registry.due_provision_retries(max_attempts=3)
        assert repository.status == "requested" and retry == scheduled
    finally:
        registry.close()
