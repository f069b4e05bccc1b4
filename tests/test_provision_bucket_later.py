"""The seed's order through the whole service as `./svc up` runs it (deployments runner,
bridge with its repository watcher, API as processes): request a repository first, create
the bucket afterwards, and the service connects it with no further call; a bucket of another
account is reported, not wired; a provision that failed part way is resumed on its own.
"""

from __future__ import annotations

import datetime as dt
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from buckets.bucket_wiring import notification_id_for
from buckets.s3_clients import bucket_agent_s3
from service.demo import DEMO_BUCKET, run_demo
from service.repositories import RepositoryClaim, RepositoryRegistry, utc_now
from service.settings import Settings
from tasks.storage import local_stratum0_dir
from tests.fixtures_s3 import rgw_user_s3
from tests.fixtures_service import open_reader
from tests.issuer import TestIssuer
from tests.service_processes import CORE_DEPLOYMENTS, running_service, until

pytestmark = [pytest.mark.stack, pytest.mark.slow]
WAIT_S = 180.0


def _until(condition: Callable[[], bool], what: str, timeout_s: float = WAIT_S) -> None:
    until(condition, what, timeout_s)


@pytest.fixture(scope="module")
def issuer() -> Iterator[TestIssuer]:
    with TestIssuer() as running:
        yield running


@pytest.fixture(scope="module")
def service(
    vault: Settings,
    ceph: Settings,
    rabbitmq: Settings,
    registry: Settings,
    prefect_server: Settings,
    stratum0_http: Settings,
    issuer: TestIssuer,
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[Settings]:
    """The service with the bucket owner check on (as deployed); the watcher and the resume
    run faster than their defaults so the test waits less, through the same code."""
    settings = vault.model_copy(
        update={
            "oidc": vault.oidc.model_copy(
                update={"issuer_url": issuer.url, "audience": issuer.audience}
            ),
            "provisioning": vault.provisioning.model_copy(
                update={
                    "require_bucket_owner": True,
                    "watch_interval_s": 2.0,
                    "resume_first_delay_s": 3.0,
                }
            ),
        }
    )
    with running_service(
        settings,
        tmp_path_factory.mktemp("service-logs"),
        [*CORE_DEPLOYMENTS, "wire-bucket/wire-bucket"],
    ) as running:
        yield running


class User:
    """A researcher: an identity at the issuer and an RGW account whose uid is the username."""

    def __init__(self, settings: Settings, issuer: TestIssuer, prefix: str) -> None:
        self.settings = settings
        self.name = f"{prefix}{uuid.uuid4().hex[:6]}"
        self.token = issuer.mint(preferred_username=self.name, sub=f"sub-{self.name}")
        self.s3 = rgw_user_s3(settings, self.name)

    def api(self) -> httpx.Client:
        return httpx.Client(
            base_url=f"http://127.0.0.1:{self.settings.api.port}",
            headers={"Authorization": f"Bearer {self.token}"},
            timeout=30,
        )

    def request_repository(self, bucket: str) -> dict[str, Any]:
        with self.api() as api:
            answer = api.post("/repositories", json={"kind": "personal", "bucket": bucket})
        assert answer.status_code == 202, answer.text
        accepted: dict[str, Any] = answer.json()
        return accepted

    def repository(self, fqrn: str) -> dict[str, Any]:
        with self.api() as api:
            answer = api.get(f"/repositories/{fqrn}")
        answer.raise_for_status()
        detail: dict[str, Any] = answer.json()
        return detail


def _ready_and(user: User, fqrn: str, bucket_state: str) -> bool:
    detail = user.repository(fqrn)
    return bool(detail["status"] == "ready" and detail["bucket_state"]["state"] == bucket_state)


def _notification_ids(settings: Settings, bucket: str) -> list[str]:
    configuration = bucket_agent_s3(settings).get_bucket_notification_configuration(Bucket=bucket)
    return [entry["Id"] for entry in configuration.get("TopicConfigurations", [])]


def test_bucket_created_after_the_request_is_wired_and_publishes(
    service: Settings, issuer: TestIssuer, tmp_path: Path
) -> None:
    settings = service
    alice = User(settings, issuer, "a")
    bucket = f"{alice.name}-software"
    fqrn = alice.request_repository(bucket)["fqrn"]

    _until(lambda: _ready_and(alice, fqrn, "waiting"), f"{fqrn} ready, waiting for its bucket")
    detail = alice.repository(fqrn)
    assert detail["bucket_state"]["name"] == bucket
    assert detail["bucket_state"]["message"].startswith(f"waiting for bucket {bucket}: create it")
    with alice.api() as api:
        listed = api.get("/repositories").json()["repositories"]
        config = api.get(f"/repositories/{fqrn}/client-config")
    assert [r["bucket_state"]["state"] for r in listed if r["fqrn"] == fqrn] == ["waiting"]
    assert config.status_code == 200 and f"{fqrn}.pub" in "".join(config.json()["files"])

    alice.s3.create_bucket(Bucket=bucket)  # and nothing else: the service notices it
    # At once, before the bucket is wired: no event is sent for it, the wiring's backfill
    # publishes it.
    alice.s3.put_object(Bucket=bucket, Key="cvmfs/early/first.txt", Body=b"before wiring\n")
    _until(lambda: _ready_and(alice, fqrn, "wired"), f"bucket {bucket} wired", WAIT_S)
    assert _notification_ids(settings, bucket) == [notification_id_for(fqrn)]
    assert "is connected" in alice.repository(fqrn)["bucket_state"]["message"]

    alice.s3.put_object(Bucket=bucket, Key="cvmfs/hello/README.txt", Body=b"hello, later\n")

    def published() -> bool:
        with open_reader(settings, fqrn, tmp_path) as reader:
            return reader.read("/hello/README.txt") == b"hello, later\n" and (
                reader.read("/early/first.txt") == b"before wiring\n"
            )

    _until(published, f"the upload published in {fqrn}", WAIT_S)


def test_bucket_created_by_another_account_is_reported_and_not_wired(
    service: Settings, issuer: TestIssuer
) -> None:
    settings = service
    bob, mallory = User(settings, issuer, "b"), User(settings, issuer, "m")
    bucket = f"shared-{uuid.uuid4().hex[:8]}"
    fqrn = bob.request_repository(bucket)["fqrn"]
    _until(lambda: _ready_and(bob, fqrn, "waiting"), f"{fqrn} ready, waiting for its bucket")

    mallory.s3.create_bucket(Bucket=bucket)
    _until(lambda: _ready_and(bob, fqrn, "foreign"), f"{fqrn} reporting a foreign bucket")
    message = bob.repository(fqrn)["bucket_state"]["message"]
    assert message.startswith(f"bucket {bucket} already exists and belongs to another S3 account")
    assert mallory.name not in message
    assert _notification_ids(settings, bucket) == []
    with bob.api() as api:
        refused = api.post(f"/repositories/{fqrn}/sync", json={})
    assert refused.status_code == 409 and "not connected" in refused.json()["reason"]


def test_provision_failed_part_way_is_resumed_without_a_new_request(
    service: Settings, issuer: TestIssuer, tmp_path: Path
) -> None:
    """A real failure: a file where the repository's stratum-0 directory must go makes
    `create repository in stratum-0` fail (after its own retries); once it is gone, the
    watcher resumes the provision from the registry, with no token and no new request."""
    settings = service
    carol = User(settings, issuer, "c")
    bucket = f"{carol.name}-software"
    carol.s3.create_bucket(Bucket=bucket)
    fqrn = f"{carol.name}-personal.{settings.repository_domain}"
    blocker = local_stratum0_dir(settings, fqrn)
    blocker.parent.mkdir(parents=True, exist_ok=True)
    blocker.write_text("not a directory\n")
    try:
        accepted = carol.request_repository(bucket)
        assert accepted["fqrn"] == fqrn
        _until(lambda: carol.repository(fqrn)["status"] == "failed", f"{fqrn} failed", WAIT_S)
        failed = carol.repository(fqrn)
        assert "resumes provisioning from this step on its own" in failed["last_error"]
    finally:
        blocker.unlink()

    _until(lambda: _ready_and(carol, fqrn, "wired"), f"{fqrn} resumed and wired", WAIT_S)
    with carol.api() as api:
        request = api.get(accepted["status_url"]).json()
    assert request["status"] == "ok"  # the user's original request, not a new one
    runs = httpx.post(
        f"{settings.prefect.api_url}/flow_runs/filter",
        json={"flow_runs": {"name": {"any_": [f"provision-{fqrn}"]}}},
    ).json()
    assert any("watcher" in run["tags"] for run in runs), [r["tags"] for r in runs]

    carol.s3.put_object(Bucket=bucket, Key="cvmfs/resumed.txt", Body=b"resumed\n")

    def published() -> bool:
        with open_reader(settings, fqrn, tmp_path) as reader:
            return reader.read("/resumed.txt") == b"resumed\n"

    _until(published, f"the upload published in {fqrn}", WAIT_S)


def test_provision_whose_run_died_is_resumed(service: Settings, issuer: TestIssuer) -> None:
    """A provision run killed right after its claim leaves the repository `requested` with its
    request recorded and nothing else. That state is written here, backdated past
    provisioning.resume_stalled_after_s, because killing a flow-run process at exactly that
    instant cannot be done reproducibly; the watcher then resumes it like a failed one."""
    settings = service
    dan = User(settings, issuer, "d")
    bucket = f"{dan.name}-software"
    dan.s3.create_bucket(Bucket=bucket)
    fqrn = f"{dan.name}-personal.{settings.repository_domain}"
    request_id = f"died-{dan.name}"
    long_ago = utc_now() - dt.timedelta(hours=1)
    registry = RepositoryRegistry.open(settings, clock=lambda: long_ago)
    try:
        registry.record_request(request_id, fqrn, f"sub-{dan.name}")
        registry.claim(
            RepositoryClaim(
                fqrn=fqrn,
                kind="personal",
                owner_subject=f"sub-{dan.name}",
                owner_username=dan.name,
                bucket=bucket,
            )
        )
    finally:
        registry.close()

    _until(lambda: _ready_and(dan, fqrn, "wired"), f"{fqrn} resumed and wired", WAIT_S)
    with dan.api() as api:
        request = api.get(f"/requests/{request_id}").json()
    assert request["status"] == "ok"


def test_the_demo_of_svc_up_still_publishes_with_the_owner_check(service: Settings) -> None:
    """`./svc up`'s demo: the demo user's own bucket, created first, is wired at once."""
    demo = run_demo(service)
    assert demo.bucket == DEMO_BUCKET and demo.revision >= 2
    registry = RepositoryRegistry.open(service)
    try:
        state = registry.bucket_state(demo.fqrn)
    finally:
        registry.close()
    assert state is not None and state.state == "wired"
    assert state.observed_owner_id == service.ceph.demo_user
