"""The Prefect flow starter against the real test Prefect server, and the bridge riding out a
Prefect outage: events wait, then become runs, with nothing lost or duplicated.
"""

from __future__ import annotations

import uuid
from typing import Any

import pytest
from prefect import flow
from prefect.client.orchestration import get_client
from prefect.deployments.runner import RunnerDeployment
from pydantic import BaseModel, Field

from bridge.consumer import BridgeConsumer
from bridge.errors import PermanentStartError, TransientStartError
from bridge.flow_starter import PrefectFlowStarter
from service.settings import Settings
from stack.prefect_server import PrefectServer
from tests.test_bridge_support import (
    LOOKUP,
    REPO_A,
    declare,
    isolated,
    publish,
    ready_count,
    rgw_body,
    running,
    wait_for,
)

pytestmark = pytest.mark.stack


class EchoRequest(BaseModel):
    repo: str = Field(pattern=r"^[a-z0-9.-]+$")
    bucket: str
    changed_keys: list[str] = Field(default_factory=list)


@flow(name="bridge-echo")
def bridge_echo(req: EchoRequest) -> int:
    return len(req.changed_keys)


@pytest.fixture(scope="module")
def deployment(prefect_server: Settings) -> str:
    """A deployment of the trivial flow, registered with the server (runs are only created)."""
    runner_deployment = bridge_echo.to_deployment(name="echo")
    assert isinstance(runner_deployment, RunnerDeployment)  # sync call: not a coroutine
    runner_deployment.apply()
    return "bridge-echo/echo"


def starter_for(settings: Settings) -> PrefectFlowStarter:
    return PrefectFlowStarter(settings.prefect.api_url)


def params(repo: str = "alpha.sw.example.org") -> dict[str, object]:
    return {"req": {"repo": repo, "bucket": "alpha-bucket", "changed_keys": ["cvmfs/x"]}}


def test_same_key_same_run_other_key_other_run(prefect_server: Settings, deployment: str) -> None:
    starter = starter_for(prefect_server)
    key = f"test-{uuid.uuid4().hex}"
    first = starter(deployment, params(), key)
    assert starter(deployment, params(), key) == first
    assert starter(deployment, params(), f"{key}-other") != first
    with get_client(sync_client=True) as client:
        run = client.read_flow_run(uuid.UUID(first))
    assert run.idempotency_key == key
    assert run.parameters == params()
    assert "bridge" in run.tags


def test_invalid_parameters_are_permanent(prefect_server: Settings, deployment: str) -> None:
    with pytest.raises(PermanentStartError, match="409"):
        starter_for(prefect_server)(deployment, params("BAD NAME!"), f"t-{uuid.uuid4().hex}")


def test_unknown_deployment_is_retried(prefect_server: Settings) -> None:
    # A runner being redeployed briefly serves nothing: the consumer retries, bounded.
    with pytest.raises(TransientStartError, match="not found"):
        starter_for(prefect_server)("no-such-flow/none", params(), "t-unknown")


@pytest.mark.slow
def test_events_wait_while_prefect_is_down(
    rabbitmq: Settings, prefect_server: Settings, deployment: str
) -> None:
    iso = isolated(rabbitmq, sync_deployment=deployment, max_attempts=1000, retry_max_delay_s=1.0)
    declare(iso)
    server = PrefectServer(prefect_server, prefect_server.absolute_data_dir / PrefectServer.name)
    starter = starter_for(prefect_server)
    server.stop()
    try:
        with pytest.raises(TransientStartError, match="unreachable"):
            starter(deployment, params(), "t-while-down")
        key = "cvmfs/during-outage.txt"
        publish(iso.mq, iso.s3_key, [rgw_body(REPO_A.bucket, key)])
        calls: list[str] = []
        run_ids: list[str] = []

        def recording(deployment: str, parameters: dict[str, Any], idempotency_key: str) -> str:
            calls.append(idempotency_key)
            run_id = starter(deployment, parameters, idempotency_key)
            run_ids.append(run_id)
            return run_id

        consumer = BridgeConsumer(iso.mq, iso.config, LOOKUP, recording)
        with running(consumer):
            wait_for(lambda: len(calls) >= 2, "a few failed attempts while Prefect is down")
            server.start()
            # "Ready" counts miss a message that sits in the retry queue's TTL or unacked in
            # the consumer's open batch: wait for the run itself, then for nothing in hand.
            wait_for(lambda: len(run_ids) >= 1, "the run once Prefect is back", 180)
            wait_for(lambda: len(consumer) == 0, "the event acked")
        assert ready_count(iso.mq, iso.config.s3.queue) == 0
        assert ready_count(iso.mq, iso.config.s3.retry_queue) == 0
    finally:
        server.start()
    assert ready_count(iso.mq, iso.config.dead_letter_queue) == 0
    assert len(set(calls)) == 1  # every attempt asked for the same run
    assert len(run_ids) == 1  # acked once the run existed, never started again
    with get_client(sync_client=True) as client:
        run = client.read_flow_run(uuid.UUID(run_ids[0]))
    assert run.idempotency_key == calls[0]
    assert run.parameters["req"]["changed_keys"] == [key]
