"""The real FlowStarter: `run_deployment(..., timeout=0)` against the Prefect API.

It classifies failures so the consumer knows what to do: refused runs are permanent
(dead-letter); an unreachable or failing server and a deployment not (yet) served are
transient (retry later, dead-letter after the consumer's bounded attempts).
"""

from __future__ import annotations

from typing import Any

import httpx
from prefect.client.schemas.objects import FlowRun
from prefect.deployments import run_deployment
from prefect.exceptions import ObjectNotFound, PrefectHTTPStatusError
from prefect.settings import (
    PREFECT_API_REQUEST_TIMEOUT,
    PREFECT_API_URL,
    PREFECT_CLIENT_MAX_RETRIES,
    temporary_settings,
)
from pydantic import ValidationError

from bridge.errors import PermanentStartError, TransientStartError

# 4xx answers that will not change on retry: bad parameters (409 from schema validation),
# unknown deployment, malformed request.
_PERMANENT_STATUS = frozenset({400, 404, 409, 410, 422})


class PrefectFlowStarter:
    """Creates flow runs from deployments by name (`flow/deployment`) with an idempotency key."""

    def __init__(
        self,
        api_url: str,
        tags: tuple[str, ...] = ("bridge",),
        max_client_retries: int = 1,
        request_timeout_s: float = 15.0,
    ) -> None:
        self.api_url = api_url
        self.tags = tags
        # The consumer retries with its own backoff; long client-side retries would block
        # the AMQP connection's heartbeats (BlockingConnection) and get it closed.
        self._settings = {
            PREFECT_API_URL: api_url,
            PREFECT_CLIENT_MAX_RETRIES: max_client_retries,
            PREFECT_API_REQUEST_TIMEOUT: request_timeout_s,
        }

    def __call__(self, deployment: str, parameters: dict[str, Any], idempotency_key: str) -> str:
        try:
            with temporary_settings(updates=self._settings):
                flow_run = run_deployment(
                    deployment,
                    parameters=parameters,
                    timeout=0,
                    idempotency_key=idempotency_key,
                    tags=list(self.tags),
                    as_subflow=False,
                )
        except ObjectNotFound as error:
            # Transient: while the deployments runner (re)starts, its deployments are briefly
            # unknown; the consumer's bounded retries outlast that, then dead-letter.
            raise TransientStartError(
                f"deployment {deployment!r} not found at {self.api_url}: is it served "
                "(./svc serve-deployments)?"
            ) from error
        except PrefectHTTPStatusError as error:
            status = error.response.status_code
            detail = _detail(error.response)
            if status in _PERMANENT_STATUS:
                raise PermanentStartError(
                    f"Prefect refused a run of {deployment!r} ({status}): {detail}"
                ) from error
            raise TransientStartError(
                f"Prefect answered {status} for {deployment!r}: {detail}"
            ) from error
        except ValidationError as error:
            raise PermanentStartError(f"invalid run request for {deployment!r}: {error}") from error
        except (httpx.TransportError, OSError) as error:
            raise TransientStartError(
                f"Prefect API at {self.api_url} unreachable: {error!r}"
            ) from error
        # run_deployment is sync here (no running event loop); the check narrows its type.
        assert isinstance(flow_run, FlowRun)
        return str(flow_run.id)


def _detail(response: httpx.Response) -> str:
    try:
        return str(response.json().get("detail", response.text))[:500]
    except (ValueError, AttributeError):
        return response.text[:500]
