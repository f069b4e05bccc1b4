"""The dashboard's pages and forms under /dashboard; every action calls service/api/operations.

Pages run as plain functions in the thread pool (the operations block); login and logout are
async (Authlib's client is). Every POST carries the session's CSRF token; a failed action
comes back to its page with the reason, never a stack trace.
"""

from __future__ import annotations

import logging
import secrets
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Annotated, Any
from urllib.parse import quote, urlencode

import httpx
from authlib.integrations.starlette_client import OAuthError
from fastapi import APIRouter, Form, Query, Request
from fastapi.responses import HTMLResponse, JSONResponse, RedirectResponse, Response
from fastapi.templating import Jinja2Templates
from pydantic import ValidationError

from buckets.ownership import expected_owner
from dashboard import instructions, wording
from dashboard.login import csrf_ok, csrf_token, start_session
from dashboard.refresh import RenewalRefused, TokenRefresher
from dashboard.runs import recent_runs, run_url
from service.api import operations
from service.api.errors import ApiError, NotFound
from service.api.models import (
    CreateRepository,
    RepositoryDetail,
    RepositorySummary,
    RollbackRequest,
    RunStarted,
    SyncRequest,
    TagRequest,
)
from service.api.security import Caller
from service.api.services import ApiServices
from service.auth import AuthError, IssuerUnavailable, TokenExpired
from service.keystore import unpacked_fqrn

log = logging.getLogger("cvmfs.dashboard")

TEMPLATES = Jinja2Templates(directory=str(Path(__file__).parent / "templates"))
TEMPLATES.env.filters["code_spans"] = wording.code_spans
TEMPLATES.env.filters["change_words"] = wording.change_words
TEMPLATES.env.filters["entry_words"] = wording.entry_words
BASE = "/dashboard"


class LoginRequired(Exception):
    """No session, or its access token no longer verifies: the user logs in again."""


def _services(request: Request) -> ApiServices:
    svc = request.app.state.services
    assert isinstance(svc, ApiServices)
    return svc


def _caller(request: Request) -> Caller:
    """The logged-in user; an access token about to expire is renewed first (dashboard/refresh)."""
    session = request.session
    if not session.get("access_token"):
        raise LoginRequired()
    svc = _services(request)
    refresher = request.app.state.token_refresher
    assert isinstance(refresher, TokenRefresher)
    try:
        if refresher.due(session):
            _renew(request, refresher)
        try:
            identity = svc.verifier.verify(str(session["access_token"]))
        except TokenExpired:
            if not session.get("refresh_token"):
                raise
            # The clock of the issuer or of expires_at disagreed with ours: renew once.
            _renew(request, refresher)
            identity = svc.verifier.verify(str(session["access_token"]))
    except IssuerUnavailable:
        raise
    except AuthError as error:
        log.info("event=dashboard-session-ended reason=%s", error.reason)
        session.clear()
        _flash(request, "error", f"Your login is no longer valid ({error.reason}); log in again.")
        raise LoginRequired() from None
    return Caller(identity, str(session["access_token"]), svc.settings.api.manager_subgroup)


def _renew(request: Request, refresher: TokenRefresher) -> None:
    """New tokens into the session; a refusal ends the login (AuthError), an outage does not."""
    try:
        refresher.renew(request.session)
    except RenewalRefused as refused:
        raise AuthError(f"the identity provider did not renew it: {refused}") from None
    except (OSError, httpx.HTTPError) as error:
        raise IssuerUnavailable(
            f"the identity provider cannot be reached ({type(error).__name__}); retry in a minute"
        ) from None


def _flash(request: Request, kind: str, text: str, link: str | None = None) -> None:
    messages = list(request.session.get("flash", []))
    messages.append({"kind": kind, "text": text, "link": link})
    request.session["flash"] = messages[-5:]


def _render(request: Request, template: str, status_code: int = 200, **context: Any) -> Response:
    flashes = request.session.pop("flash", []) if request.session.get("flash") else []
    user = context.get("user")
    user_groups = (
        wording.group_words(user.member_groups, user.managed_groups)
        if isinstance(user, Caller)
        else []
    )
    return TEMPLATES.TemplateResponse(
        request,
        template,
        {
            "base": BASE,
            "csrf": csrf_token(request),
            "flashes": flashes,
            "user_groups": user_groups,
            **context,
        },
        status_code=status_code,
    )


def _attachment(content: str, filename: str, media_type: str, secret: bool = False) -> Response:
    """A download named `filename`; a secret one (keys) is never kept in a cache."""
    headers = {"Content-Disposition": f'attachment; filename="{filename}"'}
    if secret:
        headers["Cache-Control"] = "no-store"
    return Response(content, media_type=media_type, headers=headers)


def _login_page(request: Request) -> Response:
    return _render(request, "login.html", user=None)


def _error_page(request: Request, error: ApiError, user: Caller | None) -> Response:
    return _render(
        request, "error.html", status_code=error.status_code, reason=error.reason, user=user
    )


def _form_refused(request: Request) -> Response:
    """A form whose CSRF token does not match (a tab left open past its session, or a form
    from elsewhere): the dashboard's error page, with its way back, not a bare line of text."""
    reason = "The form expired or did not come from this dashboard: reload the page and retry."
    return _render(request, "error.html", status_code=403, reason=reason, user=None)


def _repo_url(fqrn: str) -> str:
    return f"{BASE}/repositories/{quote(fqrn)}"


def _started(request: Request, what: str, run: RunStarted) -> None:
    ui_url = _services(request).settings.prefect.ui_url
    _flash(request, "ok", f"{what}: flow run started", run_url(ui_url, run.flow_run_id))


def _post_action(
    request: Request, csrf: str | None, back: str, action: Callable[[Caller], None]
) -> Response:
    """Check CSRF and the session, run `action`, and go back to `back` with its outcome."""
    if not csrf_ok(request, csrf):
        log.info("event=csrf-refused path=%s", request.url.path)
        return _form_refused(request)
    try:
        caller = _caller(request)
    except LoginRequired:
        return RedirectResponse(f"{BASE}/", status_code=303)
    try:
        action(caller)
    except ApiError as error:
        _flash(request, "error", error.reason)
    return RedirectResponse(back, status_code=303)


def dashboard_router(oauth: Any) -> APIRouter:
    router = APIRouter(prefix=BASE, include_in_schema=False)

    # -- login -----------------------------------------------------------------------------

    @router.get("/login")
    async def login(request: Request) -> Response:
        settings = _services(request).settings
        redirect_uri = settings.api.dashboard_redirect_uri
        try:
            response: Response = await oauth.authorize_redirect(request, redirect_uri)
        except (OAuthError, OSError, ValueError) as error:
            log.error("event=login-unavailable error=%s", type(error).__name__)
            return HTMLResponse(
                "The identity provider cannot be reached; retry in a minute.", status_code=503
            )
        return response

    @router.get("/callback")
    async def callback(request: Request) -> Response:
        try:
            token = await oauth.authorize_access_token(request)
        except OAuthError as error:
            # Authlib's error names the check that failed (state, nonce, code); no secret.
            log.info("event=login-refused error=%s", error.error)
            request.session.clear()
            return _render(
                request,
                "error.html",
                status_code=400,
                reason=f"login refused ({error.error}); start again from the login link",
                user=None,
            )
        start_session(request, token)
        log.info("event=login")
        return RedirectResponse(f"{BASE}/", status_code=303)

    @router.post("/logout")
    async def logout(request: Request, csrf_token: Annotated[str, Form()] = "") -> Response:
        if not csrf_ok(request, csrf_token):
            return _form_refused(request)
        request.session.clear()
        settings = _services(request).settings
        try:
            # No id_token_hint: it would put a token into a URL; client_id names us instead.
            metadata = await oauth.load_server_metadata()
            end_session = metadata.get("end_session_endpoint")
        except (OAuthError, OSError, ValueError):
            end_session = None
        if not end_session:
            return RedirectResponse(f"{BASE}/", status_code=303)
        # Built here rather than by Authlib's logout_redirect, which would keep a state in the
        # session just cleared (and so start a new one).
        query = urlencode(
            {
                "client_id": settings.oidc.client_id,
                "post_logout_redirect_uri": settings.api.dashboard_url,
            }
        )
        separator = "&" if "?" in str(end_session) else "?"
        return RedirectResponse(f"{end_session}{separator}{query}", status_code=303)

    # -- pages -----------------------------------------------------------------------------

    @router.get("/")
    def index(request: Request) -> Response:
        try:
            caller = _caller(request)
        except LoginRequired:
            return _login_page(request)
        svc = _services(request)
        repositories = operations.list_repositories(svc, caller).repositories
        try:
            images: list[str] | None = operations.unpacked_images(svc)
            images_error = None
        except ApiError as error:
            images, images_error = None, error.reason
        pending = [
            operations.request_status(svc, caller, request_id)
            for request_id in request.session.get("requests", [])
            if svc.registry.request(request_id) is not None
        ]
        member_of, suggested = _group_request(svc, caller, repositories)
        bucket_messages = {
            r.fqrn: _bucket_message(r, _index_sharing(svc, caller, r)) for r in repositories
        }
        return _render(
            request,
            "index.html",
            user=caller,
            repositories=repositories,
            settling={r.fqrn for r in repositories if _settling(r)},
            pending=[p for p in pending if p.status == "pending"],
            failed=[p for p in pending if p.status in ("refused", "failed")],
            member_of=member_of,
            bucket_messages=bucket_messages,
            suggested=suggested,
            # One personal repository per user (and a user sees no one else's): its link
            # instead of a button that would request it again.
            personal=next((r for r in repositories if r.kind == "personal"), None),
            unpacked=unpacked_fqrn(svc.settings.repository_domain),
            image_push=instructions.image_push(svc.settings),
            images=images,
            images_error=images_error,
            api_url=svc.settings.api.base_url,
        )

    @router.post("/repositories")
    def request_repository(
        request: Request,
        kind: Annotated[str, Form()],
        csrf_token: Annotated[str, Form()] = "",
        group: Annotated[str, Form()] = "",
    ) -> Response:
        def act(caller: Caller) -> None:
            try:
                body = CreateRepository(
                    kind=kind,  # type: ignore[arg-type]
                    group=group.strip() or None if kind == "group" else None,
                    request_id=f"dash-{uuid.uuid4().hex}",
                )
            except ValidationError as error:
                reasons = "; ".join(e["msg"] for e in error.errors(include_input=False))
                _flash(request, "error", f"invalid request: {reasons}")
                return
            svc = _services(request)
            operations.take_rate(svc, caller)
            accepted = operations.request_repository(svc, caller, body)
            request.session["requests"] = [
                *request.session.get("requests", [])[-9:],
                accepted.request_id,
            ]
            _flash(
                request,
                "ok",
                f"Requested {accepted.fqrn}, fed by bucket {accepted.bucket}; "
                "this page updates when it is ready.",
            )

        return _post_action(request, csrf_token, f"{BASE}/", act)

    @router.get("/requests/{request_id}/status.json")
    def request_progress(request: Request, request_id: str) -> Response:
        try:
            caller = _caller(request)
        except LoginRequired:
            return JSONResponse({"error": "log in again"}, status_code=401)
        svc = _services(request)
        try:
            status = operations.request_status(svc, caller, request_id)
        except ApiError as error:
            return JSONResponse({"error": error.reason}, status_code=error.status_code)
        text = status.status + (f": {status.reason}" if status.reason else "")
        return JSONResponse(
            {
                "status": status.status,
                "reason": status.reason,
                "done": status.status != "pending",
                "text": text,
                "html": str(wording.code_spans(text)),
            },
            headers={"Cache-Control": "no-store"},
        )

    @router.get("/repositories/{fqrn}/status.json")
    def repository_progress(request: Request, fqrn: str) -> Response:
        try:
            caller = _caller(request)
        except LoginRequired:
            return JSONResponse({"error": "log in again"}, status_code=401)
        try:
            detail = operations.repository_status(_services(request), caller, fqrn)
        except ApiError as error:
            return JSONResponse({"error": error.reason}, status_code=error.status_code)
        return JSONResponse(
            {
                "status": detail.status,
                "current_revision": detail.current_revision,
                "done": not _settling(detail),
                "text": _status_text(detail),
                # What the page shows (the text's `commands` as code), escaped here once.
                "html": str(wording.code_spans(_status_text(detail))),
            },
            headers={"Cache-Control": "no-store"},
        )

    @router.get("/repositories/{fqrn}")
    def repository_page(
        request: Request,
        fqrn: str,
        path: Annotated[str, Query(max_length=4096)] = "/",
    ) -> Response:
        try:
            caller = _caller(request)
        except LoginRequired:
            return _login_page(request)
        svc = _services(request)
        try:
            detail = operations.repository_status(svc, caller, fqrn)
        except ApiError as error:
            return _error_page(request, error, caller)
        sections: dict[str, Any] = {}
        for name, load in (
            ("client", lambda: operations.client_config(svc, caller, fqrn)),
            ("listing", lambda: operations.browse_files(svc, caller, fqrn, path, 0, 500)),
            ("history", lambda: operations.history(svc, caller, fqrn, 10)),
        ):
            try:
                sections[name] = load()
            except ApiError as error:
                sections[name + "_error"] = error.reason
        client = sections.get("client")
        history = sections.get("history")
        # Tags a user made; the automatic ones (generic-<time>, trunk, trunk-previous) are noise.
        rollback_tags = [
            t
            for t in (history.tags if history else [])
            if not t.name.startswith("generic-") and t.name not in ("trunk", "trunk-previous")
        ]
        sharing = (
            _sharing(svc, caller, detail.bucket, detail.owner_username, detail.owner_subject)
            if detail.group
            else None
        )
        return _render(
            request,
            "repository.html",
            user=caller,
            repo=detail,
            bucket_message=_bucket_message(detail, sharing),
            settling=_settling(detail),
            extra=_extra_fields(detail),
            status_text=_status_text(detail),
            setup_commands=instructions.client_setup_commands(client) if client else None,
            publisher_commands=instructions.publisher_commands(
                fqrn, operations.publisher_mkfs_command(svc.settings, fqrn)
            ),
            tools=instructions.upload_tools(
                svc.settings, detail.bucket, create_bucket=sharing is None or sharing.viewer_creates
            ),
            sharing=sharing,
            endpoint=instructions.s3_endpoint(svc.settings),
            credentials_help=instructions.credentials_help(svc.settings),
            prefix=instructions.UPLOAD_PREFIX,
            runs=recent_runs(svc.settings.prefect.api_url, svc.settings.prefect.ui_url, fqrn),
            repo_url=_repo_url(fqrn),
            rollback_tags=rollback_tags,
            path=path,
            **sections,
        )

    @router.get("/repositories/{fqrn}/client/{filename}")
    def client_file(request: Request, fqrn: str, filename: str) -> Response:
        try:
            caller = _caller(request)
        except LoginRequired:
            return _login_page(request)
        if filename not in (f"{fqrn}.conf", f"{fqrn}.pub"):
            return _error_page(request, NotFound(f"no file {filename!r}"), caller)
        try:
            config = operations.client_config(_services(request), caller, fqrn)
        except ApiError as error:
            return _error_page(request, error, caller)
        content = next(text for path, text in config.files.items() if path.endswith(filename))
        return _attachment(content, filename, "text/plain; charset=utf-8")

    @router.get("/repositories/{fqrn}/publisher/{filename}")
    def publisher_file(request: Request, fqrn: str, filename: str) -> Response:
        """One file of the gateway publisher's bundle; audited like the API's (publisher_setup)."""
        try:
            caller = _caller(request)
        except LoginRequired:
            return _login_page(request)
        if filename not in (f"{fqrn}.pub", f"{fqrn}.crt", f"{fqrn}.gw"):
            return _error_page(request, NotFound(f"no publisher file {filename!r}"), caller)
        try:
            setup = operations.publisher_setup(_services(request), caller, fqrn)
        except ApiError as error:
            return _error_page(request, error, caller)
        return _attachment(
            setup.files[filename], filename, "text/plain; charset=utf-8", secret=True
        )

    @router.get("/repositories/{fqrn}/keys.json")
    def key_download(request: Request, fqrn: str) -> Response:
        try:
            caller = _caller(request)
        except LoginRequired:
            return _login_page(request)
        try:
            keys = operations.repository_keys(_services(request), caller, fqrn)
        except ApiError as error:
            return _error_page(request, error, caller)
        return _attachment(
            keys.model_dump_json(indent=2), f"{fqrn}.keys.json", "application/json", secret=True
        )

    @router.post("/repositories/{fqrn}/sync")
    def sync(request: Request, fqrn: str, csrf_token: Annotated[str, Form()] = "") -> Response:
        def act(caller: Caller) -> None:
            svc = _services(request)
            operations.take_rate(svc, caller)
            _started(request, "Sync", operations.start_sync(svc, caller, fqrn, SyncRequest()))

        return _post_action(request, csrf_token, _repo_url(fqrn), act)

    @router.post("/repositories/{fqrn}/tag")
    def tag(
        request: Request,
        fqrn: str,
        tag: Annotated[str, Form(max_length=255)],
        csrf_token: Annotated[str, Form()] = "",
        description: Annotated[str, Form(max_length=1024)] = "",
    ) -> Response:
        def act(caller: Caller) -> None:
            svc = _services(request)
            operations.take_rate(svc, caller)
            body = TagRequest(tag=tag.strip() or "-", description=description)
            _started(request, f"Tag `{body.tag}`", operations.start_tag(svc, caller, fqrn, body))

        return _post_action(request, csrf_token, _repo_url(fqrn), act)

    @router.post("/repositories/{fqrn}/rollback")
    def rollback(
        request: Request,
        fqrn: str,
        tag: Annotated[str, Form(max_length=255)],
        csrf_token: Annotated[str, Form()] = "",
    ) -> Response:
        def act(caller: Caller) -> None:
            svc = _services(request)
            operations.take_rate(svc, caller)
            body = RollbackRequest(tag=tag)
            started = operations.start_rollback(svc, caller, fqrn, body, secrets.token_hex(8))
            _started(request, f"Rollback to `{tag}`", started)

        return _post_action(request, csrf_token, _repo_url(fqrn), act)

    return router


# What the status page shows on its own; any other field of the repository's status (bucket
# state, refused uploads, added by other features) is listed as it comes.
_SHOWN_FIELDS = frozenset(
    {
        "fqrn", "kind", "group", "owner_username", "owner_subject", "bucket", "status",
        "created_at", "updated_at", "current_revision", "last_publish_at", "last_error",
        "pending_events", "access", "bucket_state", "refusals",
    }
)  # fmt: skip


def _extra_fields(detail: RepositoryDetail) -> dict[str, Any]:
    return {k: v for k, v in detail.model_dump().items() if k not in _SHOWN_FIELDS}


def _bucket_message(repo: RepositorySummary, sharing: instructions.BucketSharing | None) -> str:
    """What the page says about the repository's bucket: the service's message, except that
    a member who cannot create a waiting bucket is not told to create it."""
    state = repo.bucket_state
    if state.state == "waiting" and sharing is not None and not sharing.viewer_creates:
        owner_account = sharing.owner_account or repo.owner_username
        return instructions.waiting_for_owner(state.name, owner_account, repo.owner_username)
    return state.message


def _index_sharing(
    svc: ApiServices, caller: Caller, repo: RepositorySummary
) -> instructions.BucketSharing | None:
    """The sharing of a group repository whose bucket is waiting (the only state whose message
    differs for members); the summary lacks the requester's subject, so the registry is asked."""
    if repo.kind != "group" or repo.bucket_state.state != "waiting":
        return None
    record = svc.registry.get(repo.fqrn)
    if record is None:
        return None
    return _sharing(svc, caller, record.bucket, record.owner_username, record.owner_subject)


def _sharing(
    svc: ApiServices, caller: Caller, bucket: str, owner_username: str, owner_subject: str
) -> instructions.BucketSharing:
    rules = svc.settings.provisioning
    return instructions.bucket_sharing(
        svc.settings,
        bucket,
        expected_owner(rules, owner_username, owner_subject),
        expected_owner(rules, caller.identity.username, caller.subject),
    )


def _group_request(
    svc: ApiServices, caller: Caller, repositories: list[RepositorySummary]
) -> tuple[list[str], list[str]]:
    """The groups the caller may request a repository for (a member's, not the managers'
    subgroup, which names a role: its repository would be called `managers`), and of those
    the ones without a repository yet, which the form suggests."""
    member_of = sorted(caller.member_groups)
    served = {r.group for r in repositories if r.kind == "group"}
    return member_of, [g for g in member_of if g not in served]


def _settling(repo: RepositorySummary) -> bool:
    """Still on its way: provisioning, or ready but waiting for its bucket (the page polls)."""
    return repo.status == "requested" or repo.bucket_state.state in ("unchecked", "waiting")


def _status_text(detail: RepositoryDetail) -> str:
    """The status and, in a few words, where its bucket stands; the bucket's own message (what
    to do) and a failed repository's last error are shown beside it, each once."""
    bucket = wording.bucket_words(detail.bucket_state.state)
    return detail.status + (f" ({bucket})" if bucket else "")
