"""The gateway's HTTP API v1, as the stock `cvmfs_server` publisher (2.11) speaks it.

Routes and replies follow gateway/internal/gateway/frontend/ (frontend.go, leases.go,
payloads.go, repos.go, admin_leases.go); every reply is JSON with HTTP 200 unless the request
cannot be read at all, and a refusal is `{"status": "error", "reason": ...}`.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import json
import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from typing import Any

from starlette.applications import Starlette
from starlette.concurrency import run_in_threadpool
from starlette.requests import ClientDisconnect, Request
from starlette.responses import JSONResponse, PlainTextResponse, Response
from starlette.routing import Route

from gateway.auth import check_hmac, parse_authorization
from gateway.body import BodyStream, BodyTooLarge, feed_worker
from gateway.commit_runner import CommitFailed
from gateway.errors import BadRequest, GatewayError, InvalidLease, PathBusy
from gateway.keys import GatewayKey
from gateway.leases import Lease
from gateway.orphans import OrphanedCommitSweeper
from gateway.paths import LeasePath, parse_lease_path
from gateway.payloads import store_payload
from gateway.replies import go_duration, go_time_utc
from gateway.services import GatewayServices
from metrics.gateway import GatewayMetrics, GatewayMetricsMiddleware
from service.repositories import RepositoryRegistry
from service.settings import Settings
from tasks.gateway_commit import GatewayCommitRequest, commit_failure_reason

log = logging.getLogger("cvmfs.gateway")

API_ROOT = "/api/v1"
# version.go: the newest protocol this gateway speaks and the oldest publisher it accepts.
API_PROTOCOL_VERSION = 3
MIN_API_PROTOCOL_VERSION = 2
MAX_JSON_BODY = 64 << 10  # lease and commit bodies are a few hundred bytes


def ok(**fields: Any) -> JSONResponse:
    return JSONResponse({"status": "ok", **fields})


def refused(reason: str) -> JSONResponse:
    return JSONResponse({"status": "error", "reason": reason})


def bad_request(reason: str) -> JSONResponse:
    return JSONResponse({"status": "error", "reason": reason}, status_code=400)


async def read_small_body(request: Request) -> bytes:
    body = b""
    async for chunk in request.stream():
        body += chunk
        if len(body) > MAX_JSON_BODY:
            raise GatewayError(f"request body larger than {MAX_JSON_BODY} bytes")
    return body


def parse_json_object(body: bytes) -> dict[str, Any]:
    try:
        value = json.loads(body)
    except (ValueError, UnicodeDecodeError):
        raise BadRequest("invalid request body: not JSON") from None
    if not isinstance(value, dict):
        raise BadRequest("invalid request body: a JSON object is expected")
    return value


def lease_view(lease: Lease) -> dict[str, str]:
    """backend/lease_service.go LeaseDTO: `path` is `<fqrn>/<sub path>`, `expires` Go's
    time format; fields are `omitempty` there, so an empty hostname is left out."""
    view = {
        "key_id": lease.key_id,
        "path": str(lease.lease_path),
        "expires": go_time_utc(lease.expires_at),
        "hostname": lease.hostname,
    }
    return {name: value for name, value in view.items() if value}


class Gateway:
    """The handlers; blocking work (database, Vault, storage) runs in the thread pool."""

    def __init__(self, services: GatewayServices) -> None:
        self.svc = services

    # ------------------------------------------------------------------------- auth
    def authenticate(self, fqrn: str, header: str | None, message: bytes) -> GatewayKey:
        """The repository key that signed `message`; a failed HMAC re-reads the key once."""
        auth = parse_authorization(header)
        key = self.svc.keys.gateway_key(fqrn, auth.key_id)
        try:
            check_hmac(auth, key.secret, message)
        except GatewayError:
            key = self.svc.keys.gateway_key(fqrn, auth.key_id, refresh=True)
            check_hmac(auth, key.secret, message)
        return key

    def lease_for_token(
        self, token: str, header: str | None, signed: bytes | None = None
    ) -> tuple[Lease, GatewayKey]:
        """The lease of `token` and the key that signed `signed` (default: the token)."""
        lease = self.svc.leases.find(token)
        key = self.authenticate(lease.fqrn, header, token.encode() if signed is None else signed)
        return lease, key

    # ------------------------------------------------------------------------ routes
    async def root(self, request: Request) -> JSONResponse:
        # root.go: only a welcome; the protocol version is negotiated by the lease request.
        return JSONResponse(
            {"welcome": "CernVM-FS repository gateway of the CVMFS distribution service"}
        )

    async def repos(self, request: Request) -> JSONResponse:
        name = request.path_params.get("name")
        return await run_in_threadpool(self._repos, name)

    def _repos(self, name: str | None) -> JSONResponse:
        def config(fqrn: str) -> dict[str, Any] | None:
            key = self.svc.keys.known_key(fqrn)
            if key is None:
                return None
            return {"keys": {key.key_id: key.path}, "enabled": True}

        if name is not None:
            found = config(name) if self.svc.registry.get(name) else None
            if found is None:
                return refused("invalid_repo")
            return ok(data=found)
        data = {}
        for repository in self.svc.registry.repositories("ready"):
            entry = config(repository.fqrn)
            if entry is not None:
                data[repository.fqrn] = entry
        return ok(data=data)

    async def get_leases(self, request: Request) -> Response:
        """leases.go handleGetLeases: the list is `{"status": "ok", "data": {<path>: lease}}`;
        one lease is `{"data": lease}` (no status), an unknown or expired token HTTP 500 with
        the text `invalid lease`, as the stock gateway answers (no publisher reads them; the
        gateway's admin scripts do)."""
        token = request.path_params.get("token")
        if token is None:
            leases = await run_in_threadpool(self.svc.leases.active)
            return ok(data={str(lease.lease_path): lease_view(lease) for lease in leases})
        try:
            lease = await run_in_threadpool(self.svc.leases.find, token)
        except InvalidLease:
            return PlainTextResponse("invalid lease\n", status_code=500)
        return JSONResponse({"data": lease_view(lease)})

    async def new_lease(self, request: Request) -> JSONResponse:
        body = await read_small_body(request)
        header = request.headers.get("authorization")
        client = request.client.host if request.client else ""
        return await run_in_threadpool(self._new_lease, body, header, client)

    def _new_lease(self, body: bytes, header: str | None, client: str) -> JSONResponse:
        message = parse_json_object(body)
        try:
            version = int(str(message.get("api_version", "")))
        except ValueError:
            raise BadRequest("invalid request body: api_version is not a number") from None
        if version < MIN_API_PROTOCOL_VERSION:
            return refused(
                f"incompatible request version: {version}, min version: {MIN_API_PROTOCOL_VERSION}"
            )
        path = message.get("path")
        if not isinstance(path, str):
            raise GatewayError("invalid request body: path is missing")
        lease_path = parse_lease_path(path)
        key = self.authenticate(lease_path.fqrn, header, body)
        key.check_may_lease(lease_path)
        refuse_bucket_fed(self.svc.registry, lease_path)
        hostname = message.get("hostname")
        hostname = hostname if isinstance(hostname, str) and hostname else client
        manifest = self.svc.current_manifest(lease_path.fqrn)
        protocol = min(version, API_PROTOCOL_VERSION)
        try:
            lease = self.svc.leases.acquire(
                lease_path,
                key_id=key.key_id,
                hostname=hostname,
                protocol_version=protocol,
                base_root_hash=manifest.root_catalog_hash.hex,
                base_revision=manifest.revision,
                lease_time_s=self.svc.settings.gateway.lease_time_s,
            )
        except PathBusy as busy:
            # leases.go sends Go's duration string ("1h59m58.5s"); `cvmfs_server transaction`
            # (2.11: cvmfs_publish, publish/repository_session.cc) reads it as a JSON string,
            # prints it, and retries while its -t timeout lasts. An integer would print
            # "Time remaining = UNKNOWN". (Only the legacy `cvmfs_swissknife lease`,
            # swissknife_lease_json.cc, wanted an integer; 2.11's cvmfs_server does not run it.)
            return JSONResponse(
                {"status": "path_busy", "time_remaining": go_duration(busy.remaining_s)}
            )
        log.info(
            "event=lease_granted repo=%s path=%s key_id=%s host=%s revision=%d",
            lease_path.fqrn,
            lease_path.path,
            key.key_id,
            hostname,
            manifest.revision,
        )
        return ok(session_token=lease.token, max_api_version=protocol)

    async def cancel_lease(self, request: Request) -> JSONResponse:
        token = request.path_params["token"]
        header = request.headers.get("authorization")
        return await run_in_threadpool(self._cancel_lease, token, header)

    def _cancel_lease(self, token: str, header: str | None) -> JSONResponse:
        lease, _key = self.lease_for_token(token, header)
        self.svc.leases.release(token)
        log.info("event=lease_cancelled repo=%s path=%s", lease.fqrn, lease.lease_path.path)
        return ok()

    async def commit_lease(self, request: Request) -> JSONResponse:
        token = request.path_params["token"]
        body = await read_small_body(request)
        header = request.headers.get("authorization")
        return await run_in_threadpool(self._commit_lease, token, header, body)

    def _commit_lease(self, token: str, header: str | None, body: bytes) -> JSONResponse:
        """leases.go handleCommitLease; the merge runs as a `gateway-commit` flow run, which
        answers as soon as it has published (gateway/commit_runner.py)."""
        lease, key = self.lease_for_token(token, header)
        message = parse_json_object(body)
        hashes = [message.get("old_root_hash"), message.get("new_root_hash")]
        if not all(isinstance(h, str) and h for h in hashes):
            raise GatewayError("invalid request body: old_root_hash and new_root_hash are needed")
        tag_name, tag_description = message.get("tag_name", ""), message.get("tag_description", "")
        request = GatewayCommitRequest(
            repo=lease.fqrn,
            path=lease.lease_path.path,
            key_id=key.key_id,
            hostname=lease.hostname,
            old_root_hash=str(hashes[0]),
            new_root_hash=str(hashes[1]),
            lease_base_root_hash=lease.base_root_hash,
            lease_base_revision=lease.base_revision,
            tag_name=tag_name if isinstance(tag_name, str) else "",
            tag_description=tag_description if isinstance(tag_description, str) else "",
        )
        try:
            revision = self.svc.commits.commit(request)
        except CommitFailed as failed:
            error = failed.state.result(raise_on_failure=False)
            if not isinstance(error, BaseException):  # a run that ended without an error
                error = RuntimeError(failed.state.message or failed.state.name)
            return refused(commit_failure_reason(error))
        # Published: the reply must say so even if the lease ran out during a long commit and
        # a new grant already removed it.
        with contextlib.suppress(InvalidLease):
            self.svc.leases.release(token)
        return ok(final_revision=revision)

    async def drop_leases_by_path(self, request: Request) -> JSONResponse:
        raw_path = request.path_params["path"]
        header = request.headers.get("authorization")
        # admin_leases.go / authz.go: the HMAC of a DELETE covers the URL path.
        return await run_in_threadpool(
            self._drop_leases_by_path, raw_path, header, request.url.path.encode()
        )

    def _drop_leases_by_path(
        self, raw_path: str, header: str | None, signed: bytes
    ) -> JSONResponse:
        lease_path = parse_lease_path(raw_path.lstrip("/"))
        self.authenticate(lease_path.fqrn, header, signed).check_may_lease(lease_path)
        dropped = self.svc.leases.release_under(lease_path)
        log.info(
            "event=leases_dropped repo=%s path=%s count=%d",
            lease_path.fqrn,
            lease_path.path,
            dropped,
        )
        return ok()

    async def payloads(self, request: Request) -> JSONResponse:
        """An object pack, legacy form (`/payloads`, token in the JSON head, HMAC over the
        head) or per-token form (`/payloads/<token>`, HMAC over the token); payloads.go."""
        url_token = request.path_params.get("token")
        size_text = request.headers.get("message-size", "")
        if not size_text.isdigit() or not 0 < int(size_text) <= MAX_JSON_BODY:
            return bad_request("missing message-size header")
        head_size = int(size_text)
        limit = self.svc.settings.gateway.max_payload_bytes
        declared = request.headers.get("content-length", "")
        if declared.isdigit() and int(declared) > limit:
            raise BodyTooLarge(
                f"payload of {declared} bytes is larger than the gateway's limit of {limit} "
                "bytes (gateway.max_payload_bytes)"
            )
        chunks = request.stream().__aiter__()
        head, rest = await read_prefix(chunks, head_size)
        message = parse_json_object(head)
        token = url_token or message.get("session_token")
        if not isinstance(token, str) or not token:
            raise GatewayError("invalid request body: session_token is missing")
        digest = message.get("payload_digest")
        header_size_text = str(message.get("header_size", ""))
        if not header_size_text.isdigit():
            raise BadRequest("invalid header_size")
        if not isinstance(digest, str):
            raise GatewayError("invalid payload_digest")
        signed = token.encode() if url_token else head
        header = request.headers.get("authorization")
        lease, _key = await run_in_threadpool(self.lease_for_token, token, header, signed)
        storage = await run_in_threadpool(self.svc.storage, lease.fqrn)
        stream = BodyStream()
        loop = asyncio.get_running_loop()
        worker = loop.run_in_executor(
            None,
            functools.partial(
                store_payload,
                stream,
                storage,
                payload_digest=digest,
                header_size=int(header_size_text),
            ),
        )
        try:
            report = await feed_worker(
                prepend(rest, chunks), stream, worker, max_bytes=limit - head_size
            )
        except BodyTooLarge:
            with contextlib.suppress(GatewayError):
                await worker
            raise
        except ClientDisconnect:
            # The publisher died mid-payload: the worker saw the body end and refused the
            # truncated pack; what it verified before stays stored, unreferenced.
            with contextlib.suppress(GatewayError):
                await worker
            log.info("event=publisher_gone repo=%s path=%s", lease.fqrn, lease.lease_path.path)
            return refused("the publisher disconnected before the payload was complete")
        log.info(
            "event=payload_stored repo=%s path=%s objects=%d bytes=%d",
            lease.fqrn,
            lease.lease_path.path,
            report.objects,
            report.bytes,
        )
        return ok()

    async def admin_only(self, request: Request) -> JSONResponse:
        """frontend.go's admin calls (`POST /repos/<name>` enable/disable, `POST /gc`) need a
        key marked admin (authz.go WithAdminAuthz); this gateway has only repository keys."""
        what = "garbage collection" if request.url.path.endswith("/gc") else "enabling/disabling"
        return refused(
            f"no_admin_key: this gateway has no admin keys; {what} of repositories is done by "
            "the service itself (its maintenance flows and API), not through the gateway"
        )


async def read_prefix(chunks: AsyncIterator[bytes], size: int) -> tuple[bytes, bytes]:
    """The first `size` bytes of the body and what the last chunk held beyond them."""
    data = b""
    while len(data) < size:
        try:
            data += await chunks.__anext__()
        except StopAsyncIteration:
            raise BadRequest("invalid request body: shorter than message-size") from None
    return data[:size], data[size:]


async def prepend(first: bytes, chunks: AsyncIterator[bytes]) -> AsyncIterator[bytes]:
    if first:
        yield first
    async for chunk in chunks:
        yield chunk


def refuse_bucket_fed(registry: RepositoryRegistry, lease_path: LeasePath) -> None:
    """Ownership between channels: the paths the bucket feeds (the registry's file provenance)
    belong to the bucket sync, so a lease at, above or below one is refused; the bucket sync
    and its reconcile only change what their provenance lists, so they never remove what a
    gateway commit published."""
    # The sync records `/a/b` (older records and tests: `a/b`); both forms are looked up.
    inner = lease_path.path.strip("/")
    fed = [
        record
        for prefix in ("/" + inner, inner)
        for record in registry.files(lease_path.fqrn, prefix)
        if lease_path.contains("/" + record.path.lstrip("/"))
    ]
    parts = lease_path.segments
    for depth in range(1, len(parts)):
        ancestor = "/".join(parts[:depth])
        for form in ("/" + ancestor, ancestor):
            record = registry.get_file(lease_path.fqrn, form)
            if record is not None:
                fed.append(record)
    if fed:
        record = fed[0]
        raise GatewayError(
            f"path_fed_by_bucket: {lease_path} overlaps /{record.path.lstrip('/')}, which the "
            f"repository's bucket feeds (object {record.s3_key}); change it through the bucket, "
            "or lease a path the bucket does not feed"
        )


def handle_refusals(
    handler: Callable[[Request], Awaitable[Response]],
) -> Callable[[Request], Awaitable[Response]]:
    async def wrapped(request: Request) -> Response:
        response: Response
        started = time.monotonic()
        try:
            response = await handler(request)
        except GatewayError as error:
            response = JSONResponse(
                {"status": "error", "reason": error.reason}, status_code=error.status_code
            )
            log.info(
                "event=refused method=%s path=%s reason=%r",
                request.method,
                request.url.path[:200],
                error.reason,
            )
        except Exception as error:
            # The HTTP boundary: 2.11's MakeEndRequest and DoUpload dereference the parsed
            # reply unchecked, so a text 500 would crash the stock publisher; it gets JSON
            # (HTTP 500 still), the traceback goes to the log.
            log.exception(
                "event=internal_error method=%s path=%s", request.method, request.url.path[:200]
            )
            response = JSONResponse(
                {
                    "status": "error",
                    "reason": (
                        f"the gateway failed ({type(error).__name__}: {str(error)[:300]}); "
                        "this request changed nothing: retry, and tell the service's "
                        "operators if it persists"
                    ),
                },
                status_code=500,
            )
        log.debug("event=request method=%s dt_s=%.3f", request.method, time.monotonic() - started)
        return response

    return wrapped


def routes(gateway: Gateway) -> list[Route]:
    def route(path: str, handler: Callable[[Request], Awaitable[Response]], method: str) -> Route:
        return Route(API_ROOT + path, handle_refusals(handler), methods=[method])

    return [
        route("", gateway.root, "GET"),
        route("/repos", gateway.repos, "GET"),
        route("/repos/{name}", gateway.repos, "GET"),
        route("/leases", gateway.get_leases, "GET"),
        route("/leases/{token}", gateway.get_leases, "GET"),
        route("/leases", gateway.new_lease, "POST"),
        route("/leases/{token}", gateway.commit_lease, "POST"),
        route("/leases/{token}", gateway.cancel_lease, "DELETE"),
        route("/leases-by-path/{path:path}", gateway.drop_leases_by_path, "DELETE"),
        route("/payloads", gateway.payloads, "POST"),
        route("/payloads/{token}", gateway.payloads, "POST"),
        route("/repos/{name}", gateway.admin_only, "POST"),
        route("/gc", gateway.admin_only, "POST"),
    ]


def create_app(
    settings: Settings,
    services: GatewayServices | None = None,
    metrics: GatewayMetrics | None = None,
    sweeper: OrphanedCommitSweeper | None = None,
) -> Starlette:
    """The gateway application; `services` default to `GatewayServices.from_settings`.

    With `metrics`, every request is counted in them (`./svc gateway` serves them); with
    `sweeper`, it ends dead gateways' unfinished commit runs while the app runs.
    """
    svc = services or GatewayServices.from_settings(settings)

    @asynccontextmanager
    async def lifespan(_app: Starlette) -> AsyncIterator[None]:
        if sweeper is not None:
            sweeper.start()
        try:
            yield
        finally:
            if sweeper is not None:
                sweeper.stop()
            svc.close()

    app = Starlette(routes=routes(Gateway(svc)), lifespan=lifespan)
    app.state.services = svc
    if metrics is not None:
        app.add_middleware(GatewayMetricsMiddleware, metrics=metrics)
    return app
