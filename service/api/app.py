"""The service's HTTP application: the user API (JWT), the dashboard and the registry webhook.

`create_app(settings)` builds everything from the settings; tests pass their own pieces.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from fastapi import FastAPI

from bridge.registry_events import UnpackFilter
from bridge.webhook import registry_webhook_router
from service.api.errors import install_error_handlers
from service.api.routes import repositories_router
from service.api.services import ApiServices
from service.settings import Settings

API_VERSION = "1"


def create_app(
    settings: Settings,
    services: ApiServices | None = None,
    *,
    registry_host: str | None = None,
) -> FastAPI:
    """The application; `services` default to `ApiServices.from_settings(settings)`.

    The services are closed when the application shuts down (uvicorn's lifespan).
    """
    svc = services or ApiServices.from_settings(settings)
    closers = [svc.close]

    @asynccontextmanager
    async def lifespan(_app: FastAPI) -> AsyncIterator[None]:
        try:
            yield
        finally:
            for close in closers:
                close()

    app = FastAPI(
        title="CVMFS distribution service",
        version=API_VERSION,
        description=(
            "Request CernVM-FS repositories, browse what is published, get client "
            "configuration and publisher keys, start syncs and rollbacks. Every /repositories "
            "call needs `Authorization: Bearer <access token>` from the service's OIDC issuer."
        ),
        lifespan=lifespan,
    )
    app.state.services = svc
    install_error_handlers(app)

    @app.get("/health", tags=["service"])
    def health() -> dict[str, str]:
        """Liveness: the process answers (no dependency is checked)."""
        return {"status": "ok"}

    app.include_router(repositories_router())
    app.include_router(
        registry_webhook_router(
            settings.registry.webhook_secret,
            svc.publisher,
            UnpackFilter.of(settings.registry.unpack_projects),
            registry_host,
        ),
        tags=["webhooks"],
    )
    # Imported here: the dashboard is built on this package (service.api.operations).
    from dashboard.app import install_dashboard

    closers.insert(0, install_dashboard(app, settings).close)
    return app
