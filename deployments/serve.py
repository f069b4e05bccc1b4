"""Serves every deployment of the service from one process (`python -m deployments.serve`).

Each flow run executes in its own subprocess; several copies of this process (on several
hosts) may serve the same deployments: the Prefect server hands each run to exactly one.
"""

from __future__ import annotations

import time
from typing import Any, cast

import httpx
from prefect import Flow, get_client, serve
from prefect.deployments.runner import RunnerDeployment
from prefect.types.entrypoint import EntrypointType

from deployments.rescue import ensure_rescue_automation
from flows.maintenance import deprovision, purge_expired_keys, resign_whitelists
from flows.provision import provision, wire_waiting_bucket
from flows.rollback import rollback
from flows.sync import reconcile, sync
from flows.tag import tag
from flows.unpack import unpack, unpack_delete, unpack_gc, unpack_wishlist
from metrics.runner import serve_runner_metrics
from service.settings import Settings

RECONCILE_CRON = "*/30 * * * *"
DAILY_CRON = "17 3 * * *"
GC_CRON = "47 3 * * *"
CONCURRENT_RUNS = 4
# A runner started with the stack (or after a server restart) waits this long for the server.
PREFECT_WAIT_S = 30.0


def _deployment(
    flow: Flow[Any, Any], entrypoint_type: EntrypointType, **options: Any
) -> RunnerDeployment:
    """`<flow>/<flow>`: the name the bridge and the API start runs by."""
    return cast(
        RunnerDeployment,
        flow.to_deployment(
            name=flow.name, tags=["cvmfs"], entrypoint_type=entrypoint_type, **options
        ),
    )


def deployments(
    settings: Settings, entrypoint_type: EntrypointType = EntrypointType.FILE_PATH
) -> list[RunnerDeployment]:
    """Every deployment. A work pool's workers load flows by module path (`flows.sync.sync`,
    from the installed package), so the checkout's path on the registering host never matters."""
    unpacked_fqrn = f"unpacked.{settings.repository_domain}"
    gc_parameters = {"req": {"fqrn": unpacked_fqrn}}
    kind = entrypoint_type
    return [
        _deployment(provision, kind),
        _deployment(wire_waiting_bucket, kind),
        _deployment(deprovision, kind),
        _deployment(sync, kind),
        _deployment(reconcile, kind, cron=RECONCILE_CRON),
        _deployment(rollback, kind),
        _deployment(tag, kind),
        _deployment(resign_whitelists, kind, cron=DAILY_CRON),
        _deployment(purge_expired_keys, kind, cron=DAILY_CRON),
        _deployment(unpack, kind),
        _deployment(unpack_delete, kind),
        _deployment(unpack_gc, kind, cron=GC_CRON, parameters=gc_parameters),
        _deployment(unpack_wishlist, kind),
    ]


class PrefectUnreachable(SystemExit):
    """The settings' Prefect server does not answer: the runner refuses to serve nothing."""


def require_prefect_server(api_url: str, wait_s: float = PREFECT_WAIT_S) -> None:
    """Wait (bounded) until the Prefect server named by the settings answers its health check.

    Runs must be served from the server every bridge and API process uses: a runner that
    cannot reach it exits with the reason instead of serving deployments nobody sees.
    """
    deadline = time.monotonic() + wait_s
    while True:
        try:
            if httpx.get(f"{api_url}/health", timeout=5).is_success:
                return
            problem = "it answers, but not healthy"
        except httpx.HTTPError as error:
            problem = f"{type(error).__name__}: {error}"
        if time.monotonic() >= deadline:
            raise PrefectUnreachable(
                f"serve-deployments: the Prefect server {api_url} (settings prefect.*) did not "
                f"answer within {wait_s:.0f} s ({problem}); start it (`./svc stack up prefect`) "
                "or point CVMFS_SVC_PREFECT__* at the service's server"
            )
        time.sleep(1.0)


def main() -> None:
    settings = Settings.load()
    if settings.prefect.work_pool is not None:
        raise SystemExit(
            f"serve-deployments: prefect.work_pool is {settings.prefect.work_pool!r}, so the "
            "deployments belong to that pool: run `./svc worker` on each runner host (or unset "
            "CVMFS_SVC_PREFECT__WORK_POOL for the embedded `serve`)"
        )
    require_prefect_server(settings.prefect.api_url)
    serve_runner_metrics(settings)  # before any flow run: the runs inherit its directory
    with get_client(sync_client=True) as client:
        ensure_rescue_automation(client, settings)
    # pause_on_shutdown=False: stopping one runner must not pause the schedules (prefect-notes §2).
    # query_seconds: Prefect's own setting takes whole seconds; a sub-second poll picks up a
    # bridge's run sooner (bench/README.md, sync latency).
    serve(
        *deployments(settings),
        limit=CONCURRENT_RUNS,
        pause_on_shutdown=False,
        query_seconds=settings.prefect.runner_poll_s,
    )


if __name__ == "__main__":
    main()
