"""Provision end to end on the real stack: request → keys in OpenBao → repository readable over
HTTP with the bundle's key → bucket events reach the bridge's queue → reply on the status queue.
"""

from __future__ import annotations

import json
import time
import uuid
from pathlib import Path

import hvac
import pika
import pytest

from bridge.config import BridgeConfig
from buckets.s3_clients import demo_s3
from cvmfs.reader import RepositoryReader
from flows.provision import provision
from service.auth import TokenVerifier
from service.client_config import stratum0_url
from service.keystore import KeyOwner, secret_path
from service.replies import REPLY_QUEUE
from service.repositories import RepositoryRegistry
from service.settings import Settings
from tests.fixtures_service import authorized_request
from tests.issuer import TestIssuer

pytest_plugins = ("tests.fixtures_auth", "tests.fixtures_service")
pytestmark = [pytest.mark.stack, pytest.mark.slow]
EVENT_WAIT_S = 90.0  # a new persistent topic queue is picked up by RGW within 30 s


def _drain(channel: pika.adapters.blocking_connection.BlockingChannel, queue: str) -> list[bytes]:
    bodies = []
    while True:
        method, _props, body = channel.basic_get(queue, auto_ack=True)
        if method is None:
            return bodies
        bodies.append(body)


def test_request_becomes_a_ready_mountable_repository(
    service_settings: Settings,
    oidc_issuer: TestIssuer,
    token_verifier: TokenVerifier,
    tmp_path: Path,
) -> None:
    settings = service_settings
    user = f"u{uuid.uuid4().hex[:6]}"
    bucket = f"{user}-software"
    demo_s3(settings).create_bucket(Bucket=bucket)
    request = authorized_request(settings, oidc_issuer, token_verifier, user, bucket)
    fqrn = request.fqrn
    assert fqrn == f"{user}-personal.{settings.repository_domain}"

    # Delivered three times (e.g. AMQP redelivery, an operator's retry): one repository.
    replies = [provision(request) for _ in range(3)]
    assert {reply.status for reply in replies} == {"ok"}

    # Keys in OpenBao at the documented path, written once (KV version 1).
    client = hvac.Client(url=settings.vault.addr, token=settings.vault.token.get_secret_value())
    path = secret_path(KeyOwner.personal(request.identity.subject), fqrn)
    assert path == f"sub-{user}/cvmfs_keys/{fqrn}"
    secret = client.secrets.kv.v2.read_secret_version(
        path=path, mount_point=settings.vault.kv_mount, raise_on_deleted_version=True
    )
    assert secret["data"]["metadata"]["version"] == 1
    fields = secret["data"]["data"]
    assert {"publicKey", "masterKey", "certificateKey", "gatewayKey", "repositoryKey"} <= set(
        fields
    )

    # The repository is readable at its stratum-0 URL with the bundle's public key.
    public_key = tmp_path / f"{fqrn}.pub"
    public_key.write_text(fields["publicKey"])
    with RepositoryReader.open(stratum0_url(settings, fqrn), fqrn, [public_key]) as reader:
        assert reader.manifest.revision == 1
        assert reader.listdir("") == []

    registry = RepositoryRegistry.open(settings)
    try:
        repository = registry.require(fqrn)
        assert repository.status == "ready"
        assert repository.bucket_owner_id == settings.ceph.demo_user
        assert [r.fqrn for r in registry.visible_to(request.identity.subject, [])] == [fqrn]
    finally:
        registry.close()

    connection = pika.BlockingConnection(
        pika.ConnectionParameters(settings.rabbitmq.host, settings.rabbitmq.port)
    )
    try:
        channel = connection.channel()
        reply_bodies = [json.loads(b) for b in _drain(channel, REPLY_QUEUE)]
        ours = [b for b in reply_bodies if b["request_id"] == request.request_id]
        assert [b["status"] for b in ours] == ["ok", "ok", "ok"]

        # An upload under cvmfs/ produces a message on the queue the bridge consumes.
        queue = BridgeConfig().s3.queue
        demo_s3(settings).put_object(Bucket=bucket, Key="cvmfs/hello.txt", Body=b"hello")
        keys: list[str] = []
        deadline = time.monotonic() + EVENT_WAIT_S
        while time.monotonic() < deadline and not keys:
            for body in _drain(channel, queue):
                record = json.loads(body)["Records"][0]["s3"]
                if record["bucket"]["name"] == bucket:
                    keys.append(record["object"]["key"])
            time.sleep(0.2)
        assert keys == ["cvmfs/hello.txt"]
    finally:
        connection.close()
