"""The whole service as `./svc up` runs it (every SERVICE_COMMANDS process, with the environment
`./svc up` gives its children), for tests that drive it from outside like users do.
"""

from __future__ import annotations

import subprocess
import sys
import time
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from pathlib import Path

import httpx

from service.run import SERVICE_COMMANDS, child_environment
from service.settings import Settings
from tests.conftest import settings_env

START_WAIT_S = 120.0
STOP_GRACE_S = 20.0
# What the bridge starts runs of; a test names the others it needs.
CORE_DEPLOYMENTS = ("provision/provision", "sync/sync", "unpack/unpack", "reconcile/reconcile")


def until(condition: Callable[[], bool], what: str, timeout_s: float) -> None:
    """Poll `condition`; a failing read (nothing published yet) is retried, and the last error
    is reported if time runs out."""
    deadline = time.monotonic() + timeout_s
    last_error: Exception | None = None
    while time.monotonic() < deadline:
        try:
            if condition():
                return
        except Exception as error:
            last_error = error
        time.sleep(0.5)
    raise TimeoutError(f"{what} within {timeout_s:.0f} s (last error: {last_error!r})")


def wait_until_served(settings: Settings, deployments: Iterable[str], page: str) -> None:
    """The API answers `page` and the runner has registered `deployments` on Prefect."""
    urls = [
        f"{settings.api.base_url}{page}",
        *(f"{settings.prefect.api_url}/deployments/name/{name}" for name in deployments),
    ]

    def served() -> bool:
        return all(httpx.get(url).is_success for url in urls)

    until(served, "the API and the deployments coming up", START_WAIT_S)


@contextmanager
def running_service(
    settings: Settings,
    logs: Path,
    deployments: Iterable[str] = CORE_DEPLOYMENTS,
    page: str = "/openapi.json",
) -> Iterator[Settings]:
    """Start every service process with `settings`, each logging to `<logs>/<command>.log`;
    yield once they serve, stop them (SIGTERM, then SIGKILL after a grace) at the end."""
    env = {**child_environment(settings), **settings_env(settings)}
    children: list[subprocess.Popen[bytes]] = []
    for command in SERVICE_COMMANDS:
        with (logs / f"{command}.log").open("wb") as log:
            children.append(
                subprocess.Popen(
                    [sys.executable, "-m", "service.cli", command],
                    env=env,
                    stdout=log,
                    stderr=subprocess.STDOUT,
                )
            )
    try:
        wait_until_served(settings, deployments, page)
        yield settings
    finally:
        for child in children:
            child.terminate()
        for child in children:
            try:
                child.wait(timeout=STOP_GRACE_S)
            except subprocess.TimeoutExpired:
                child.kill()
                child.wait()
