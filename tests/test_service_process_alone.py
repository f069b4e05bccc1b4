"""`cvmfs-svc serve-deployments` started alone, as on a host of its own: it takes the Prefect API
URL from the service settings (no PREFECT_API_URL in its environment), never starts a temporary
server, and keeps nothing under the user's ~/.prefect.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from bridge.flow_starter import PrefectFlowStarter
from service.settings import Settings
from tests.conftest import settings_env

pytest_plugins = ("tests.fixtures_auth", "tests.fixtures_service")
pytestmark = [pytest.mark.stack, pytest.mark.slow]
PROJECT_DIR = Path(__file__).resolve().parents[1]
RUN_WAIT_S = 180.0


def _alone_environment(settings: Settings, home: Path) -> dict[str, str]:
    """A fresh host's environment: no PREFECT_* variables, a home of its own."""
    base = {
        key: value
        for key, value in os.environ.items()
        if not key.startswith(("PREFECT_", "CVMFS_SVC_"))
    }
    return {**base, **settings_env(settings), "HOME": str(home)}


def _start(env: dict[str, str], log: Path) -> subprocess.Popen[bytes]:
    with log.open("wb") as out:
        return subprocess.Popen(
            [sys.executable, "-m", "service.cli", "serve-deployments"],
            env=env,
            cwd=PROJECT_DIR,
            stdout=out,
            stderr=subprocess.STDOUT,
        )


def _stop(process: subprocess.Popen[bytes]) -> None:
    if process.poll() is None:
        process.terminate()
        try:
            process.wait(timeout=20)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


@pytest.fixture
def alone_home(tmp_path: Path) -> Iterator[Path]:
    home = tmp_path / "home"
    home.mkdir()
    yield home


def _run_state(settings: Settings, run_id: str) -> str | None:
    response = httpx.get(f"{settings.prefect.api_url}/flow_runs/{run_id}", timeout=10)
    response.raise_for_status()
    state = response.json().get("state") or {}
    return state.get("type")


def test_serve_deployments_alone_serves_the_settings_prefect_server(
    service_settings: Settings, alone_home: Path, tmp_path: Path
) -> None:
    log = tmp_path / "serve-deployments.log"
    process = _start(_alone_environment(service_settings, alone_home), log)
    try:
        starter = PrefectFlowStarter(service_settings.prefect.api_url, tags=("test",))
        deadline = time.monotonic() + RUN_WAIT_S
        run_id: str | None = None
        while run_id is None:
            try:  # the deployment exists once this runner has registered it
                run_id = starter(
                    "purge-expired-keys/purge-expired-keys", {}, f"alone-{uuid.uuid4().hex}"
                )
            except Exception:
                if time.monotonic() > deadline or process.poll() is not None:
                    tail = log.read_text()[-3000:]
                    raise AssertionError(f"no deployment served; log:\n{tail}") from None
                time.sleep(1)
        while (state := _run_state(service_settings, run_id)) not in ("COMPLETED", "FAILED"):
            assert process.poll() is None, f"runner exited; log:\n{log.read_text()[-3000:]}"
            assert time.monotonic() < deadline, f"run {run_id} stayed {state}"
            time.sleep(1)
        assert state == "COMPLETED", log.read_text()[-3000:]
    finally:
        _stop(process)
    output = log.read_text()
    assert "temporary server" not in output
    assert not (alone_home / ".prefect").exists(), sorted(
        str(p) for p in (alone_home / ".prefect").rglob("*")
    )
    assert (service_settings.absolute_data_dir / "prefect-client").is_dir()


def test_serve_deployments_without_a_prefect_server_fails_instead_of_a_temporary_one(
    service_settings: Settings, alone_home: Path, tmp_path: Path
) -> None:
    closed_port = service_settings.prefect.port + 7  # nothing listens there
    settings = service_settings.model_copy(
        update={"prefect": service_settings.prefect.model_copy(update={"port": closed_port})}
    )
    log = tmp_path / "serve-deployments.log"
    process = _start(_alone_environment(settings, alone_home), log)
    try:
        process.wait(timeout=120)
    except subprocess.TimeoutExpired:
        _stop(process)
        raise AssertionError(f"still running; log:\n{log.read_text()[-3000:]}") from None
    output = log.read_text()
    assert process.returncode != 0
    assert "temporary server" not in output
    assert f"127.0.0.1:{closed_port}" in output, output[-3000:]
