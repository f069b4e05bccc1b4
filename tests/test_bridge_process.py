"""The bridge as a process: a crash redelivers to the same run, SIGTERM stops cleanly, and a
RabbitMQ restart while consuming loses nothing. Real broker, real processes, real signals.

Run as `python -m tests.test_bridge_process <spec.json>` it is the child: a bridge whose
flow starter appends its calls to a file (and, in mode "crash", SIGKILLs itself right after
the run was created, before any ack).
"""

from __future__ import annotations

import json
import logging
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest

from bridge.config import BridgeConfig
from bridge.consumer import BridgeConsumer
from service.settings import RabbitMQSettings, Settings
from stack.rabbitmq import RabbitMQ
from tests.test_bridge_support import (
    LOOKUP,
    REPO_A,
    Isolated,
    RecordingStarter,
    declare,
    isolated,
    publish,
    ready_count,
    rgw_body,
    running,
    wait_for,
)

ROOT = Path(__file__).resolve().parents[1]


# --- the child ---------------------------------------------------------------------------------


class FileRecordingStarter:
    def __init__(self, record: Path, mode: str) -> None:
        self.record = record
        self.mode = mode

    def _write(self, entry: dict[str, Any]) -> None:
        with self.record.open("a") as out:
            out.write(json.dumps(entry) + "\n")
            out.flush()
            os.fsync(out.fileno())

    def __call__(self, deployment: str, parameters: dict[str, Any], idempotency_key: str) -> str:
        if self.mode == "slow":
            self._write({"begin": idempotency_key})
            time.sleep(2.0)  # a SIGTERM arrives meanwhile: the call must still complete
        self._write({"deployment": deployment, "parameters": parameters, "key": idempotency_key})
        if self.mode == "crash":
            os.kill(os.getpid(), signal.SIGKILL)
        return "run-1"


def child_main(spec_path: str) -> None:
    from bridge.main import run_bridge

    spec = json.loads(Path(spec_path).read_text())
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    settings = Settings(rabbitmq=RabbitMQSettings.model_validate(spec["mq"]))
    starter = FileRecordingStarter(Path(spec["record"]), spec["mode"])
    run_bridge(settings, LOOKUP, BridgeConfig.model_validate(spec["config"]), starter)


# --- the tests ---------------------------------------------------------------------------------

pytestmark = pytest.mark.stack


class Child:
    def __init__(self, iso: Isolated, tmp: Path, mode: str) -> None:
        self.record = tmp / f"calls-{mode}.jsonl"
        self.log = tmp / f"bridge-{mode}.log"
        mq = iso.mq.model_dump() | {"password": iso.mq.password.get_secret_value()}
        spec = {
            "mq": mq,
            "config": iso.config.model_dump(mode="json"),
            "record": str(self.record),
            "mode": mode,
        }
        spec_path = tmp / f"spec-{mode}.json"
        spec_path.write_text(json.dumps(spec))
        env = {**os.environ, "PYTHONPATH": str(ROOT)}
        with self.log.open("wb") as log:
            self.process = subprocess.Popen(
                [sys.executable, "-m", "tests.test_bridge_process", str(spec_path)],
                cwd=ROOT,
                env=env,
                stdout=log,
                stderr=subprocess.STDOUT,
            )

    def entries(self) -> list[dict[str, Any]]:
        if not self.record.exists():
            return []
        return [json.loads(line) for line in self.record.read_text().splitlines()]

    def calls(self) -> list[dict[str, Any]]:
        return [entry for entry in self.entries() if "key" in entry]

    def logged(self, text: str) -> bool:
        return self.log.exists() and text in self.log.read_text()

    def wait(self, timeout_s: float = 60.0) -> int:
        try:
            return self.process.wait(timeout=timeout_s)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()
            raise AssertionError(f"bridge child still running after {timeout_s:.0f} s") from None


def test_redelivery_after_a_crash_maps_to_the_same_run(rabbitmq: Settings, tmp_path: Path) -> None:
    iso = isolated(rabbitmq)
    declare(iso)
    keys = ["cvmfs/a.txt", "cvmfs/b/c.txt", "cvmfs/d e.txt"]
    publish(
        iso.mq,
        iso.s3_key,
        [rgw_body(REPO_A.bucket, key, sequencer=f"{i:02}") for i, key in enumerate(keys)],
    )
    crashing = Child(iso, tmp_path, "crash")
    assert crashing.wait() == -signal.SIGKILL
    [first] = crashing.calls()  # the run was created, then the process died before acking
    assert first["parameters"]["req"]["changed_keys"] == sorted(keys)
    wait_for(lambda: ready_count(iso.mq, iso.config.s3.queue) == len(keys), "the redelivery")

    starter = RecordingStarter()
    with running(BridgeConsumer(iso.mq, iso.config, LOOKUP, starter)):
        wait_for(lambda: len(starter.snapshot()) == 1, "the run after the crash")
        wait_for(lambda: ready_count(iso.mq, iso.config.s3.queue) == 0, "an empty queue")
    [second] = starter.calls
    assert second.idempotency_key == first["key"]
    assert second.parameters == first["parameters"]
    assert ready_count(iso.mq, iso.config.dead_letter_queue) == 0


def test_sigterm_leaves_an_open_batch_for_redelivery(rabbitmq: Settings, tmp_path: Path) -> None:
    iso = isolated(rabbitmq, coalesce_window_s=300.0)
    declare(iso)
    publish(iso.mq, iso.s3_key, [rgw_body(REPO_A.bucket, f"cvmfs/{n}") for n in "xy"])
    child = Child(iso, tmp_path, "record")
    wait_for(lambda: child.logged("event=consuming"), "the child to consume")
    wait_for(lambda: ready_count(iso.mq, iso.config.s3.queue) == 0, "both messages delivered")
    child.process.send_signal(signal.SIGTERM)
    assert child.wait(timeout_s=30) == 0
    assert child.logged("event=stopping")
    assert child.calls() == []  # the batch was still open: no run, nothing acked
    assert ready_count(iso.mq, iso.config.s3.queue) == 2  # back in the queue, nothing lost


def test_sigterm_finishes_the_run_in_hand(rabbitmq: Settings, tmp_path: Path) -> None:
    iso = isolated(rabbitmq, coalesce_window_s=0.0)
    declare(iso)
    publish(iso.mq, iso.s3_key, [rgw_body(REPO_A.bucket, "cvmfs/x")])
    child = Child(iso, tmp_path, "slow")
    wait_for(lambda: any("begin" in e for e in child.entries()), "the run to begin")
    child.process.send_signal(signal.SIGTERM)
    assert child.wait(timeout_s=30) == 0
    [call] = child.calls()
    assert call["parameters"]["req"]["changed_keys"] == ["cvmfs/x"]
    assert ready_count(iso.mq, iso.config.s3.queue) == 0  # acked before the process left


@pytest.mark.slow
def test_broker_restart_while_consuming_loses_nothing(rabbitmq: Settings) -> None:
    iso = isolated(rabbitmq, coalesce_window_s=3.0, reconcile_after_reconnect_s=1.0)
    declare(iso)
    broker = RabbitMQ(rabbitmq, rabbitmq.absolute_data_dir / RabbitMQ.name)
    starter = RecordingStarter()
    before = [f"cvmfs/before/{n}" for n in range(3)]
    after = [f"cvmfs/after/{n}" for n in range(2)]

    def syncs() -> list[list[str]]:
        return [
            call.parameters["req"]["changed_keys"]
            for call in starter.snapshot()
            if call.deployment == iso.config.sync_deployment
        ]

    with running(BridgeConsumer(iso.mq, iso.config, LOOKUP, starter)):
        publish(iso.mq, iso.s3_key, [rgw_body(REPO_A.bucket, key) for key in before])
        # Delivered into the bridge's open batch, not acked yet, when the broker goes down.
        wait_for(lambda: ready_count(iso.mq, iso.config.s3.queue) == 0, "delivery")
        assert starter.snapshot() == []
        broker.stop()
        broker.start()
        wait_for(lambda: len(syncs()) >= 1, "the run after the restart", 120)
        publish(iso.mq, iso.s3_key, [rgw_body(REPO_A.bucket, key) for key in after])
        wait_for(lambda: len(syncs()) >= 2, "a run for the new events")
        wait_for(lambda: ready_count(iso.mq, iso.config.s3.queue) == 0, "an empty queue")
        # What RGW could not deliver while the broker was away: one catch-up reconcile.
        wait_for(
            lambda: any(c.deployment == iso.config.reconcile_deployment for c in starter.calls),
            "the catch-up reconcile",
        )
    assert syncs() == [before, after]  # each event in exactly one run, none lost
    catch_ups = [c for c in starter.calls if c.deployment == iso.config.reconcile_deployment]
    assert len(catch_ups) == 1
    assert catch_ups[0].parameters == {"req": {"repo": None, "dry_run": False}}
    assert catch_ups[0].idempotency_key.startswith("reconcile-after-reconnect-")
    assert ready_count(iso.mq, iso.config.dead_letter_queue) == 0


def test_the_bridge_command_starts_consuming_and_stops_on_sigterm(
    rabbitmq: Settings, stack_env: dict[str, str], tmp_path: Path
) -> None:
    log = tmp_path / "bridge.log"
    with log.open("wb") as out:
        process = subprocess.Popen(
            [sys.executable, "-m", "service.cli", "bridge"],  # what ./svc bridge runs
            cwd=tmp_path,  # the registry database lands in the stack's data dir, not here
            env={**stack_env, "PYTHONPATH": str(ROOT)},
            stdout=out,
            stderr=subprocess.STDOUT,
        )
    try:
        wait_for(lambda: "event=consuming" in log.read_text(), "the bridge to consume", 60)
        process.send_signal(signal.SIGTERM)
        assert process.wait(timeout=30) == 0, log.read_text()
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
    assert "event=stopping" in log.read_text()


if __name__ == "__main__":
    child_main(sys.argv[1])
