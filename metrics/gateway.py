"""What the gateway counts: requests by route and HTTP status, and how long they took.

An ASGI wrapper around the gateway application; the route is the template
(`/api/v1/leases/{token}`), never the concrete path, so tokens never become label values.
"""

from __future__ import annotations

import time
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Histogram
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from metrics.endpoint import serve_metrics
from metrics.flows import flow_metrics
from service.settings import Settings

# Lease calls take milliseconds, a payload of a large object pack or a commit seconds.
REQUEST_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 300)


class GatewayMetrics:
    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry or CollectorRegistry()
        self.requests = Counter(
            "cvmfs_gateway_requests",
            "Gateway API requests by method, route and HTTP status (refusals are HTTP 200 "
            "with status error, as the stock gateway replies).",
            ["method", "route", "status"],
            registry=self.registry,
        )
        self.duration = Histogram(
            "cvmfs_gateway_request_duration_seconds",
            "Gateway API request time by method and route.",
            ["method", "route"],
            buckets=REQUEST_BUCKETS,
            registry=self.registry,
        )


class GatewayMetricsMiddleware:
    """Counts every HTTP request the wrapped application answers."""

    def __init__(self, app: ASGIApp, metrics: GatewayMetrics) -> None:
        self.app = app
        self.metrics = metrics

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = time.monotonic()
        status = 500  # an exception before the response started

        async def record_status(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = int(message["status"])
            await send(message)

        try:
            await self.app(scope, receive, record_status)
        finally:
            route = _route_template(scope)
            method = str(scope.get("method", ""))
            self.metrics.requests.labels(method, route, str(status)).inc()
            self.metrics.duration.labels(method, route).observe(time.monotonic() - started)


def _route_template(scope: Scope) -> str:
    route: Any = scope.get("route")
    path = getattr(route, "path", None)
    return path if isinstance(path, str) else "unmatched"


def serve_gateway_metrics(settings: Settings) -> GatewayMetrics | None:
    """The gateway's metrics, served on `metrics.gateway_port`; None when metrics are off."""
    if not settings.metrics.enabled:
        return None
    metrics = GatewayMetrics()
    # Gateway commits run as flows inside this process: their lease waits are served here.
    metrics.registry.register(flow_metrics().registry)
    serve_metrics(
        metrics.registry,
        settings.metrics.gateway_port,
        "gateway",
        "gateway_port",
        settings.metrics.bind_host,
    )
    return metrics
