"""The /repositories endpoints: request, list, status, client config, keys, files, history, runs.

Each handler parses the HTTP request and calls its operation in service/api/operations.py (the
dashboard calls the same ones). Handlers are plain functions run in FastAPI's thread pool: the
registry, Vault, RabbitMQ and Prefect clients they call block.
"""

from __future__ import annotations

import logging
from typing import Annotated, Any

from fastapi import APIRouter, Depends, Header, Path, Query, Request, Response, Security
from fastapi.security import HTTPAuthorizationCredentials

from service.api import operations
from service.api.errors import ErrorBody
from service.api.models import (
    ClientConfig,
    CreateRepository,
    History,
    KeySetResponse,
    Listing,
    PublisherSetup,
    RepositoryDetail,
    RepositoryList,
    RequestAccepted,
    RequestStatus,
    RollbackRequest,
    RunStarted,
    SyncRequest,
    TagRequest,
)
from service.api.security import Caller, authenticate, bearer_scheme
from service.api.services import ApiServices

log = logging.getLogger("cvmfs.api")

REQUEST_ROUTING_KEY = operations.REQUEST_ROUTING_KEY
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
    operations.take_rate(svc, caller)
    return caller


MutatingCaller = Annotated[Caller, Depends(rate_limited_caller)]


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
        return operations.request_repository(svc, caller, body)

    @router.get("/requests/{request_id}", response_model=RequestStatus, responses=_REPO_ERRORS)
    def request_status(
        request_id: Annotated[str, Path(pattern=_KEY_PATTERN)],
        svc: Services,
        caller: CurrentCaller,
    ) -> RequestStatus:
        """The state of a repository request (only for the caller who sent it)."""
        return operations.request_status(svc, caller, request_id)

    @router.get("/repositories", response_model=RepositoryList, responses=_ERRORS)
    def list_repositories(svc: Services, caller: CurrentCaller) -> RepositoryList:
        """The caller's repositories and those of the groups they belong to (or manage)."""
        return operations.list_repositories(svc, caller)

    @router.get("/repositories/{fqrn}", response_model=RepositoryDetail, responses=_REPO_ERRORS)
    def repository_status(fqrn: Fqrn, svc: Services, caller: CurrentCaller) -> RepositoryDetail:
        """Status, current revision, last publish, pending events and the last error."""
        return operations.repository_status(svc, caller, fqrn)

    @router.get(
        "/repositories/{fqrn}/client-config",
        response_model=ClientConfig,
        responses=_REPO_ERRORS,
    )
    def client_config(fqrn: Fqrn, svc: Services, caller: CurrentCaller) -> ClientConfig:
        """What a client needs to mount the repository: public key and configuration."""
        return operations.client_config(svc, caller, fqrn)

    @router.get(
        "/repositories/{fqrn}/keys",
        response_model=KeySetResponse,
        responses=_REPO_ERRORS,
    )
    def repository_keys(
        fqrn: Fqrn, svc: Services, caller: CurrentCaller, response: Response
    ) -> KeySetResponse:
        """The key set, for the owner or a group manager; every request is audited."""
        keys = operations.repository_keys(svc, caller, fqrn)
        response.headers["Cache-Control"] = "no-store"
        return keys

    @router.get(
        "/repositories/{fqrn}/publisher",
        response_model=PublisherSetup,
        responses=_REPO_ERRORS
        | {409: {"model": ErrorBody, "description": "the repository has no gateway key"}},
    )
    def publisher_setup(
        fqrn: Fqrn, svc: Services, caller: CurrentCaller, response: Response
    ) -> PublisherSetup:
        """Key files, URLs and the `cvmfs_server mkfs` line of a remote publisher (gateway)."""
        setup = operations.publisher_setup(svc, caller, fqrn)
        response.headers["Cache-Control"] = "no-store"
        return setup

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
        return operations.browse_files(svc, caller, fqrn, path, offset, limit, revision)

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
        return operations.history(svc, caller, fqrn, limit)

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
        return operations.start_sync(svc, caller, fqrn, body, idempotency_key)

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
        return operations.start_rollback(svc, caller, fqrn, body, idempotency_key)

    @router.post(
        "/repositories/{fqrn}/tag",
        status_code=202,
        response_model=RunStarted,
        responses=_MUTATING_ERRORS | {400: {"model": ErrorBody, "description": "invalid tag"}},
    )
    def tag(
        fqrn: Fqrn,
        body: TagRequest,
        svc: Services,
        caller: MutatingCaller,
        idempotency_key: IdempotencyKey = None,
    ) -> RunStarted:
        """Name the current revision (owner only); a rollback can return to it later."""
        return operations.start_tag(svc, caller, fqrn, body, idempotency_key)

    return router
