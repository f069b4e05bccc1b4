"""The Prefect client environment of every service process, derived from the service settings.

Prefect reads its settings once, when it is imported: a process applies this environment before
anything imports prefect. The API URL comes from the service settings (never a temporary
server: ephemeral mode is switched off, so a missing server is an error, not a throwaway
server nobody else sees), and everything Prefect keeps on disk (results a retry needs, its
home) lives under the data directory instead of the user's ~/.prefect.
"""

from __future__ import annotations

import math
import os
import sys

from service.settings import Settings


class PrefectEnvironmentError(RuntimeError):
    """Prefect was imported before the service could point it at the right server."""


def prefect_environment(settings: Settings) -> dict[str, str]:
    data_dir = settings.absolute_data_dir
    return {
        "PREFECT_API_URL": settings.prefect.api_url,
        "PREFECT_SERVER_EPHEMERAL_ENABLED": "false",
        "PREFECT_HOME": str(data_dir / "prefect-client"),
        "PREFECT_RESULTS_LOCAL_STORAGE_PATH": str(data_dir / "prefect-results"),
        # No task or flow of the service persists its result (tests/test_host_local_state.py):
        # every task re-reads the state it acts on and is idempotent, so a retry on any host
        # redoes the step instead of loading a result another host wrote.
        "PREFECT_RESULTS_PERSIST_BY_DEFAULT": "false",
        # Whole seconds only; deployments/serve.py hands the runner the exact interval.
        "PREFECT_RUNNER_POLL_FREQUENCY": str(max(1, math.ceil(settings.prefect.runner_poll_s))),
        # A worker (work-pool layout) asks for runs every 10 s by default: the same interval as
        # the runner's, so a bridge's run starts as soon on either layout.
        "PREFECT_WORKER_QUERY_SECONDS": str(settings.prefect.runner_poll_s),
        "PREFECT_FLOWS_HEARTBEAT_FREQUENCY": str(settings.prefect.heartbeat_s),
        "PREFECT_LOGGING_EXTRA_LOGGERS": "cvmfs",
        # The service's own loggers also log outside flow runs (bridge, API, gateway): those
        # lines belong on the console only, without a warning that they are not sent.
        "PREFECT_LOGGING_TO_API_WHEN_MISSING_FLOW": "ignore",
        "DO_NOT_TRACK": "1",
    }


def apply_prefect_environment(settings: Settings) -> None:
    """Set this process's Prefect environment; call it before anything imports prefect."""
    wanted = prefect_environment(settings)
    if "prefect" in sys.modules and os.environ.get("PREFECT_API_URL") != wanted["PREFECT_API_URL"]:
        raise PrefectEnvironmentError(
            "prefect was imported before the service set PREFECT_API_URL to "
            f"{wanted['PREFECT_API_URL']}; apply the environment first"
        )
    os.environ.update(wanted)
