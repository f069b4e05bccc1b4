"""The gateway beside the bucket sync on one provisioned repository (real provision flow, RGW
bucket, Prefect, OpenBao): a gateway commit and a bucket sync on other paths run at the same
time and both publish; a full backfill of the bucket leaves what the gateway published; the
gateway refuses a lease on what the bucket feeds.
"""

from __future__ import annotations

import threading
from pathlib import Path

import pytest

from buckets.s3_clients import demo_s3
from cvmfs.fsck import fsck
from cvmfs.keys import parse_gateway_key
from flows.sync import sync
from gateway.app import create_app
from gateway.publisher import Publisher, prepare, publisher_transaction, send_objects
from service.keystore import KeyOwner, KeyStore
from service.repositories import RepositoryRegistry
from service.settings import Settings
from tasks.storage import repository_storage
from tasks.sync import SyncRequest
from tests.fixtures_service import ProvisionedRepository, open_reader
from tests.test_api_support import ServedApp, free_port

pytest_plugins = ("tests.fixtures_auth", "tests.fixtures_service")
pytestmark = [pytest.mark.stack, pytest.mark.slow]


def test_gateway_and_bucket_sync_publish_side_by_side(
    service_settings: Settings, provisioned: ProvisionedRepository, tmp_path: Path
) -> None:
    settings = service_settings
    fqrn, bucket = provisioned.fqrn, provisioned.bucket
    registry = RepositoryRegistry.open(settings)
    try:
        repository = registry.require(fqrn)
    finally:
        registry.close()
    owner = KeyOwner.for_repository(repository.kind, repository.owner_subject, repository.group)
    keys = KeyStore.from_settings(settings.vault).read(owner, fqrn)
    assert keys.gateway_key is not None  # provisioning generated it
    key_id, secret = parse_gateway_key(keys.gateway_key)

    s3 = demo_s3(settings)
    s3.put_object(Bucket=bucket, Key="cvmfs/from-bucket/a.txt", Body=b"from the bucket\n")
    port = free_port()
    with ServedApp(create_app(settings), port):
        publisher = Publisher(f"http://127.0.0.1:{port}/api/v1", key_id, secret)
        token = publisher.acquire_token(f"{fqrn}/from-gateway")
        with publisher_transaction(repository_storage(settings, fqrn), fqrn) as txn:
            txn.add_file("/from-gateway/b.txt", b"from the gateway\n")
            prepared = prepare(txn)
        send_objects(publisher, token, prepared.capture)

        results: dict[str, object] = {}

        def run_sync() -> None:
            results["sync"] = sync(SyncRequest(repo=fqrn, changed_keys=["cvmfs/from-bucket/a.txt"]))

        syncing = threading.Thread(target=run_sync)
        syncing.start()
        reply = publisher.commit(token, prepared.old_root_hash, prepared.new_root_hash)
        syncing.join(timeout=300)
        assert reply["status"] == "ok", reply
        assert isinstance(results["sync"], int)
        # the two publishes took the same lock one after the other
        assert {reply["final_revision"], results["sync"]} == {2, 3}

        # a backfill of the whole bucket (what reconcile runs) keeps the gateway's files
        sync(SyncRequest(repo=fqrn))
        # and the gateway refuses a lease on what the bucket feeds
        refused = publisher.acquire(f"{fqrn}/from-bucket")
        assert refused["status"] == "error" and "path_fed_by_bucket" in refused["reason"]

    with open_reader(settings, fqrn, tmp_path) as reader:
        assert reader.read("/from-bucket/a.txt") == b"from the bucket\n"
        assert reader.read("/from-gateway/b.txt") == b"from the gateway\n"
        report = fsck(reader, all_revisions=True)
        assert report.ok, report.problems
