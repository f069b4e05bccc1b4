"""`cvmfs-svc api` serves the application with uvicorn on 127.0.0.1:<api.port> of the settings."""

from __future__ import annotations

import signal
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest

from service.settings import Settings

pytestmark = [pytest.mark.slow]
CLI = Path(sys.executable).parent / "cvmfs-svc"


def test_api_command_serves_the_app_on_the_configured_loopback_port(
    stack_settings: Settings, stack_env: dict[str, str], tmp_path: Path
) -> None:
    env = stack_env | {
        "CVMFS_SVC_DATABASE_URL": f"sqlite:///{tmp_path / 'registry.sqlite3'}",
        "CVMFS_SVC_OIDC__ISSUER_URL": "http://127.0.0.1:9/",  # never reached: no token sent
        "CVMFS_SVC_VAULT__TOKEN": "not-used-here",  # production sets it; no key is read here
    }
    base = f"http://127.0.0.1:{stack_settings.api.port}"
    log = (tmp_path / "api.log").open("w")
    process = subprocess.Popen([str(CLI), "api"], env=env, stdout=log, stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + 60
        while True:
            assert process.poll() is None, (tmp_path / "api.log").read_text()
            try:
                if httpx.get(f"{base}/health", timeout=2).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            assert time.monotonic() < deadline, "the API did not answer within 60 s"
            time.sleep(0.2)
        assert httpx.get(f"{base}/openapi.json").json()["info"]["title"]
        refused = httpx.get(f"{base}/repositories")
        assert refused.status_code == 401 and refused.json()["error"] == "unauthenticated"
    finally:
        process.terminate()
        # uvicorn shuts down gracefully, then re-raises SIGTERM so the exit shows the signal.
        assert process.wait(timeout=30) in (0, -signal.SIGTERM)
        log.close()
    output = (tmp_path / "api.log").read_text()
    assert f"Uvicorn running on {base}" in output
    assert "Finished server process" in output
