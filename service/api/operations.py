"""What a user can do with repositories, as plain functions of (services, caller, input).

The JSON routes (service/api/routes.py) and the dashboard's pages (dashboard/) both call these,
so each operation and its authorization (service/api/security.py) exist once. Every function
blocks (registry, Vault, RabbitMQ, Prefect); callers run them in a worker thread.
"""

from __future__ import annotations

import json
import logging
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from pydantic import SecretStr, ValidationError

from bridge.errors import BrokerUnavailable, PermanentStartError, TransientStartError
from cvmfs.errors import CvmfsError, NotFoundError
from cvmfs.keys import KeySet
from cvmfs.reader import RepositoryReader
from cvmfs.writer import validate_tag_name
from service.api import browse, runs
from service.api.errors import (
    BackendError,
    BadRequest,
    Conflict,
    Forbidden,
    NotFound,
    NotPublished,
    RateLimited,
    Unavailable,
)
from service.api.models import (
    BucketStatus,
    ClientConfig,
    CreateRepository,
    History,
    KeyRefusal,
    KeySetResponse,
    Listing,
    PendingEvents,
    PublisherSetup,
    RepositoryDetail,
    RepositoryList,
    RepositorySummary,
    RequestAccepted,
    RequestStatus,
    RollbackRequest,
    RunStarted,
    SyncRequest,
    TagRequest,
)
from service.api.security import Caller, Right
from service.api.services import ApiServices
from service.api.stratum0 import key_owner
from service.client_config import build_client_config
from service.keystore import (
    SERVICE_KEY_OWNER,
    KeysNotFound,
    KeystoreError,
    VaultUnavailable,
    secret_path,
    unpacked_fqrn,
)
from service.messages import ProvisionRequest, Refusal
from service.repositories import BucketState, Repository, RequestConflict
from service.settings import Settings

log = logging.getLogger("cvmfs.api")

REQUEST_ROUTING_KEY = "repository.request"


# -- shared steps ---------------------------------------------------------------------------


def take_rate(svc: ApiServices, caller: Caller) -> None:
    """One mutating call from `caller`, or RateLimited saying when to retry."""
    decision = svc.rate_limiter.take(caller.subject)
    if not decision.allowed:
        raise RateLimited(
            f"too many changes requested; retry in {decision.retry_after_s} s",
            decision.retry_after_s,
        )


def repository(svc: ApiServices, fqrn: str) -> Repository:
    found = svc.registry.get(fqrn)
    if found is None:
        raise NotFound(f"no repository {fqrn!r}")
    return found


def authorized(svc: ApiServices, caller: Caller, fqrn: str, right: Right) -> Repository:
    found = repository(svc, fqrn)
    caller.require(found, right)
    return found


def keyset(svc: ApiServices, repo: Repository) -> KeySet:
    try:
        return svc.key_store().read(key_owner(repo), repo.fqrn)
    except KeysNotFound:
        raise NotPublished(f"{repo.fqrn} has no keys yet: provisioning has not finished") from None
    except VaultUnavailable:
        raise Unavailable("the key store (Vault) is unavailable; retry later") from None
    except KeystoreError as error:
        log.error("event=keystore-error fqrn=%s error=%s", repo.fqrn, error)
        raise BackendError(f"the key store refused reading the keys of {repo.fqrn}") from None


def unpacked_public_key(svc: ApiServices, fqrn: str) -> str:
    try:
        return svc.key_store().read(SERVICE_KEY_OWNER, fqrn).master_public_pem
    except KeysNotFound:
        raise NotPublished(f"{fqrn} does not exist yet: no image has been unpacked") from None
    except VaultUnavailable:
        raise Unavailable("the key store (Vault) is unavailable; retry later") from None
    except KeystoreError as error:
        log.error("event=keystore-error fqrn=%s error=%s", fqrn, error)
        raise BackendError(f"the key store refused reading the keys of {fqrn}") from None


def unpacked_images(svc: ApiServices, limit: int = 100) -> list[str]:
    """The images in `unpacked.<domain>`, as their `<registry>/<repository>:<tag>` links
    (images/layout.py), for every signed-in user; NotPublished before the first unpack."""
    fqrn = unpacked_fqrn(svc.settings.repository_domain)
    public_pem = unpacked_public_key(svc, fqrn)
    try:
        opened = RepositoryReader(svc.storage_for(fqrn), fqrn, [public_pem])
    except NotFoundError:
        raise NotPublished(f"{fqrn} does not exist yet: no image has been unpacked") from None
    except CvmfsError as error:
        log.error("event=stratum0-unreadable fqrn=%s error=%s", fqrn, error)
        raise BackendError(f"the published content of {fqrn} cannot be read") from None
    links: list[str] = []
    try:
        # Registry and project directories hold the links; dot entries (.flat, .metadata,
        # .cvmfscatalog) are the layout's own.
        pending = [""]
        while pending and len(links) < limit:
            directory = pending.pop()
            for child in opened.listdir(directory):
                path = f"{directory}/{child.name}"
                if child.name.startswith("."):
                    continue
                if child.is_symlink:
                    links.append(path.lstrip("/"))
                elif child.is_dir:
                    pending.append(path)
    finally:
        opened.close()
    return sorted(links)[:limit]


@contextmanager
def reader(svc: ApiServices, repo: Repository) -> Iterator[RepositoryReader]:
    keys = keyset(svc, repo)
    try:
        opened = RepositoryReader(svc.storage_for(repo.fqrn), repo.fqrn, [keys.master_public_pem])
    except NotFoundError:
        raise NotPublished(f"{repo.fqrn} has no published revision yet") from None
    except CvmfsError as error:
        log.error("event=stratum0-unreadable fqrn=%s error=%s", repo.fqrn, error)
        raise BackendError(
            f"the published content of {repo.fqrn} cannot be read or does not verify"
        ) from None
    try:
        yield opened
    finally:
        opened.close()


def start_run(
    svc: ApiServices, fqrn: str, deployment: str, parameters: dict[str, Any], key: str
) -> RunStarted:
    try:
        run_id = svc.starter(deployment, parameters, key)
    except PermanentStartError as error:
        log.error("event=run-refused deployment=%s error=%s", deployment, error)
        raise Unavailable(
            f"the {deployment} flow cannot be started (is it deployed?); ask an operator", 60
        ) from None
    except TransientStartError:
        raise Unavailable("the orchestrator (Prefect) is unavailable; retry later") from None
    log.info("event=run-started fqrn=%s deployment=%s run=%s", fqrn, deployment, run_id)
    return RunStarted(
        fqrn=fqrn,
        deployment=deployment,
        flow_run_id=run_id,
        idempotency_key=key,
        parameters=parameters,
    )


def bucket_status(repo: Repository, state: BucketState | None) -> BucketStatus:
    """The bucket's state as recorded by provisioning and the bridge's repository watcher."""
    if state is not None:
        return BucketStatus(
            name=repo.bucket, state=state.state, message=state.message, checked_at=state.checked_at
        )
    if repo.bucket_owner_id is not None:  # wired before bucket states were recorded
        return BucketStatus(
            name=repo.bucket,
            state="wired",
            message=f"bucket {repo.bucket} is connected: uploads under cvmfs/ are published",
            checked_at=None,
        )
    return BucketStatus(
        name=repo.bucket,
        state="unchecked",
        message=f"bucket {repo.bucket} is checked once provisioning gets there",
        checked_at=None,
    )


def summary(repo: Repository, state: BucketState | None = None) -> RepositorySummary:
    return RepositorySummary.model_validate(
        repo.model_dump() | {"bucket_state": bucket_status(repo, state)}
    )


# -- operations -----------------------------------------------------------------------------


def request_repository(svc: ApiServices, caller: Caller, body: CreateRepository) -> RequestAccepted:
    """Publish a provisioning request with the caller's token; the bridge verifies it again."""
    request_id = body.request_id or f"api-{uuid.uuid4().hex}"
    try:
        provision = ProvisionRequest(
            request_id=request_id,
            access_token=SecretStr(caller.token()),
            kind=body.kind,
            group=body.group,
            short_name=body.short_name,
            bucket=body.bucket,
        )
    except ValidationError as error:
        reasons = "; ".join(e["msg"] for e in error.errors(include_input=False))
        raise BadRequest(f"invalid request: {reasons}") from None
    allowed = svc.parser.authorize_identity(provision, caller.identity)
    if isinstance(allowed, Refusal):
        if allowed.code == "forbidden":
            raise Forbidden(allowed.reason)
        raise BadRequest(allowed.reason)
    existing = svc.registry.get(allowed.fqrn)
    if existing is not None:
        same_owner = (
            existing.group == allowed.group
            if existing.kind == "group"
            else existing.owner_subject == caller.subject
        )
        if existing.kind != allowed.kind or not same_owner:
            raise Conflict(
                f"repository {allowed.fqrn!r} belongs to someone else; choose another short name"
            )
    feeding = svc.registry.by_bucket(allowed.bucket)
    if feeding is not None and feeding.fqrn != allowed.fqrn:
        raise Conflict(
            f"bucket {allowed.bucket!r} already feeds another repository; name another bucket"
        )
    try:
        svc.registry.record_request(request_id, allowed.fqrn, caller.subject)
    except RequestConflict as error:
        raise Conflict(error.reason) from None
    document = provision.model_dump(mode="json", exclude_none=True)
    document["access_token"] = caller.token()
    try:
        svc.publisher.publish(REQUEST_ROUTING_KEY, json.dumps(document).encode(), request_id)
    except BrokerUnavailable as error:
        # The operator's line (pika's own connect errors are silenced on the console).
        log.warning("event=broker-unavailable request=%s error=%s", request_id, error)
        svc.registry.finish_request(request_id, "failed", "message broker unavailable")
        raise Unavailable("the message broker is unavailable; retry later") from None
    log.info(
        "event=repository-requested request=%s fqrn=%s subject=%s",
        request_id,
        allowed.fqrn,
        caller.subject,
    )
    return RequestAccepted(
        request_id=request_id,
        fqrn=allowed.fqrn,
        bucket=allowed.bucket,
        status_url=f"/requests/{request_id}",
    )


def request_status(svc: ApiServices, caller: Caller, request_id: str) -> RequestStatus:
    record = svc.registry.request(request_id)
    if record is None:
        raise NotFound(f"no request {request_id!r}")
    if record.requester_subject != caller.subject:
        raise Forbidden(f"request {request_id!r} was made by another user")
    return RequestStatus.model_validate(record.model_dump())


def visible_groups(svc: ApiServices, caller: Caller) -> list[str]:
    """The groups whose repositories the caller sees: theirs and those they manage."""
    return sorted(caller.identity.groups | caller.managed_groups)


def list_repositories(svc: ApiServices, caller: Caller) -> RepositoryList:
    found = svc.registry.visible_to(caller.subject, visible_groups(svc, caller))
    states = svc.registry.bucket_states(r.fqrn for r in found)
    return RepositoryList(repositories=[summary(r, states.get(r.fqrn)) for r in found])


def repository_status(svc: ApiServices, caller: Caller, fqrn: str) -> RepositoryDetail:
    repo = authorized(svc, caller, fqrn, "read")
    queue = svc.bridge_config.s3.queue
    pending = PendingEvents(count=svc.queue_depth(queue), source=svc.queue_depth.source(queue))
    refusals = [
        KeyRefusal(
            key=r.s3_key,
            reason=r.reason,
            other_key=r.other_key,
            kind=r.kind,
            refused_at=r.refused_at,
        )
        for r in svc.registry.refusals(fqrn)
    ]
    return RepositoryDetail.model_validate(
        repo.model_dump()
        | {
            "bucket_state": bucket_status(repo, svc.registry.bucket_state(fqrn)),
            "pending_events": pending,
            "access": caller.rights(repo),
            "refusals": refusals,
        }
    )


def client_config(svc: ApiServices, caller: Caller, fqrn: str) -> ClientConfig:
    """A readable repository's, or the unpacked images' (`unpacked.<domain>`) for any signed-in
    user: its key is the service's own and was handed out nowhere (found by hand mounting it
    with the stock client, docs/stock-tools.md)."""
    if fqrn == unpacked_fqrn(svc.settings.repository_domain):
        public_pem = unpacked_public_key(svc, fqrn)
    else:
        public_pem = keyset(svc, authorized(svc, caller, fqrn, "read")).master_public_pem
    bundle = build_client_config(svc.settings, fqrn, public_pem)
    return ClientConfig.model_validate(bundle.model_dump())


def repository_keys(svc: ApiServices, caller: Caller, fqrn: str) -> KeySetResponse:
    """The key set for the owner or a group manager; every attempt goes into the audit."""
    repo = repository(svc, fqrn)
    try:
        caller.require(repo, "keys")
    except Forbidden as denied:
        svc.registry.record_key_access(fqrn, caller.subject, "read_keys", False, denied.reason)
        raise
    role = "owner" if caller.is_owner(repo) else "group manager"
    keys = keyset(svc, repo)
    svc.registry.record_key_access(fqrn, caller.subject, "read_keys", True, f"as {role}")
    log.info("event=keys-read fqrn=%s subject=%s role=%s", fqrn, caller.subject, role)
    return KeySetResponse(
        fqrn=fqrn,
        vault_path=secret_path(key_owner(repo), fqrn),
        publicKey=keys.master_public_pem,
        certificateKey=keys.certificate_pem,
        masterKey=keys.master_private_pem,
        repositoryKey=keys.repository_private_pem,
        gatewayKey=keys.gateway_key,
    )


def publisher_setup(svc: ApiServices, caller: Caller, fqrn: str) -> PublisherSetup:
    """What an expert needs to publish with the stock `cvmfs_server` through the gateway; for
    the owner or a group manager, audited like the key set (no private key is in it)."""
    repo = repository(svc, fqrn)
    try:
        caller.require(repo, "keys")
    except Forbidden as denied:
        svc.registry.record_key_access(fqrn, caller.subject, "read_publisher", False, denied.reason)
        raise
    keys = keyset(svc, repo)
    if keys.gateway_key is None:
        raise Conflict(
            f"{fqrn} has no gateway key (provisioned before the gateway existed): ask an "
            "operator to add one to its key set in Vault"
        )
    svc.registry.record_key_access(fqrn, caller.subject, "read_publisher", True, "")
    return PublisherSetup(
        fqrn=fqrn,
        files={
            f"{fqrn}.pub": keys.master_public_pem,
            f"{fqrn}.crt": keys.certificate_pem,
            f"{fqrn}.gw": keys.gateway_key,
        },
        stratum0_url=f"{svc.settings.stratum0_public_url}/{fqrn}",
        gateway_url=svc.settings.gateway.api_url,
        mkfs_command=publisher_mkfs_command(svc.settings, fqrn),
    )


def publisher_mkfs_command(settings: Settings, fqrn: str) -> str:
    """The `cvmfs_server mkfs` line of a remote publisher; public facts only (no key is read),
    so the dashboard shows it without an audited key access."""
    stratum0_url = f"{settings.stratum0_public_url}/{fqrn}"
    return (
        f"cvmfs_server mkfs -w {stratum0_url} -u gw,/srv/cvmfs/{fqrn}/data/txn,"
        f"{settings.gateway.api_url} -k /etc/cvmfs/keys -o $USER {fqrn}"
    )


def browse_files(
    svc: ApiServices,
    caller: Caller,
    fqrn: str,
    path: str = "/",
    offset: int = 0,
    limit: int = 1000,
    revision: int | None = None,
) -> Listing:
    repo = authorized(svc, caller, fqrn, "read")
    with reader(svc, repo) as opened:
        view = opened
        if revision is not None and revision != opened.revision:
            try:
                view = opened.at_revision(revision)
            except NotFoundError:
                raise NotFound(f"no tag records revision {revision} of {fqrn}") from None
        return browse.list_path(view, path, offset, limit)


def history(svc: ApiServices, caller: Caller, fqrn: str, limit: int = 10) -> History:
    repo = authorized(svc, caller, fqrn, "read")
    provenance = svc.registry.files(fqrn)
    with reader(svc, repo) as opened:
        return browse.build_history(opened, provenance, limit)


def start_sync(
    svc: ApiServices,
    caller: Caller,
    fqrn: str,
    body: SyncRequest,
    idempotency_key: str | None = None,
) -> RunStarted:
    """Reconcile the whole repository with its bucket, or backfill one path prefix."""
    repo = authorized(svc, caller, fqrn, "sync")
    bucket = svc.registry.bucket_state(fqrn)
    if bucket is not None and bucket.state != "wired":  # the run could only fail
        raise Conflict(f"the bucket is not connected yet: {bucket.message}")
    prefix = browse.catalog_path(body.prefix) if body.prefix is not None else None
    if prefix is not None and body.dry_run:
        raise BadRequest("dry_run applies to a whole-repository reconcile, not to a prefix")
    deployment, parameters = runs.sync_run(repo, prefix, body.dry_run, svc.deployments)
    key = f"api-{deployment.replace('/', '-')}-{fqrn}-{idempotency_key or uuid.uuid4().hex}"
    return start_run(svc, fqrn, deployment, parameters, key)


def start_rollback(
    svc: ApiServices,
    caller: Caller,
    fqrn: str,
    body: RollbackRequest,
    idempotency_key: str | None = None,
) -> RunStarted:
    """Publish a new revision with the content of a tagged one."""
    repo = authorized(svc, caller, fqrn, "rollback")
    with reader(svc, repo) as opened:
        try:
            opened.find_tag(body.tag)
        except NotFoundError:
            raise NotFound(f"{fqrn} has no tag {body.tag!r}; see its history") from None
    request_id = f"rollback-{idempotency_key or uuid.uuid4().hex}"
    parameters = runs.rollback_run(repo, body.tag, request_id, caller.subject)
    key = f"api-rollback-{fqrn}-{request_id}"
    return start_run(svc, fqrn, svc.deployments.rollback, parameters, key)


def start_tag(
    svc: ApiServices,
    caller: Caller,
    fqrn: str,
    body: TagRequest,
    idempotency_key: str | None = None,
) -> RunStarted:
    """Name the current revision (flows/tag.py); tags are what a rollback goes back to.

    Tagging changes the repository's history as a rollback does, so it needs the same right.
    """
    repo = authorized(svc, caller, fqrn, "rollback")
    try:
        validate_tag_name(body.tag)
    except CvmfsError as error:
        raise BadRequest(str(error)) from None
    with reader(svc, repo):
        pass  # a tag needs a published revision: NotPublished (409) before a run starts
    request_id = f"tag-{idempotency_key or uuid.uuid4().hex}"
    parameters = runs.tag_run(repo, body.tag, body.description, request_id, caller.subject)
    key = f"api-tag-{fqrn}-{request_id}"
    return start_run(svc, fqrn, svc.deployments.tag, parameters, key)
