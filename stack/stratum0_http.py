"""The stack component that serves local stratum-0 storage to CVMFS clients over HTTP.

It runs stack.stratum0_server under the project's interpreter, on 127.0.0.1 only.
"""

from __future__ import annotations

import sys
from pathlib import Path

from stack import probe
from stack.daemon import Daemon
from stack.stratum0_server import HEALTH_PATH


class Stratum0Http(Daemon):
    name = "stratum0-http"
    start_timeout_s = 30.0

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.settings.stratum0.http_port}/cvmfs"

    @property
    def storage_dir(self) -> Path:
        """Where repositories live: <data_dir>/stratum0/<fqrn>/ (the served tree)."""
        return self.settings.absolute_data_dir / "stratum0"

    def ports(self) -> list[int]:
        return [self.settings.stratum0.http_port]

    def argv(self) -> list[str]:
        return [
            sys.executable,
            "-m",
            "stack.stratum0_server",
            "--root",
            str(self.storage_dir),
            "--port",
            str(self.settings.stratum0.http_port),
        ]

    def extra_env(self) -> dict[str, str]:
        # The module is found from the project root, whatever the caller's working directory.
        project_root = Path(__file__).resolve().parent.parent
        return {"PYTHONPATH": str(project_root)}

    def prepare(self) -> None:
        self.storage_dir.mkdir(parents=True, exist_ok=True)

    def probe(self) -> tuple[bool, str]:
        port = self.settings.stratum0.http_port
        answer = probe.http("GET", f"http://127.0.0.1:{port}{HEALTH_PATH}")
        return answer.status == 200, f"GET {HEALTH_PATH} -> {answer.status or answer.error}"
