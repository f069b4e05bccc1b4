"""Hostile and unusual buckets on the real stack: every sync and reconcile completes, and the
repository converges to the bucket minus the refusals (issue #14).

The flows are called directly, as in test_sync_flow.py; the same scenario through RGW, the
bridge and the served deployments is in test_full_chain.py.
"""

from __future__ import annotations

import io
import json
import tarfile
import unicodedata
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pika
import pytest
from botocore.exceptions import ClientError
from hypothesis import HealthCheck, given
from hypothesis import settings as hypothesis_settings
from hypothesis import strategies as st
from prefect import get_client
from prefect.client.schemas.filters import (
    ArtifactFilter,
    ArtifactFilterFlowRunId,
    FlowRunFilter,
    FlowRunFilterId,
)

from bridge.amqp import connection_parameters
from buckets.s3_clients import demo_s3
from cvmfs.writer import RepositoryWriter
from flows.provision import provision
from flows.sync import ReconcileRequest, reconcile, sync
from service.auth import TokenVerifier
from service.keystore import KeyOwner, KeyStore
from service.repositories import RepositoryRegistry, SyncRefusal
from service.settings import Settings
from tasks.storage import repository_storage
from tasks.sync import SyncRequest
from tests.fixtures_service import ProvisionedRepository, authorized_request, open_reader
from tests.issuer import TestIssuer

pytest_plugins = ("tests.fixtures_auth", "tests.fixtures_service")
pytestmark = [pytest.mark.stack, pytest.mark.slow]
NFC_E = unicodedata.normalize("NFC", "é")
NFD_E = unicodedata.normalize("NFD", "é")
EXAMPLES = 8


def tar_bytes(members: dict[str, bytes]) -> bytes:
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w") as tar:
        for name, data in members.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return buffer.getvalue()


def repository_files(settings: Settings, fqrn: str, tmp_path: Path) -> dict[str, bytes]:
    with open_reader(settings, fqrn, tmp_path) as reader:
        return {e.path: reader.read(e.path) for e in reader.walk() if e.is_regular}


def refusals(settings: Settings, fqrn: str) -> dict[str, SyncRefusal]:
    registry = RepositoryRegistry.open(settings)
    try:
        return {r.s3_key: r for r in registry.refusals(fqrn)}
    finally:
        registry.close()


@pytest.fixture
def dead_letters(service_settings: Settings, provisioned: ProvisionedRepository) -> Iterator[Any]:
    """A queue bound to the dead-letter exchange for this repository's sync refusals."""
    mq = service_settings.rabbitmq
    connection = pika.BlockingConnection(connection_parameters(mq))
    channel = connection.channel()
    channel.exchange_declare(mq.dead_letter_exchange, exchange_type="topic", durable=True)
    queue = channel.queue_declare("", exclusive=True).method.queue
    channel.queue_bind(queue, mq.dead_letter_exchange, f"sync.refused.{provisioned.fqrn}")

    def drain(expected: int) -> list[dict[str, Any]]:
        parked: list[dict[str, Any]] = []
        for _ in range(100):
            method, properties, body = channel.basic_get(queue, auto_ack=True)
            if method is None:
                if len(parked) >= expected:
                    break
                connection.sleep(0.1)
                continue
            parked.append(json.loads(body) | {"header": properties.headers["x-cvmfs-reason"]})
        return parked

    try:
        yield drain
    finally:
        connection.close()


def test_file_and_directory_in_one_batch_publish_the_rest(
    service_settings: Settings,
    provisioned: ProvisionedRepository,
    dead_letters: Any,
    tmp_path: Path,
) -> None:
    """The issue's batch: the conflict is refused naming both keys, the rest publishes, and
    every later reconcile completes with nothing to do; deleting the winner lets the loser in."""
    settings, fqrn, bucket = service_settings, provisioned.fqrn, provisioned.bucket
    s3 = demo_s3(settings)
    uploads = {
        "cvmfs/adv/conflict": b"a file\n",
        "cvmfs/adv/conflict/child.txt": b"a child\n",
        "cvmfs/adv/harmless.txt": b"harmless\n",
        "cvmfs/other/also-fine.txt": b"fine\n",
        "cvmfs/folder/": b"",
    }
    for key, body in uploads.items():
        s3.put_object(Bucket=bucket, Key=key, Body=body)
    run = sync(SyncRequest(repo=fqrn, changed_keys=list(uploads)), return_state=True)
    assert run.result() == 2
    artifact_rows = _artifact_rows(run.state_details.flow_run_id)
    assert [r["key"] for r in artifact_rows if r["action"] == "refused"] == ["cvmfs/adv/conflict"]
    assert "cvmfs/adv/conflict/child.txt" in str(artifact_rows[-1]["size"])
    assert repository_files(settings, fqrn, tmp_path) == {
        "/adv/conflict/child.txt": b"a child\n",
        "/adv/harmless.txt": b"harmless\n",
        "/other/also-fine.txt": b"fine\n",
    }
    refused = refusals(settings, fqrn)
    assert list(refused) == ["cvmfs/adv/conflict"]
    assert refused["cvmfs/adv/conflict"].other_key == "cvmfs/adv/conflict/child.txt"
    assert refused["cvmfs/adv/conflict"].kind == "pair"
    assert "cvmfs/adv/conflict/child.txt" in refused["cvmfs/adv/conflict"].reason
    parked = dead_letters(1)
    assert [(p["key"], p["other_key"]) for p in parked] == [
        ("cvmfs/adv/conflict", "cvmfs/adv/conflict/child.txt")
    ]
    assert parked[0]["header"] == refused["cvmfs/adv/conflict"].reason

    assert reconcile(ReconcileRequest(repo=fqrn)) == {fqrn: None}
    assert reconcile(ReconcileRequest(repo=fqrn)) == {fqrn: None}
    assert dead_letters(0) == []  # a refusal already reported is not parked again
    assert list(refusals(settings, fqrn)) == ["cvmfs/adv/conflict"]

    s3.delete_object(Bucket=bucket, Key="cvmfs/adv/conflict/child.txt")
    assert sync(SyncRequest(repo=fqrn, changed_keys=["cvmfs/adv/conflict/child.txt"])) == 3
    files = repository_files(settings, fqrn, tmp_path)
    assert files["/adv/conflict"] == b"a file\n" and "/adv/conflict/child.txt" not in files
    assert refusals(settings, fqrn) == {}
    assert reconcile(ReconcileRequest(repo=fqrn)) == {fqrn: None}


def test_a_winner_refused_for_its_content_lets_the_losers_in_and_stale_paths_give_way(
    service_settings: Settings, provisioned: ProvisionedRepository, tmp_path: Path
) -> None:
    """A tarball that owns `/t` but escapes is refused while applying: the plan is decided
    again in the same run, so the key below `/t` it had beaten is published. A directory the
    repository holds from no key (written by another publisher) gives way to a bucket file."""
    settings, fqrn, bucket = service_settings, provisioned.fqrn, provisioned.bucket
    registry = RepositoryRegistry.open(settings)
    try:
        repository = registry.require(fqrn)
    finally:
        registry.close()
    owner = KeyOwner.for_repository(repository.kind, repository.owner_subject, repository.group)
    keys = KeyStore.from_settings(settings.vault).read(owner, fqrn)
    writer = RepositoryWriter.open(repository_storage(settings, fqrn), fqrn, keys)
    with writer.transaction() as txn:
        txn.add_file("/stale/dir/old.txt", b"from no key\n")
        assert txn.publish().revision == 2
    s3 = demo_s3(settings)
    uploads = {
        "cvmfs/t.cvmfs.tar": tar_bytes({"ok": b"x", "../escape": b"y"}),
        "cvmfs/t/below.txt": b"below\n",
        "cvmfs/stale/dir": b"now a file\n",
    }
    for key, body in uploads.items():
        s3.put_object(Bucket=bucket, Key=key, Body=body)
    assert sync(SyncRequest(repo=fqrn, changed_keys=list(uploads))) == 3
    files = repository_files(settings, fqrn, tmp_path)
    assert files == {"/t/below.txt": b"below\n", "/stale/dir": b"now a file\n"}
    refused = refusals(settings, fqrn)
    assert list(refused) == ["cvmfs/t.cvmfs.tar"] and refused["cvmfs/t.cvmfs.tar"].kind == "content"
    assert "escape" in refused["cvmfs/t.cvmfs.tar"].reason
    assert reconcile(ReconcileRequest(repo=fqrn)) == {fqrn: None}
    assert list(refusals(settings, fqrn)) == ["cvmfs/t.cvmfs.tar"]


def _artifact_rows(flow_run_id: Any) -> list[dict[str, Any]]:
    """The table of the sync run's artifact (`report changes`)."""
    with get_client(sync_client=True) as client:
        artifacts = client.read_artifacts(
            artifact_filter=ArtifactFilter(flow_run_id=ArtifactFilterFlowRunId(any_=[flow_run_id]))
        )
    assert len(artifacts) == 1, artifacts
    data = artifacts[0].data
    rows = json.loads(data) if isinstance(data, str) else data
    assert isinstance(rows, list)
    return rows


def _task_run_counts(flow_run_id: Any) -> dict[str, int]:
    with get_client(sync_client=True) as client:
        runs = client.read_task_runs(
            flow_run_filter=FlowRunFilter(id=FlowRunFilterId(any_=[flow_run_id]))
        )
    return {run.name.rsplit("-", 1)[0]: run.run_count for run in runs}


def test_no_task_retries_a_deterministic_error(
    service_settings: Settings,
    provisioned: ProvisionedRepository,
    oidc_issuer: TestIssuer,
    token_verifier: TokenVerifier,
) -> None:
    """Bad input fails its task at the first attempt (the retry delays were 2, 10 and 30 s)."""
    state = sync(SyncRequest(repo=provisioned.fqrn, bucket="not-this-bucket"), return_state=True)
    assert state.is_failed()
    counts = _task_run_counts(state.state_details.flow_run_id)
    assert counts["look up repository"] == 1, counts

    # A bucket that already feeds another repository: the claim is refused (BucketTaken).
    request = authorized_request(
        service_settings, oidc_issuer, token_verifier, "thief", provisioned.bucket
    )
    state = provision(request, return_state=True)
    assert state.is_completed() and state.result().status == "refused", state
    counts = _task_run_counts(state.state_details.flow_run_id)
    assert counts["claim repository name"] == 1, counts


# --------------------------------------------------------------------------- property test
NAMES = ["a", "b", NFC_E, NFD_E]
ODD_KEYS = {
    "cvmfs/": b"",  # the console's folder for cvmfs/ itself
    "cvmfs/dir/": b"",  # a folder object
    "cvmfs/held/": b"bytes in a folder",
    "cvmfs/.cvmfs/x": b"reserved",
    "cvmfs/a/.cvmfsautocatalog": b"",
    "cvmfs/ctl\x01name": b"control",
    "cvmfs/tab\there": b"tab",
    "cvmfs/a/./b": b"dot",
    "cvmfs/" + "n" * 256: b"long name",
    "cvmfs/esc.cvmfs.tar": tar_bytes({"../outside": b"x"}),
    "cvmfs/x/.cvmfscatalog": b"",
}


@st.composite
def bucket_states(draw: st.DrawFn) -> dict[str, bytes]:
    """A few keys over a tiny alphabet (so paths collide), tarballs among them, odd keys."""
    state: dict[str, bytes] = {}
    for _ in range(draw(st.integers(1, 7))):
        parts = draw(st.lists(st.sampled_from(NAMES), min_size=1, max_size=3))
        body = draw(st.binary(min_size=0, max_size=16))
        if draw(st.booleans()) and draw(st.booleans()):
            suffix = draw(st.sampled_from([".cvmfs.tar", ".cvmfs.tar.gz"]))
            members = {"f": body, draw(st.sampled_from(NAMES)) + "/g": b"g" + body}
            data = tar_bytes(members)
            if suffix.endswith(".gz"):
                import gzip

                data = gzip.compress(data, mtime=0)
            state["cvmfs/" + "/".join(parts) + suffix] = data
        else:
            state["cvmfs/" + "/".join(parts)] = body
    for key in draw(st.lists(st.sampled_from(sorted(ODD_KEYS)), max_size=3, unique=True)):
        state[key] = ODD_KEYS[key]
    return state


def expected_tree(bucket: dict[str, bytes], refused: set[str]) -> dict[str, bytes]:
    """Bucket minus refusals, as files: `cvmfs/<p>` → `/<p>`, tarballs unpacked."""
    tree: dict[str, bytes] = {}
    for key, body in bucket.items():
        if key in refused or key.endswith("/"):
            continue
        path = "/" + key.removeprefix("cvmfs/")
        for suffix in (".cvmfs.tar.gz", ".cvmfs.tar"):
            if path.endswith(suffix):
                data = body if suffix == ".cvmfs.tar" else __import__("gzip").decompress(body)
                with tarfile.open(fileobj=io.BytesIO(data)) as tar:
                    for member in tar.getmembers():
                        extracted = tar.extractfile(member)
                        assert extracted is not None
                        tree[path.removesuffix(suffix) + "/" + member.name] = extracted.read()
                break
        else:
            tree[path] = body
    return tree


def listed(s3: Any, bucket: str) -> dict[str, str]:
    """key → ETag of what the bucket really holds (RGW may refuse or rewrite odd keys)."""
    keys: dict[str, str] = {}
    for page in s3.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix="cvmfs/"):
        for item in page.get("Contents", []):
            keys[item["Key"]] = item["ETag"]
    return keys


def test_any_bucket_state_converges_to_the_bucket_minus_refusals(
    service_settings: Settings, provisioned: ProvisionedRepository, tmp_path: Path
) -> None:
    """Each example moves the same bucket to a new generated state, syncs the batch of changed
    keys, and checks: the runs complete; a reconcile right after the batch finds nothing (the
    batch decided as a reconcile does); repository == bucket minus refusals; each refusal has
    a reason, and the other key a pair refusal names is in the bucket (it may have lost a later
    rule itself: the rules apply in order); a second reconcile is a no-op."""
    settings, fqrn, bucket = service_settings, provisioned.fqrn, provisioned.bucket
    s3 = demo_s3(settings)
    current: dict[str, bytes] = {}

    @given(state=bucket_states())
    @hypothesis_settings(
        max_examples=EXAMPLES,
        deadline=None,
        suppress_health_check=list(HealthCheck),
        database=None,
    )
    def converge(state: dict[str, bytes]) -> None:
        before = listed(s3, bucket)
        changed = [k for k in current if k not in state]
        for key in changed:
            s3.delete_object(Bucket=bucket, Key=key)
            del current[key]
        for key, body in state.items():
            try:
                s3.put_object(Bucket=bucket, Key=key, Body=body)
            except ClientError:
                continue  # the server refused the key itself: not in the bucket
            current[key] = body
        after = listed(s3, bucket)
        changed += [k for k in after if before.get(k) != after[k]]
        bucket_now = {k: current[k] for k in after if k in current}

        run = sync(SyncRequest(repo=fqrn, changed_keys=changed), return_state=True)
        assert run.is_completed(), run.message
        assert reconcile(ReconcileRequest(repo=fqrn)) == {fqrn: None}, "batch ≠ reconcile"
        refused = refusals(settings, fqrn)
        assert set(refused) <= set(bucket_now)
        for refusal in refused.values():
            assert refusal.reason.strip()
            if refusal.other_key is not None:  # a pair: both keys are in the bucket
                assert refusal.other_key in bucket_now and refusal.other_key != refusal.s3_key
        assert repository_files(settings, fqrn, tmp_path) == expected_tree(bucket_now, set(refused))
        assert reconcile(ReconcileRequest(repo=fqrn)) == {fqrn: None}

    converge()
