"""The `rollback` flow on the real stack, started with the parameters the API sends.

It holds the repository's publish lock, publishes a revision with the tagged content, records it
in the registry, and a second run of the same request publishes nothing more.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator

import pytest
from prefect import get_client

from cvmfs.errors import NotFoundError
from cvmfs.reader import RepositoryReader
from cvmfs.storage import LocalStorage
from flows.rollback import RollbackRequest, roll_back, rollback
from flows.tag import TagRequest, tag
from service.settings import Settings
from tasks.locks import create_publish_lock
from tests.conftest import settings_env
from tests.test_api_support import ApiWorld, api_world

pytestmark = [pytest.mark.stack, pytest.mark.slow]


@pytest.fixture(scope="module")
def world(
    rabbitmq: Settings, vault: Settings, prefect_server: Settings, stratum0_http: Settings
) -> Iterator[ApiWorld]:
    with api_world(rabbitmq, vault) as started:
        yield started


def _reader(world: ApiWorld) -> RepositoryReader:
    storage = LocalStorage(world.settings.absolute_data_dir / "stratum0" / world.alice_repo)
    public_key = world.keys[world.alice_repo].master_public_pem
    return RepositoryReader(storage, world.alice_repo, [public_key])


def test_rollback_requested_through_the_api_restores_the_tag(
    world: ApiWorld, monkeypatch: pytest.MonkeyPatch
) -> None:
    for name, value in settings_env(world.settings).items():
        monkeypatch.setenv(name, value)  # the flow reads its settings at its edge
    create_publish_lock(world.alice_repo)  # provisioning creates it; this repo skipped that
    with world.client(world.alice()) as client:
        started = client.post(
            f"/repositories/{world.alice_repo}/rollback",
            json={"tag": "v1"},
            headers={"Idempotency-Key": uuid.uuid4().hex},
        )
    assert started.status_code == 202, started.text
    with get_client(sync_client=True) as prefect:
        run = prefect.read_flow_run(uuid.UUID(started.json()["flow_run_id"]))
    request = RollbackRequest.model_validate(run.parameters["req"])

    result = rollback(request)
    assert (result.revision, result.already_done) == (4, False)
    with _reader(world) as reader:
        assert reader.revision == 4
        assert reader.read("/docs/README") == b"read me\n"
        assert reader.read("/software/tool") == b"#!/bin/sh\necho v1\n"
        assert not reader.exists("/software/extra")
    assert world.registry.require(world.alice_repo).current_revision == 4

    again = rollback(request)
    assert (again.revision, again.already_done) == (4, True)
    with _reader(world) as reader:
        assert reader.revision == 4

    with world.client(world.alice()) as client:
        history = client.get(f"/repositories/{world.alice_repo}/history").json()
        status = client.get(f"/repositories/{world.alice_repo}").json()
    newest = history["revisions"][0]
    assert newest["revision"] == 4 == status["current_revision"]
    assert newest["description"] == f"rollback to v1 (request {request.request_id})"
    assert {(c["path"], c["change"]) for c in newest["changes"]} == {
        ("/docs/README", "added"),
        ("/software/extra", "removed"),
        ("/software/tool", "modified"),
    }


def test_a_rollback_to_a_missing_tag_fails_and_is_recorded(world: ApiWorld) -> None:
    request = RollbackRequest(repo=world.bob_repo, tag="never-tagged", request_id="rb-missing")
    with pytest.raises(NotFoundError):
        roll_back(world.settings, request)
    last_error = world.registry.require(world.bob_repo).last_error
    assert last_error is not None and "never-tagged" in last_error


def test_a_tag_requested_through_the_api_names_the_current_revision(
    world: ApiWorld, monkeypatch: pytest.MonkeyPatch
) -> None:
    for name, value in settings_env(world.settings).items():
        monkeypatch.setenv(name, value)
    create_publish_lock(world.bob_repo)
    with world.client(world.bob()) as client:
        refused = client.post(f"/repositories/{world.bob_repo}/tag", json={"tag": "bad tag"})
        started = client.post(
            f"/repositories/{world.bob_repo}/tag", json={"tag": "first", "description": "mine"}
        )
    with world.client(world.alice()) as client:
        foreign = client.post(f"/repositories/{world.bob_repo}/tag", json={"tag": "x"})
    assert refused.status_code == 400, refused.text
    assert "invalid tag name" in refused.json()["reason"]
    assert foreign.status_code == 403, foreign.text
    assert started.status_code == 202, started.text
    assert started.json()["deployment"] == "tag/tag"
    with get_client(sync_client=True) as prefect:
        run = prefect.read_flow_run(uuid.UUID(started.json()["flow_run_id"]))
    request = TagRequest.model_validate(run.parameters["req"])

    result = tag(request)
    assert (result.revision, result.already_done) == (1, False)
    assert tag(request).already_done
    storage = LocalStorage(world.settings.absolute_data_dir / "stratum0" / world.bob_repo)
    public_key = world.keys[world.bob_repo].master_public_pem
    with RepositoryReader(storage, world.bob_repo, [public_key]) as reader:
        found = reader.find_tag("first")
        assert (found.revision, found.description) == (1, "mine")
