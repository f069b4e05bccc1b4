"""The production runner (`./svc worker`): a Prefect process worker polling the work pool that
holds the service's deployments, on any number of hosts.

It makes sure the pool (type `process`) and the deployments in it exist (idempotent, so every
worker may do it at start, as every `serve` runner registers its deployments), keeps the rescue
automation, serves the runs' metrics, then polls. Each flow run is a subprocess that inherits
this process's environment (the service settings, the Prefect client variables, the metrics
directory) and loads its flow by module path from the installed package.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import socket
from pathlib import Path

from prefect import get_client
from prefect.client.orchestration import SyncPrefectClient
from prefect.client.schemas.actions import WorkPoolCreate
from prefect.exceptions import ObjectAlreadyExists, ObjectNotFound
from prefect.types.entrypoint import EntrypointType
from prefect.workers.process import ProcessWorker

from deployments.rescue import ensure_rescue_automation
from deployments.serve import CONCURRENT_RUNS, deployments, require_prefect_server
from metrics.runner import serve_runner_metrics
from service.settings import Settings

POOL_TYPE = "process"


class WorkPoolNotSet(SystemExit):
    """`./svc worker` without prefect.work_pool: nothing to poll."""


def ensure_work_pool(client: SyncPrefectClient, name: str) -> None:
    """The process work pool `name`, created with Prefect's default job template if missing."""
    try:
        pool = client.read_work_pool(name)
    except ObjectNotFound:
        with contextlib.suppress(ObjectAlreadyExists):  # another worker created it meanwhile
            client.create_work_pool(
                WorkPoolCreate(
                    name=name,
                    type=POOL_TYPE,
                    base_job_template=ProcessWorker.get_default_base_job_template(),
                    description="CVMFS distribution service flow runs (./svc worker)",
                )
            )
        return
    if pool.type != POOL_TYPE:
        raise SystemExit(
            f"worker: the work pool {name!r} exists with type {pool.type!r}, not {POOL_TYPE!r}; "
            "name another pool in prefect.work_pool or delete that one"
        )


def deploy_to_work_pool(settings: Settings, pool: str) -> int:
    """Register every deployment in `pool` (updates what exists); how many."""
    registered = deployments(settings, EntrypointType.MODULE_PATH)
    for deployment in registered:
        deployment.apply(work_pool_name=pool)
    return len(registered)


def absolute_paths_for_runs(settings: Settings) -> None:
    """Flow runs start in a temporary directory: a relative data directory or settings file
    must name the same place there as here."""
    os.environ["CVMFS_SVC_DATA_DIR"] = str(settings.absolute_data_dir)
    settings_file = os.environ.get("CVMFS_SVC_SETTINGS_FILE")
    if settings_file:
        os.environ["CVMFS_SVC_SETTINGS_FILE"] = str(Path(settings_file).resolve())


def main() -> None:
    settings = Settings.load()
    pool = settings.prefect.work_pool
    if pool is None:
        raise WorkPoolNotSet(
            "worker: prefect.work_pool is not set (CVMFS_SVC_PREFECT__WORK_POOL=cvmfs); "
            "without a pool the deployments are served by `./svc serve-deployments`"
        )
    require_prefect_server(settings.prefect.api_url)
    absolute_paths_for_runs(settings)
    serve_runner_metrics(settings)  # before any flow run: the runs inherit its directory
    with get_client(sync_client=True) as client:
        ensure_work_pool(client, pool)
        ensure_rescue_automation(client, settings)
    count = deploy_to_work_pool(settings, pool)
    print(f"worker: {count} deployments in work pool {pool!r}", flush=True)
    name = f"cvmfs-{socket.gethostname()}-{os.getpid()}"
    asyncio.run(ProcessWorker(work_pool_name=pool, name=name, limit=CONCURRENT_RUNS).start())


if __name__ == "__main__":
    main()
