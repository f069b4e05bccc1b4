"""A gateway process killed in the middle of a commit: no half-published revision, the
publisher's retry of the commit completes on a restarted gateway, and the killed run ends
Crashed, saying what to do (gateway/orphans.py), instead of staying Running for ever.

The gateway runs as its own process (`cvmfs-svc gateway`, as `./svc up` runs it) and is
killed with SIGKILL once its `gateway-commit` run is running. The repository publish lock it
held is a Prefect lease, so the retry waits until that lease lapses (60 s); meanwhile the
restarted gateway's sweep ends the killed run, whose heartbeats stopped (short heartbeat and
silence windows here, so it does within that wait).
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import httpx
import pytest
from prefect import get_client
from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterName

from cvmfs.fsck import fsck
from cvmfs.reader import RepositoryReader
from gateway.orphans import end_orphaned_commits
from gateway.publisher import prepare, publisher_transaction, send_objects
from service.settings import Settings
from tests.gateway_support import GatewayWorld, gateway_world
from tests.test_api_support import free_port

pytestmark = [pytest.mark.stack, pytest.mark.slow]
# The gateway processes' heartbeat and the silence after which a run counts as dead (defaults
# 30 / 90 s): short, so the killed run is ended within the retry's wait for the lock.
HEARTBEAT_S = 30  # Prefect refuses less
SILENT_S = 45


@contextmanager
def gateway_process(port: int, log: Path) -> Iterator[subprocess.Popen[bytes]]:
    """The gateway as `./svc up` starts it; the environment carries the world's settings."""
    env = {
        **os.environ,
        "CVMFS_SVC_GATEWAY__PORT": str(port),
        "CVMFS_SVC_GATEWAY__ORPHAN_SWEEP_S": "2",
        "CVMFS_SVC_PREFECT__HEARTBEAT_S": str(HEARTBEAT_S),
        "CVMFS_SVC_PREFECT__RESCUE_AFTER_S": str(SILENT_S),
    }
    with log.open("ab") as out:
        child = subprocess.Popen(
            [sys.executable, "-m", "service.cli", "gateway"], env=env, stdout=out, stderr=out
        )
    try:
        deadline = time.monotonic() + 60
        while True:
            try:
                httpx.get(f"http://127.0.0.1:{port}/api/v1", timeout=2).raise_for_status()
                break
            except httpx.HTTPError:
                assert child.poll() is None, log.read_text()[-3000:]
                assert time.monotonic() < deadline, "the gateway did not start in 60 s"
                time.sleep(0.2)
        yield child
    finally:
        if child.poll() is None:
            child.terminate()
            child.wait(timeout=30)


@pytest.fixture(scope="module")
def world(vault: Settings, prefect_server: Settings) -> Iterator[GatewayWorld]:
    with gateway_world(vault, ("crash",), flows=True) as w:
        yield w


def test_a_gateway_killed_mid_commit_publishes_nothing_half_and_a_retry_completes(
    world: GatewayWorld, tmp_path: Path
) -> None:
    fqrn = world.repos["crash"]
    port = free_port()
    publisher = world.publisher("crash")
    publisher.api_url = f"http://127.0.0.1:{port}/api/v1"
    writer = world.writer("crash")
    before = writer.current_manifest().revision
    run_name = f"gateway-commit-{fqrn}"
    log = tmp_path / "gateway.log"

    with gateway_process(port, log) as gateway:
        token = publisher.acquire_token(f"{fqrn}/sw")
        with publisher_transaction(world.storage("crash"), fqrn) as txn:
            for number in range(200):
                txn.add_file(f"/sw/pkg/file-{number:03d}", f"file {number}\n".encode())
            prepared = prepare(txn)
        send_objects(publisher, token, prepared.capture)
        outcome: dict[str, object] = {}

        def commit() -> None:
            try:
                outcome["reply"] = publisher.commit(
                    token, prepared.old_root_hash, prepared.new_root_hash
                )
            except httpx.HTTPError as error:
                outcome["error"] = error

        committing = threading.Thread(target=commit)
        committing.start()
        with get_client(sync_client=True) as client:
            deadline = time.monotonic() + 60
            while True:
                runs = client.read_flow_runs(
                    flow_run_filter=FlowRunFilter(name=FlowRunFilterName(any_=[run_name]))
                )
                if runs and runs[0].state is not None and runs[0].state.is_running():
                    killed_run = runs[0].id
                    break
                assert time.monotonic() < deadline, "the commit run never started"
                time.sleep(0.02)
        os.kill(gateway.pid, signal.SIGKILL)
        gateway.wait(timeout=30)
        committing.join(timeout=60)
    assert "error" in outcome, outcome  # the publisher saw the connection die

    # no half-published revision: the manifest is the old one or a complete new one
    after_kill = writer.current_manifest().revision
    assert after_kill in (before, before + 1)
    reader = RepositoryReader(world.storage("crash"), fqrn, [world.keys[fqrn].master_public_pem])
    assert fsck(reader).ok

    # the publisher retries the commit (its lease is in the registry database) on a restart
    with gateway_process(port, log):
        reply = publisher.commit(token, prepared.old_root_hash, prepared.new_root_hash)
        # the killed run ends Crashed and says what happened and what to do (its gateway is
        # gone: this one's sweep ends it), instead of staying Running for ever
        with get_client(sync_client=True) as client:
            deadline = time.monotonic() + 90
            while True:
                state = client.read_flow_run(killed_run).state
                assert state is not None
                if state.is_final():
                    break
                assert time.monotonic() < deadline, f"the killed run is still {state.name}"
                time.sleep(1)
    assert state.is_crashed(), state
    assert "the gateway process died during this commit" in (state.message or "")
    assert f"cvmfs_server publish {fqrn}" in (state.message or "")
    with get_client(sync_client=True) as client:  # another copy's sweep: nothing left to end
        assert end_orphaned_commits(client, SILENT_S) == []
    assert reply["status"] == "ok", reply
    assert reply["final_revision"] == after_kill + 1
    reader = RepositoryReader(world.storage("crash"), fqrn, [world.keys[fqrn].master_public_pem])
    report = fsck(reader, all_revisions=True)
    assert report.ok, report.problems
    assert reader.read("/sw/pkg/file-199") == b"file 199\n"
