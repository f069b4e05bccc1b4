"""Mounting the dashboard into the service's app: sessions, security headers, static files.

`install_dashboard(app, settings)` adds /dashboard (pages), /dashboard/static (the one script
and the stylesheet) and the redirect from /.
"""

from __future__ import annotations

import secrets
from pathlib import Path
from urllib.parse import urlsplit

from fastapi import FastAPI
from fastapi.responses import RedirectResponse
from fastapi.staticfiles import StaticFiles
from starlette.middleware.base import BaseHTTPMiddleware, RequestResponseEndpoint
from starlette.requests import Request
from starlette.responses import Response

from dashboard.login import oauth_client
from dashboard.pages import BASE, dashboard_router
from dashboard.refresh import TokenRefresher
from dashboard.sessions import ServerSessionMiddleware, SessionStore
from service.repositories import database_url
from service.settings import Settings

COOKIE_NAME = "cvmfs_dashboard_session"
STATIC_DIR = Path(__file__).parent / "static"


def content_security_policy(settings: Settings) -> str:
    """Scripts and styles only from the dashboard itself (no inline code); forms may go to
    the dashboard and to the issuer (its end-session form after logout)."""
    issuer = urlsplit(settings.oidc.issuer_url)
    issuer_origin = f"{issuer.scheme}://{issuer.netloc}"
    return (
        "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self'; "
        f"connect-src 'self'; form-action 'self' {issuer_origin}; frame-ancestors 'none'; "
        "base-uri 'none'"
    )


class SecurityHeaders(BaseHTTPMiddleware):
    """CSP and friends on every dashboard response; pages are never cached."""

    def __init__(self, app: object, policy: str) -> None:
        super().__init__(app)  # type: ignore[arg-type]
        self.policy = policy

    async def dispatch(self, request: Request, call_next: RequestResponseEndpoint) -> Response:
        response = await call_next(request)
        if request.url.path.startswith(BASE):
            response.headers["Content-Security-Policy"] = self.policy
            response.headers["X-Content-Type-Options"] = "nosniff"
            response.headers["Referrer-Policy"] = "no-referrer"
            response.headers["X-Frame-Options"] = "DENY"
            if not request.url.path.startswith(f"{BASE}/static/"):
                response.headers.setdefault("Cache-Control", "no-store")
        return response


def session_secret(settings: Settings) -> str:
    """dashboard.session_secret, else one generated once into the data directory (0600).

    Several API hosts must share it (set it, or share the data directory).
    """
    configured = settings.dashboard.session_secret
    if configured is not None:
        return configured.get_secret_value()
    path = settings.absolute_data_dir / "dashboard" / "session-secret"
    path.parent.mkdir(parents=True, exist_ok=True)
    try:
        with path.open("x", encoding="ascii") as created:
            path.chmod(0o600)
            created.write(secrets.token_urlsafe(48))
    except FileExistsError:
        pass
    return path.read_text(encoding="ascii").strip()


def install_dashboard(app: FastAPI, settings: Settings) -> SessionStore:
    """Add the dashboard to `app`; the returned store is closed with the app."""
    store = SessionStore.open_url(database_url(settings), settings.dashboard.session_ttl_s)
    app.include_router(dashboard_router(oauth_client(settings)))
    app.state.token_refresher = TokenRefresher(settings.oidc)
    app.mount(f"{BASE}/static", StaticFiles(directory=STATIC_DIR), name="dashboard-static")

    @app.get("/", include_in_schema=False)
    def root() -> RedirectResponse:
        return RedirectResponse(f"{BASE}/")

    @app.get(BASE, include_in_schema=False)
    def dashboard_root() -> RedirectResponse:
        return RedirectResponse(f"{BASE}/")

    app.add_middleware(
        ServerSessionMiddleware,
        store=store,
        secret=session_secret(settings),
        cookie_name=COOKIE_NAME,
        path=BASE,
        max_age_s=settings.dashboard.session_ttl_s,
        always_secure=settings.api.base_url.startswith("https://"),
    )
    app.add_middleware(SecurityHeaders, policy=content_security_policy(settings))
    return store
