"""The registry webhook receiver: POST /webhooks/registry → durable messages on RabbitMQ.

Authenticated by the shared secret (`Authorization: Bearer <secret>`); it only normalises,
filters and publishes (with confirms), so nothing is lost while Prefect is down.
"""

from __future__ import annotations

import hmac
import logging
from typing import Protocol

from fastapi import APIRouter, FastAPI, Request
from fastapi.responses import JSONResponse
from pydantic import SecretStr
from starlette.concurrency import run_in_threadpool

from bridge.errors import BrokerUnavailable, RejectedMessage
from bridge.registry_events import UnpackFilter, image_event_message, parse_registry_webhook

log = logging.getLogger("cvmfs.bridge.webhook")

WEBHOOK_PATH = "/webhooks/registry"
# A registry notification is a few kB; anything much larger is not one.
MAX_BODY_BYTES = 1 << 20


class Publisher(Protocol):
    def publish(self, routing_key: str, body: bytes, message_id: str) -> None: ...


def _authorized(header: str | None, secret: SecretStr) -> bool:
    expected = f"Bearer {secret.get_secret_value()}".encode()
    return hmac.compare_digest((header or "").encode(), expected)


def registry_webhook_router(
    secret: SecretStr,
    publisher: Publisher,
    unpack_filter: UnpackFilter,
    registry_host: str | None = None,
) -> APIRouter:
    """The router the service mounts; `registry_host` overrides the host named in payloads."""
    router = APIRouter()

    @router.post(WEBHOOK_PATH, status_code=202)
    async def receive_registry_webhook(request: Request) -> JSONResponse:
        if not _authorized(request.headers.get("authorization"), secret):
            return JSONResponse(
                {"detail": "missing or wrong 'Authorization: Bearer <webhook secret>' header"},
                status_code=401,
            )
        body = await request.body()
        if len(body) > MAX_BODY_BYTES:
            return JSONResponse({"detail": "body too large"}, status_code=413)
        try:
            parsed = parse_registry_webhook(body, registry_host)
        except RejectedMessage as refused:
            log.warning("event=webhook-refused reason=%r", refused.reason)
            return JSONResponse({"detail": refused.reason}, status_code=400)
        wanted = [event for event in parsed.events if unpack_filter.accepts(event)]
        ignored = parsed.ignored + len(parsed.events) - len(wanted)
        for event in wanted:
            try:
                await run_in_threadpool(
                    publisher.publish,
                    f"registry.{event.kind}",
                    image_event_message(event),
                    event.message_id(),
                )
            except BrokerUnavailable as error:
                # The registry retries a failed notification; nothing was acknowledged.
                log.error("event=webhook-publish-failed error=%s", error)
                return JSONResponse(
                    {"detail": f"message broker unavailable, retry later: {error}"},
                    status_code=503,
                )
            log.info("event=webhook-accepted kind=%s image=%s", event.kind, event.reference)
        answer = {"accepted": len(wanted), "ignored": ignored}
        return JSONResponse(answer, status_code=202 if wanted else 200)

    return router


def create_webhook_app(
    secret: SecretStr,
    publisher: Publisher,
    unpack_filter: UnpackFilter,
    registry_host: str | None = None,
) -> FastAPI:
    """A standalone app with only the webhook (tests, or running the receiver on its own)."""
    app = FastAPI(title="cvmfs registry webhook receiver")
    app.include_router(registry_webhook_router(secret, publisher, unpack_filter, registry_host))
    return app
