"""Serves every deployment of the service from one process (`python -m deployments.serve`).

Each flow run executes in its own subprocess; several copies of this process (on several
hosts) may serve the same deployments: the Prefect server hands each run to exactly one.
"""

from __future__ import annotations

from typing import Any, cast

from prefect import Flow, serve
from prefect.deployments.runner import RunnerDeployment

from flows.maintenance import deprovision, purge_expired_keys, resign_whitelists
from flows.provision import provision
from flows.rollback import rollback
from flows.sync import reconcile, sync
from flows.tag import tag
from flows.unpack import unpack, unpack_delete, unpack_gc, unpack_wishlist
from service.settings import Settings

RECONCILE_CRON = "*/30 * * * *"
DAILY_CRON = "17 3 * * *"
GC_CRON = "47 3 * * *"
CONCURRENT_RUNS = 4


def _deployment(flow: Flow[Any, Any], **options: Any) -> RunnerDeployment:
    """`<flow>/<flow>`: the name the bridge and the API start runs by."""
    return cast(RunnerDeployment, flow.to_deployment(name=flow.name, tags=["cvmfs"], **options))


def deployments(settings: Settings) -> list[RunnerDeployment]:
    unpacked_fqrn = f"unpacked.{settings.repository_domain}"
    return [
        _deployment(provision),
        _deployment(deprovision),
        _deployment(sync),
        _deployment(reconcile, cron=RECONCILE_CRON),
        _deployment(rollback),
        _deployment(tag),
        _deployment(resign_whitelists, cron=DAILY_CRON),
        _deployment(purge_expired_keys, cron=DAILY_CRON),
        _deployment(unpack),
        _deployment(unpack_delete),
        _deployment(unpack_gc, cron=GC_CRON, parameters={"req": {"fqrn": unpacked_fqrn}}),
        _deployment(unpack_wishlist),
    ]


def main() -> None:
    settings = Settings.load()
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
