"""The /repositories endpoints: request, list, status, client config, keys, files, history, runs.

Every handler is a plain function run in FastAPI's thread pool: the registry, Vault, RabbitMQ
and Prefect clients it calls block.
"""

from __future__ import annotations

import json
import logging
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Annotated, Any

from fastapi import APIRouter, Depends, Header, Path, Query, Request, Response, Security
from fastapi.security import HTTPAuthorizationCredentials
from pydantic import SecretStr, ValidationError

from bridge.errors import BrokerUnavailable, PermanentStartError, TransientStartError
from cvmfs.errors import CvmfsError, NotFoundError
from cvmfs.keys import KeySet
from cvmfs.reader import RepositoryReader
from service.api import browse, runs
from service.api.errors import (
    BackendError,
    BadRequest,
    Conflict,
    ErrorBody,
    Forbidden,
    NotFound,
    NotPublished,
    RateLimited,
    Unavailable,
)
from service.api.models import (
    ClientConfig,
    CreateRepository,
    History,
    KeySetResponse,
    Listing,
    PendingEvents,
    RepositoryDetail,
    RepositoryList,
    RepositorySummary,
    RequestAccepted,
    RequestStatus,
    RollbackRequest,
    RunStarted,
    SyncRequest,
)
from service.api.security import Caller, authenticate, bearer_scheme
from service.api.services import ApiServices
from service.api.stratum0 import key_owner
from service.client_config import build_client_config
from service.keystore import (
    KeysNotFound,
    KeystoreError,
    VaultUnavailable,
    secret_path,
)
from service.messages import ProvisionRequest, Refusal
from service.repositories import Repository, RequestConflict

log = logging.getLogger("cvmfs.api")

REQUEST_ROUTING_KEY = "repository.request"
_FQRN_PATTERN = r"^[a-z0-9][a-z0-9.-]{0,252}$"
_KEY_PATTERN = r"^[A-Za-z0-9._:-]{1,128}$"

_ERRORS: dict[int | str, dict[str, Any]] = {
    status: {"model": ErrorBody, "description": description}
    for status, description in (
        (401, "missing, invalid or expired token"),
        (403, "authenticated, but not allowed"),
        (422, "invalid request"),
        (503, "a service behind the API is unavailable; retry later"),
    )
}
_REPO_ERRORS = _ERRORS | {404: {"model": ErrorBody, "description": "no such repository"}}
_MUTATING_ERRORS = _REPO_ERRORS | {
    409: {"model": ErrorBody, "description": "conflicts with the current state"},
    429: {"model": ErrorBody, "description": "rate limited; see Retry-After"},
}

Fqrn = Annotated[str, Path(pattern=_FQRN_PATTERN, max_length=253, description="repository name")]
IdempotencyKey = Annotated[
    str | None,
    Header(
        alias="Idempotency-Key",
        pattern=_KEY_PATTERN,
        description="the same key makes a retried call start no second run",
    ),
]


# -- dependencies -------------------------------------------------------------------------


def services(request: Request) -> ApiServices:
    svc = request.app.state.services
    assert isinstance(svc, ApiServices)
    return svc


Services = Annotated[ApiServices, Depends(services)]


def current_caller(
    svc: Services,
    credentials: Annotated[HTTPAuthorizationCredentials | None, Security(bearer_scheme)],
) -> Caller:
    identity, token = authenticate(svc.verifier, credentials)
    return Caller(identity, token, svc.settings.api.manager_subgroup)


CurrentCaller = Annotated[Caller, Depends(current_caller)]


def rate_limited_caller(svc: Services, caller: CurrentCaller) -> Caller:
    decision = svc.rate_limiter.take(caller.subject)
    if not decision.allowed:
        raise RateLimited(
            f"too many changes requested; retry in {decision.retry_after_s} s",
            decision.retry_after_s,
        )
    return caller


MutatingCaller = Annotated[Caller, Depends(rate_limited_caller)]


# -- helpers ------------------------------------------------------------------------------


def _repository(svc: ApiServices, fqrn: str) -> Repository:
    repository = svc.registry.get(fqrn)
    if repository is None:
        raise NotFound(f"no repository {fqrn!r}")
    return repository


def _authorized(svc: ApiServices, caller: Caller, fqrn: str, right: Any) -> Repository:
    repository = _repository(svc, fqrn)
    caller.require(repository, right)
    return repository


def _keyset(svc: ApiServices, repository: Repository) -> KeySet:
    try:
        return svc.key_store().read(key_owner(repository), repository.fqrn)
    except KeysNotFound:
        raise NotPublished(
            f"{repository.fqrn} has no keys yet: provisioning has not finished"
        ) from None
    except VaultUnavailable:
        raise Unavailable("the key store (Vault) is unavailable; retry later") from None
    except KeystoreError as error:
        log.error("event=keystore-error fqrn=%s error=%s", repository.fqrn, error)
        raise BackendError(f"the key store refused reading the keys of {repository.fqrn}") from None


@contextmanager
def _reader(svc: ApiServices, repository: Repository) -> Iterator[RepositoryReader]:
    keys = _keyset(svc, repository)
    try:
        reader = RepositoryReader(
            svc.storage_for(repository.fqrn), repository.fqrn, [keys.master_public_pem]
        )
    except NotFoundError:
        raise NotPublished(f"{repository.fqrn} has no published revision yet") from None
    except CvmfsError as error:
        log.error("event=stratum0-unreadable fqrn=%s error=%s", repository.fqrn, error)
        raise BackendError(
            f"the published content of {repository.fqrn} cannot be read or does not verify"
        ) from None
    try:
        yield reader
    finally:
        reader.close()


def _start_run(
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


def _summary(repository: Repository) -> RepositorySummary:
    return RepositorySummary.model_validate(repository.model_dump())


# -- routes -------------------------------------------------------------------------------


def repositories_router() -> APIRouter:
    router = APIRouter(tags=["repositories"])

    @router.post(
        "/repositories",
        status_code=202,
        response_model=RequestAccepted,
        responses=_MUTATING_ERRORS | {400: {"model": ErrorBody, "description": "invalid name"}},
    )
    def request_repository(
        body: CreateRepository, svc: Services, caller: MutatingCaller
    ) -> RequestAccepted:
        """Request a repository; provisioning runs behind the bridge, as for the dashboard."""
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
        authorized = svc.parser.authorize_identity(provision, caller.identity)
        if isinstance(authorized, Refusal):
            if authorized.code == "forbidden":
                raise Forbidden(authorized.reason)
            raise BadRequest(authorized.reason)
        existing = svc.registry.get(authorized.fqrn)
        if existing is not None:
            same_owner = (
                existing.group == authorized.group
                if existing.kind == "group"
                else existing.owner_subject == caller.subject
            )
            if existing.kind != authorized.kind or not same_owner:
                raise Conflict(
                    f"repository {authorized.fqrn!r} belongs to someone else; "
                    "choose another short name"
                )
        feeding = svc.registry.by_bucket(authorized.bucket)
        if feeding is not None and feeding.fqrn != authorized.fqrn:
            raise Conflict(
                f"bucket {authorized.bucket!r} already feeds another repository; "
                "name another bucket"
            )
        try:
            svc.registry.record_request(request_id, authorized.fqrn, caller.subject)
        except RequestConflict as error:
            raise Conflict(error.reason) from None
        document = provision.model_dump(mode="json", exclude_none=True)
        document["access_token"] = caller.token()
        try:
            svc.publisher.publish(REQUEST_ROUTING_KEY, json.dumps(document).encode(), request_id)
        except BrokerUnavailable:
            svc.registry.finish_request(request_id, "failed", "message broker unavailable")
            raise Unavailable("the message broker is unavailable; retry later") from None
        log.info(
            "event=repository-requested request=%s fqrn=%s subject=%s",
            request_id,
            authorized.fqrn,
            caller.subject,
        )
        return RequestAccepted(
            request_id=request_id,
            fqrn=authorized.fqrn,
            bucket=authorized.bucket,
            status_url=f"/requests/{request_id}",
        )

    @router.get("/requests/{request_id}", response_model=RequestStatus, responses=_REPO_ERRORS)
    def request_status(
        request_id: Annotated[str, Path(pattern=_KEY_PATTERN)],
        svc: Services,
        caller: CurrentCaller,
    ) -> RequestStatus:
        """The state of a repository request (only for the caller who sent it)."""
        record = svc.registry.request(request_id)
        if record is None:
            raise NotFound(f"no request {request_id!r}")
        if record.requester_subject != caller.subject:
            raise Forbidden(f"request {request_id!r} was made by another user")
        return RequestStatus.model_validate(record.model_dump())

    @router.get("/repositories", response_model=RepositoryList, responses=_ERRORS)
    def list_repositories(svc: Services, caller: CurrentCaller) -> RepositoryList:
        """The caller's repositories and those of the groups they belong to (or manage)."""
        suffix = "/" + svc.settings.api.manager_subgroup.strip("/")
        groups = set(caller.identity.groups)
        groups |= {g.removesuffix(suffix) for g in groups if g.endswith(suffix)}
        found = svc.registry.visible_to(caller.subject, sorted(groups))
        return RepositoryList(repositories=[_summary(r) for r in found])

    @router.get("/repositories/{fqrn}", response_model=RepositoryDetail, responses=_REPO_ERRORS)
    def repository_status(fqrn: Fqrn, svc: Services, caller: CurrentCaller) -> RepositoryDetail:
        """Status, current revision, last publish, pending events and the last error."""
        repository = _authorized(svc, caller, fqrn, "read")
        queue = svc.bridge_config.s3.queue
        pending = PendingEvents(count=svc.queue_depth(queue), source=svc.queue_depth.source(queue))
        return RepositoryDetail.model_validate(
            repository.model_dump()
            | {"pending_events": pending, "access": caller.rights(repository)}
        )

    @router.get(
        "/repositories/{fqrn}/client-config",
        response_model=ClientConfig,
        responses=_REPO_ERRORS,
    )
    def client_config(fqrn: Fqrn, svc: Services, caller: CurrentCaller) -> ClientConfig:
        """What a client needs to mount the repository: public key and configuration."""
        repository = _authorized(svc, caller, fqrn, "read")
        keys = _keyset(svc, repository)
        bundle = build_client_config(svc.settings, fqrn, keys.master_public_pem)
        return ClientConfig.model_validate(bundle.model_dump())

    @router.get(
        "/repositories/{fqrn}/keys",
        response_model=KeySetResponse,
        responses=_REPO_ERRORS,
    )
    def repository_keys(
        fqrn: Fqrn, svc: Services, caller: CurrentCaller, response: Response
    ) -> KeySetResponse:
        """The key set, for the owner or a group manager; every request is audited."""
        repository = _repository(svc, fqrn)
        try:
            caller.require(repository, "keys")
        except Forbidden as denied:
            svc.registry.record_key_access(fqrn, caller.subject, "read_keys", False, denied.reason)
            raise
        role = "owner" if caller.is_owner(repository) else "group manager"
        keys = _keyset(svc, repository)
        svc.registry.record_key_access(fqrn, caller.subject, "read_keys", True, f"as {role}")
        log.info("event=keys-read fqrn=%s subject=%s role=%s", fqrn, caller.subject, role)
        response.headers["Cache-Control"] = "no-store"
        return KeySetResponse(
            fqrn=fqrn,
            vault_path=secret_path(key_owner(repository), fqrn),
            publicKey=keys.master_public_pem,
            certificateKey=keys.certificate_pem,
            masterKey=keys.master_private_pem,
            repositoryKey=keys.repository_private_pem,
            gatewayKey=keys.gateway_key,
        )

    @router.get(
        "/repositories/{fqrn}/files",
        response_model=Listing,
        responses=_REPO_ERRORS
        | {
            400: {"model": ErrorBody, "description": "invalid path"},
            409: {"model": ErrorBody, "description": "nothing published yet"},
        },
    )
    def browse_files(
        fqrn: Fqrn,
        svc: Services,
        caller: CurrentCaller,
        path: Annotated[str, Query(max_length=4096)] = "/",
        offset: Annotated[int, Query(ge=0, le=10_000_000)] = 0,
        limit: Annotated[int, Query(ge=1, le=10_000)] = 1000,
        revision: Annotated[int | None, Query(ge=1, le=2**62)] = None,
    ) -> Listing:
        """An entry of the published tree and, for a directory, its children."""
        repository = _authorized(svc, caller, fqrn, "read")
        with _reader(svc, repository) as reader:
            view = reader
            if revision is not None and revision != reader.revision:
                try:
                    view = reader.at_revision(revision)
                except NotFoundError:
                    raise NotFound(f"no tag records revision {revision} of {fqrn}") from None
            return browse.list_path(view, path, offset, limit)

    @router.get(
        "/repositories/{fqrn}/history",
        response_model=History,
        responses=_REPO_ERRORS | {409: {"model": ErrorBody, "description": "nothing published"}},
    )
    def history(
        fqrn: Fqrn,
        svc: Services,
        caller: CurrentCaller,
        limit: Annotated[int, Query(ge=1, le=50)] = 10,
    ) -> History:
        """Revisions (newest first) with their tags, what changed, and where files came from."""
        repository = _authorized(svc, caller, fqrn, "read")
        provenance = svc.registry.files(fqrn)
        with _reader(svc, repository) as reader:
            return browse.build_history(reader, provenance, limit)

    @router.post(
        "/repositories/{fqrn}/sync",
        status_code=202,
        response_model=RunStarted,
        responses=_MUTATING_ERRORS | {400: {"model": ErrorBody, "description": "invalid prefix"}},
    )
    def sync(
        fqrn: Fqrn,
        body: SyncRequest,
        svc: Services,
        caller: MutatingCaller,
        idempotency_key: IdempotencyKey = None,
    ) -> RunStarted:
        """Reconcile the whole repository with its bucket, or backfill one path prefix."""
        repository = _authorized(svc, caller, fqrn, "sync")
        prefix = browse.catalog_path(body.prefix) if body.prefix is not None else None
        if prefix is not None and body.dry_run:
            raise BadRequest("dry_run applies to a whole-repository reconcile, not to a prefix")
        deployment, parameters = runs.sync_run(repository, prefix, body.dry_run, svc.deployments)
        key = f"api-{deployment.replace('/', '-')}-{fqrn}-{idempotency_key or uuid.uuid4().hex}"
        return _start_run(svc, fqrn, deployment, parameters, key)

    @router.post(
        "/repositories/{fqrn}/rollback",
        status_code=202,
        response_model=RunStarted,
        responses=_MUTATING_ERRORS,
    )
    def rollback(
        fqrn: Fqrn,
        body: RollbackRequest,
        svc: Services,
        caller: MutatingCaller,
        idempotency_key: IdempotencyKey = None,
    ) -> RunStarted:
        """Publish a new revision with the content of a tagged one."""
        repository = _authorized(svc, caller, fqrn, "rollback")
        with _reader(svc, repository) as reader:
            try:
                reader.find_tag(body.tag)
            except NotFoundError:
                raise NotFound(f"{fqrn} has no tag {body.tag!r}; see its history") from None
        request_id = f"rollback-{idempotency_key or uuid.uuid4().hex}"
        parameters = runs.rollback_run(repository, body.tag, request_id, caller.subject)
        key = f"api-rollback-{fqrn}-{request_id}"
        return _start_run(svc, fqrn, svc.deployments.rollback, parameters, key)

    return router
