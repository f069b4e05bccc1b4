"""The steps of provisioning one repository; each is idempotent, so a retry converges.

Secrets never travel as task parameters or results: key sets are generated, stored and read
inside the tasks that need them.
"""

from __future__ import annotations

import datetime as dt
from typing import TYPE_CHECKING

import pika
from prefect import get_run_logger
from prefect.artifacts import create_markdown_artifact

from bridge.amqp import connection_parameters
from buckets.bucket_wiring import NOTIFICATION_PREFIX, BucketWiring, wire_bucket
from buckets.ownership import expected_owner, inspect_bucket, judge_bucket
from buckets.s3_clients import bucket_agent_s3, bucket_agent_sns
from cvmfs.keys import generate_keyset
from cvmfs.writer import MANIFEST_KEY, RepositoryWriter, create_repository
from service.client_config import ClientConfigBundle, build_client_config
from service.keystore import KeyOwner, KeyStore, vault_client
from service.messages import AuthorizedProvisionRequest, ProvisionReply
from service.policies import PublisherAccess
from service.replies import publish_reply
from service.repositories import BucketState, Repository, RepositoryClaim, RepositoryRegistry
from service.settings import Settings
from tasks.steps import step
from tasks.storage import ensure_stratum0_storage, repository_storage

if TYPE_CHECKING:
    from mypy_boto3_s3 import S3Client


def key_owner(request: AuthorizedProvisionRequest) -> KeyOwner:
    return KeyOwner.for_repository(request.kind, request.identity.subject, request.group)


@step("claim repository name")
def claim_repository(settings: Settings, request: AuthorizedProvisionRequest) -> Repository:
    """Record the request and the repository; a name or bucket taken by others is refused."""
    registry = RepositoryRegistry.open(settings)
    try:
        registry.record_request(request.request_id, request.fqrn, request.identity.subject)
        return registry.claim(
            RepositoryClaim(
                fqrn=request.fqrn,
                kind=request.kind,
                owner_subject=request.identity.subject,
                owner_username=request.identity.username,
                group=request.group,
                bucket=request.bucket,
            )
        )
    finally:
        registry.close()


@step("generate keys and store them in Vault")
def store_keys(settings: Settings, request: AuthorizedProvisionRequest) -> str:
    """Generate a key set only when Vault has none; the first stored set always wins."""
    store = KeyStore.from_settings(settings.vault)
    owner = key_owner(request)
    if not store.exists(owner, request.fqrn):
        keys = generate_keyset(request.fqrn, gateway_key_id=request.fqrn)
        store.store_if_absent(owner, request.fqrn, keys)
    return store.read(owner, request.fqrn).master_public_pem


@step("create repository in stratum-0")
def create_stratum0(settings: Settings, request: AuthorizedProvisionRequest) -> int:
    """mkfs unless the repository exists; an existing one must verify with the stored keys."""
    keys = KeyStore.from_settings(settings.vault).read(key_owner(request), request.fqrn)
    ensure_stratum0_storage(settings)
    storage = repository_storage(settings, request.fqrn)
    if storage.exists(MANIFEST_KEY):
        writer = RepositoryWriter.open(storage, request.fqrn, keys)
        return writer.current_manifest().revision
    _writer, result = create_repository(storage, request.fqrn, keys)
    return result.revision


@step("grant publisher access to the keys")
def grant_publisher_access(settings: Settings, request: AuthorizedProvisionRequest) -> str:
    """A Vault policy that reads this repository's keys and nothing else."""
    access = PublisherAccess(vault_client(settings.vault), settings.vault.kv_mount)
    return access.grant(key_owner(request), request.fqrn)


@step("connect bucket")
def connect_bucket(settings: Settings, fqrn: str) -> BucketState:
    """Wire the bucket if it exists and is the requester's, else record why it is not wired.

    A bucket that does not exist yet is not a failure: the repository waits for it, and the
    bridge's repository watcher starts the `wire-bucket` flow when it appears. Wiring is
    topic, notification and queues, then the bucket's RGW owner for the bridge's event check.
    """
    logger = get_run_logger()
    registry = RepositoryRegistry.open(settings)
    try:
        repository = registry.require(fqrn)
        wanted = expected_owner(
            settings.provisioning, repository.owner_username, repository.owner_subject
        )
        s3 = bucket_agent_s3(settings)
        check = inspect_bucket(s3, repository.bucket)
        verdict = judge_bucket(check, repository.bucket, wanted, settings.s3_public_url)
        if verdict.state == "wired":
            assert check.owner_id is not None
            _wire(settings, s3, fqrn, repository.bucket)
            registry.set_bucket_owner(fqrn, check.owner_id)
        logger.info(
            "bucket repo=%s bucket=%s state=%s owner=%s expected_owner=%s",
            fqrn,
            repository.bucket,
            verdict.state,
            check.owner_id,
            wanted,
        )
        return registry.record_bucket_state(
            fqrn, repository.bucket, verdict.state, verdict.message, check.owner_id
        )
    finally:
        registry.close()


@step("check the bucket for objects put before wiring")
def bucket_holds_objects(settings: Settings, fqrn: str) -> bool:
    """Whether the wired bucket already has objects under `cvmfs/`: those put before its
    notification existed made no event, so only a backfill publishes them."""
    registry = RepositoryRegistry.open(settings)
    try:
        bucket = registry.require(fqrn).bucket
    finally:
        registry.close()
    listing = bucket_agent_s3(settings).list_objects_v2(
        Bucket=bucket, Prefix=NOTIFICATION_PREFIX, MaxKeys=1
    )
    return bool(listing.get("KeyCount", 0))


def _wire(settings: Settings, s3: S3Client, fqrn: str, bucket: str) -> BucketWiring:
    connection = pika.BlockingConnection(connection_parameters(settings.rabbitmq))
    try:
        return wire_bucket(
            s3=s3,
            sns=bucket_agent_sns(settings),
            channel=connection.channel(),
            rabbitmq=settings.rabbitmq,
            fqrn=fqrn,
            bucket=bucket,
            persistent=settings.ceph.persistent_topics,
        )
    finally:
        connection.close()


@step("publish client configuration")
def publish_client_config(
    settings: Settings, request: AuthorizedProvisionRequest, public_key_pem: str
) -> ClientConfigBundle:
    bundle = build_client_config(settings, request.fqrn, public_key_pem)
    files = "\n".join(
        f"**{path}**\n\n```\n{content.rstrip()}\n```\n" for path, content in bundle.files.items()
    )
    create_markdown_artifact(
        key=f"client-config-{request.fqrn.replace('.', '-')}",
        markdown=f"# Mount {request.fqrn}\n\n{bundle.instructions}\n{files}",
        description=f"Client configuration of {request.fqrn}",
    )
    return bundle


@step("mark repository ready")
def mark_ready(settings: Settings, request: AuthorizedProvisionRequest, revision: int) -> None:
    registry = RepositoryRegistry.open(settings)
    try:
        registry.record_publish(request.fqrn, revision)
        registry.set_status(request.fqrn, "ready")
        registry.clear_provision_retry(request.fqrn)
        registry.finish_request(request.request_id, "ok")
    finally:
        registry.close()


@step("record provisioning failure")
def mark_failed(
    settings: Settings, request: AuthorizedProvisionRequest, reason: str, resumable: bool
) -> None:
    """Record the failure; a resumable one is resumed by the bridge's repository watcher
    (bridge/repository_watch.py), from the registry's record, with no new request."""
    registry = RepositoryRegistry.open(settings)
    try:
        if registry.get(request.fqrn) is not None:
            registry.set_status(request.fqrn, "failed", last_error=reason)
            if resumable:
                delay = dt.timedelta(seconds=settings.provisioning.resume_first_delay_s)
                registry.schedule_provision_retry(request.fqrn, request.request_id, delay)
            else:
                registry.clear_provision_retry(request.fqrn)
        if registry.request(request.request_id) is not None:
            registry.finish_request(request.request_id, "failed", reason)
    finally:
        registry.close()


@step("reply on the status queue")
def send_reply(settings: Settings, reply: ProvisionReply) -> None:
    publish_reply(settings, reply)
