"""A failed run ends with what an operator should do next, by the error's kind."""

from __future__ import annotations

import time
import uuid

import hvac
import pytest
from prefect import flow, get_client
from prefect.client.schemas.filters import LogFilter, LogFilterFlowRunId

from flows.failure_hint import explain_failure, explain_resumed_failure, failure_hint
from flows.maintenance import deprovision, purge_expired_keys, resign_whitelists
from flows.provision import provision, wire_waiting_bucket
from flows.rollback import rollback
from flows.sync import reconcile, sync
from flows.tag import tag
from flows.unpack import unpack, unpack_delete, unpack_gc, unpack_wishlist
from service.faults import BadInput
from service.keystore import KeyOwner, KeyStore
from service.settings import Settings

pytestmark = pytest.mark.stack


def test_each_kind_says_whether_retry_helps() -> None:
    assert "press Retry on this run" in failure_hint(ConnectionError("refused"))
    assert "a Retry fails the same way" in failure_hint(BadInput("no such key"))
    assert "a defect" in failure_hint(ZeroDivisionError("division by zero"))
    assert "(BadInput)" in failure_hint(BadInput("no such key"))
    # provision: the watcher resumes it, except bad input
    assert "resumes this provisioning on its own" in failure_hint(ConnectionError(), resumed=True)
    assert "a Retry fails the same way" in failure_hint(BadInput("taken"), resumed=True)


def test_every_deployed_flow_explains_its_failure() -> None:
    deployed = [provision, wire_waiting_bucket, deprovision, sync, reconcile, rollback, tag]
    deployed += [resign_whitelists, purge_expired_keys, unpack, unpack_delete, unpack_gc]
    deployed += [unpack_wishlist]
    assert [f.name for f in deployed if explain_failure not in f.on_failure_hooks] == ["provision"]
    assert explain_resumed_failure in provision.on_failure_hooks


@flow(name="reads-keys-from-a-vault-that-is-down", on_failure=[explain_failure])
def reads_keys_from_a_vault_that_is_down() -> None:
    nobody = hvac.Client(url="http://127.0.0.1:9", token="unused")  # nothing listens on :9
    KeyStore(nobody).read(KeyOwner.personal(str(uuid.uuid4())), "down.sw.example.org")


def test_a_run_failed_by_a_dependency_says_to_retry_once_it_answers(
    prefect_server: Settings,
) -> None:
    state = reads_keys_from_a_vault_that_is_down(return_state=True)
    assert state.is_failed()
    run_id = state.state_details.flow_run_id
    deadline = time.monotonic() + 30
    with get_client(sync_client=True) as client:
        while True:
            logs = client.read_logs(LogFilter(flow_run_id=LogFilterFlowRunId(any_=[run_id])))
            hints = [log.message for log in logs if log.message.startswith("what next:")]
            if hints or time.monotonic() > deadline:
                break
            time.sleep(0.5)
    assert len(hints) == 1, [log.message for log in logs]
    assert "did not answer (VaultUnavailable)" in hints[0]
    assert "press Retry on this run" in hints[0]
