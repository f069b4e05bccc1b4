"""Commits through the gateway over real HTTP: a publisher written from the protocol builds
catalogs and objects with the project's cvmfs/ library (on the revision stratum-0 has, writing
only into its own capture, never holding the repository key), sends them as object packs and
commits; the gateway merges onto the current revision in a `gateway-commit` Prefect run.

Every repository is checked with the verifier (cvmfs.fsck) over its signed trust chain.
"""

from __future__ import annotations

import os
import stat
import subprocess
import threading
import time
from collections.abc import Callable, Iterator

import pytest
from prefect import get_client
from prefect.client.schemas.filters import (
    ArtifactFilter,
    ArtifactFilterKey,
    FlowRunFilter,
    FlowRunFilterName,
)

from cvmfs.fsck import fsck
from cvmfs.reader import RepositoryReader
from cvmfs.transaction import Transaction
from gateway.publisher import Publisher, prepare, publisher_transaction, send_objects
from metrics.flows import flow_metrics
from service.settings import Settings
from tests.gateway_support import GatewayWorld, gateway_world

pytestmark = pytest.mark.stack


@pytest.fixture(scope="module")
def world(vault: Settings, prefect_server: Settings) -> Iterator[GatewayWorld]:
    with gateway_world(vault, ("one", "two"), flows=True, max_payload_bytes=64 << 20) as w:
        yield w


def verified_reader(world: GatewayWorld, label: str) -> RepositoryReader:
    fqrn = world.repos[label]
    return RepositoryReader(world.storage(label), fqrn, [world.keys[fqrn].master_public_pem])


def assert_verifies(world: GatewayWorld, label: str) -> RepositoryReader:
    reader = verified_reader(world, label)
    report = fsck(reader, all_revisions=True)
    assert report.ok, report.problems
    return reader


def revision(world: GatewayWorld, label: str) -> int:
    return world.writer(label).current_manifest().revision


def publish(
    world: GatewayWorld,
    label: str,
    sub_path: str,
    change: Callable[[Transaction], None],
    *,
    tag: str = "",
    publisher: Publisher | None = None,
) -> dict[str, object]:
    """`cvmfs_server transaction <fqrn>/<sub>`, the change, `publish [-a tag]`."""
    publisher = publisher or world.publisher(label)
    fqrn = world.repos[label]
    token = publisher.acquire_token(f"{fqrn}{sub_path}")
    with publisher_transaction(world.storage(label), fqrn) as txn:
        change(txn)
        prepared = prepare(txn)
    send_objects(publisher, token, prepared.capture, max_pack_bytes=8 << 20)
    reply: dict[str, object] = publisher.commit(
        token, prepared.old_root_hash, prepared.new_root_hash, tag, "from the test publisher"
    )
    if reply["status"] != "ok":
        publisher.drop(token)
    return reply


BIG = os.urandom(40 << 20)  # chunked by the publisher's writer (8 MiB average chunks)


def _published_count(metric: str) -> float:
    """Gateway commits run in this process (the test serves the app), so do their metrics."""
    value = flow_metrics().registry.get_sample_value(metric, {"flow": "gateway-commit"})
    return value or 0.0


def test_new_files_symlinks_nested_catalog_chunked_file_and_tag(world: GatewayWorld) -> None:
    before = revision(world, "one")
    publishes_before = _published_count("cvmfs_publish_duration_seconds_count")
    lease_waits_before = _published_count("cvmfs_lease_wait_seconds_count")

    def change(txn: Transaction) -> None:
        txn.add_file("/sw/v1/bin/tool", b"#!/bin/sh\necho v1\n", mode=0o755, mtime=1_700_000_000)
        txn.add_file("/sw/v1/share/data.txt", b"data\n", xattrs={b"user.kind": b"data"})
        txn.symlink("/sw/latest", "v1", mtime=1_700_000_000)
        txn.add_file("/sw/v1/.cvmfscatalog", b"")  # a nested catalog at /sw/v1
        txn.add_file("/sw/v1/big.bin", BIG)

    reply = publish(world, "one", "/sw", change, tag="release-1")
    assert reply == {"status": "ok", "final_revision": before + 1}, reply
    assert _published_count("cvmfs_publish_duration_seconds_count") == publishes_before + 1
    assert _published_count("cvmfs_lease_wait_seconds_count") == lease_waits_before + 1
    assert _published_count("cvmfs_publish_changes_sum") >= 5

    reader = assert_verifies(world, "one")
    assert reader.revision == before + 1
    assert reader.read("/sw/v1/bin/tool") == b"#!/bin/sh\necho v1\n"
    assert reader.stat("/sw/v1/bin/tool").mode & 0o777 == 0o755
    assert reader.stat("/sw/v1/bin/tool").mtime == 1_700_000_000
    assert reader.stat("/sw/v1/share/data.txt").xattrs == {b"user.kind": b"data"}
    assert reader.readlink("/sw/latest") == "v1"
    big = reader.stat("/sw/v1/big.bin")
    assert big.is_chunked and len(big.chunks) > 1
    assert reader.read("/sw/v1/big.bin") == BIG
    assert {c.mountpoint for c in reader.catalogs()} >= {"", "/sw/v1"}
    assert "release-1" in {tag.name for tag in reader.tags()}
    stats = reader.root_catalog.statistics()
    assert stats["subtree_chunked"] + stats["self_chunked"] >= 1

    # the commit is a Prefect run with the change summary as an artifact; the publisher is
    # answered once the revision is published, the run completes just after
    fqrn = world.repos["one"]
    with get_client(sync_client=True) as client:
        deadline = time.monotonic() + 30
        while True:
            runs = client.read_flow_runs(
                flow_run_filter=FlowRunFilter(
                    name=FlowRunFilterName(any_=[f"gateway-commit-{fqrn}"])
                )
            )
            if runs and runs[0].state is not None and runs[0].state.is_final():
                break
            assert time.monotonic() < deadline, runs
            time.sleep(0.1)
        assert runs[0].state.is_completed(), runs[0].state
        assert runs[0].parameters["req"]["path"] == "/sw"
        assert runs[0].parameters["req"]["key_id"] == fqrn
        artifacts = client.read_artifacts(
            artifact_filter=ArtifactFilter(
                key=ArtifactFilterKey(any_=[f"gateway-commit-{fqrn.replace('.', '-')}"])
            )
        )
        assert artifacts and "key " + fqrn in str(artifacts[0].description)


def test_overwrite_delete_and_hard_links_merge_onto_a_moved_revision(world: GatewayWorld) -> None:
    def first(txn: Transaction) -> None:
        txn.add_file("/pkg/a.txt", b"a1\n")
        txn.add_file("/pkg/b.txt", b"b1\n")
        txn.add_file("/pkg/gone/c.txt", b"c1\n")

    assert publish(world, "two", "/pkg", first)["status"] == "ok"
    publisher = world.publisher("two")
    fqrn = world.repos["two"]
    token = publisher.acquire_token(f"{fqrn}/pkg")
    with publisher_transaction(world.storage("two"), fqrn) as txn:
        txn.add_file("/pkg/a.txt", b"a2 overwritten\n")
        txn.remove("/pkg/gone")
        txn.link("/pkg/b.txt", "/pkg/b-link.txt")
        # special files, published as the stock publisher writes them (flags 20, no object)
        txn.add_special_file("/pkg/dev/fifo", stat.S_IFIFO | 0o644)
        txn.add_special_file("/pkg/dev/null", stat.S_IFCHR | 0o666, rdev=os.makedev(1, 3))
        prepared = prepare(txn)
    # meanwhile another writer (as the bucket sync does) publishes elsewhere
    with world.writer("two").transaction() as other:
        other.add_file("/from-bucket/readme", b"bucket file\n")
        moved_to = other.publish().revision
    send_objects(publisher, token, prepared.capture, max_pack_bytes=8 << 20)
    reply = publisher.commit(token, prepared.old_root_hash, prepared.new_root_hash)
    assert reply == {"status": "ok", "final_revision": moved_to + 1}, reply

    reader = assert_verifies(world, "two")
    assert reader.read("/pkg/a.txt") == b"a2 overwritten\n"
    assert not reader.exists("/pkg/gone")
    assert reader.read("/from-bucket/readme") == b"bucket file\n"  # kept by the merge
    b, link = reader.stat("/pkg/b.txt"), reader.stat("/pkg/b-link.txt")
    assert b.linkcount == link.linkcount == 2 and b.hardlink_group == link.hardlink_group != 0
    fifo, null = reader.stat("/pkg/dev/fifo"), reader.stat("/pkg/dev/null")
    assert (fifo.special_kind, stat.S_IMODE(fifo.mode), fifo.flags) == ("fifo", 0o644, 20)
    assert (null.special_kind, null.device, null.flags) == ("char-device", (1, 3), 20)
    # the token is gone after the commit
    assert "invalid lease" in str(publisher.drop(token)["reason"])


def test_two_publishers_on_disjoint_paths_commit_concurrently(world: GatewayWorld) -> None:
    before = revision(world, "one")
    replies: dict[str, dict[str, object]] = {}

    def run(sub: str) -> None:
        def change(txn: Transaction) -> None:
            txn.add_file(f"{sub}/file.txt", f"content of {sub}\n".encode())

        replies[sub] = publish(world, "one", sub, change)

    threads = [threading.Thread(target=run, args=(sub,)) for sub in ("/team-a", "/team-b")]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=300)
    assert {r["status"] for r in replies.values()} == {"ok"}, replies
    assert sorted(r["final_revision"] for r in replies.values()) == [before + 1, before + 2]  # type: ignore[type-var]
    reader = assert_verifies(world, "one")
    assert reader.read("/team-a/file.txt") == b"content of /team-a\n"
    assert reader.read("/team-b/file.txt") == b"content of /team-b\n"


def test_abort_publishes_nothing(world: GatewayWorld) -> None:
    before = revision(world, "one")
    publisher = world.publisher("one")
    fqrn = world.repos["one"]
    token = publisher.acquire_token(f"{fqrn}/aborted")
    with publisher_transaction(world.storage("one"), fqrn) as txn:
        txn.add_file("/aborted/file", b"never published\n")
        prepared = prepare(txn)
    send_objects(publisher, token, prepared.capture, max_pack_bytes=8 << 20)
    assert publisher.drop(token) == {"status": "ok"}  # cvmfs_server abort
    reply = publisher.commit(token, prepared.old_root_hash, prepared.new_root_hash)
    assert "invalid lease" in str(reply["reason"])
    assert revision(world, "one") == before
    assert not verified_reader(world, "one").exists("/aborted")


def test_bad_commits_are_refused_and_publish_nothing(world: GatewayWorld) -> None:
    publisher = world.publisher("one")
    fqrn = world.repos["one"]
    before = revision(world, "one")
    token = publisher.acquire_token(f"{fqrn}/bad")
    with publisher_transaction(world.storage("one"), fqrn) as txn:
        txn.add_file("/bad/file", b"bad " + os.urandom(8))
        prepared = prepare(txn)

    def refused(reply: dict[str, object], words: str) -> None:
        assert reply["status"] == "error" and words in str(reply["reason"]), reply

    # payloads not sent: the new root catalog is missing
    refused(publisher.commit(token, prepared.old_root_hash, prepared.new_root_hash), "catalog")
    # only the catalogs sent: the file's object is missing
    catalogs = [key for key in prepared.object_keys if key.endswith("C")]
    send_objects(publisher, token, prepared.capture, catalogs)
    refused(publisher.commit(token, prepared.old_root_hash, prepared.new_root_hash), "object")
    send_objects(publisher, token, prepared.capture, max_pack_bytes=8 << 20)
    # an old root hash that is not the leased base
    refused(publisher.commit(token, "0" * 40, prepared.new_root_hash), "not the revision")
    refused(publisher.commit(token, "nonsense", prepared.new_root_hash), "not a root hash")
    # a bad tag name
    refused(
        publisher.commit(token, prepared.old_root_hash, prepared.new_root_hash, "bad tag"),
        "tag",
    )
    # another key's HMAC, an unknown token
    forger = Publisher(world.api_url, publisher.key_id, "wrong")
    refused(forger.commit(token, prepared.old_root_hash, prepared.new_root_hash), "invalid_hmac")
    refused(
        publisher.commit("NOSUCHTOKEN", prepared.old_root_hash, prepared.new_root_hash),
        "invalid lease",
    )
    assert revision(world, "one") == before
    # the lease survived the refusals: the good commit goes through
    reply = publisher.commit(token, prepared.old_root_hash, prepared.new_root_hash)
    assert reply == {"status": "ok", "final_revision": before + 1}, reply
    assert_verifies(world, "one")


def test_a_commit_failed_by_stratum0_says_why_and_the_publisher_publishes_again(
    world: GatewayWorld,
) -> None:
    """A real stratum-0 fault (the repository directory made immutable: even root cannot
    write the manifest) outlasts the task's retries: the run fails, the repository is
    unchanged, the publisher is told, and the run's artifact says why the UI has no Retry.
    The publisher's own retry then completes: its lease and objects were kept."""
    publisher = world.publisher("two")
    fqrn = world.repos["two"]
    before = revision(world, "two")
    token = publisher.acquire_token(f"{fqrn}/retried")
    with publisher_transaction(world.storage("two"), fqrn) as txn:
        txn.add_file("/retried/file", b"published on the second try\n")
        prepared = prepare(txn)
    send_objects(publisher, token, prepared.capture)
    root = world.storage("two").root
    subprocess.run(["chattr", "+i", str(root)], check=True)
    try:
        reply = publisher.commit(token, prepared.old_root_hash, prepared.new_root_hash)
    finally:
        subprocess.run(["chattr", "-i", str(root)], check=True)
    assert reply["status"] == "error", reply
    assert "StorageError" in str(reply["reason"]), reply
    assert "nothing was published" in str(reply["reason"]), reply
    assert "cvmfs_server publish" in str(reply["reason"]), reply
    assert revision(world, "two") == before
    with get_client(sync_client=True) as client:
        runs = [
            run
            for run in client.read_flow_runs(
                flow_run_filter=FlowRunFilter(
                    name=FlowRunFilterName(any_=[f"gateway-commit-{fqrn}"])
                )
            )
            if run.parameters["req"]["path"] == "/retried"
        ]
        assert len(runs) == 1 and runs[0].state is not None and runs[0].state.is_failed(), runs
        assert runs[0].deployment_id is None  # nothing the UI's Retry could run it on
        artifacts = client.read_artifacts(
            artifact_filter=ArtifactFilter(
                key=ArtifactFilterKey(any_=[f"gateway-commit-failed-{fqrn.replace('.', '-')}"])
            )
        )
        assert artifacts and artifacts[0].flow_run_id == runs[0].id
        explanation = str(artifacts[0].data)
        assert "Do not retry this run from the Prefect UI" in explanation
        assert f"cvmfs_server publish {fqrn}" in explanation
    # the publisher runs `cvmfs_server publish` again: the same lease, the same objects
    reply = publisher.commit(token, prepared.old_root_hash, prepared.new_root_hash)
    assert reply == {"status": "ok", "final_revision": before + 1}, reply
    assert assert_verifies(world, "two").read("/retried/file") == b"published on the second try\n"
