"""The Prefect server of the local stack: `prefect server start` from the project's venv.

SQLite under its own PREFECT_HOME by default; PostgreSQL (settings.prefect_database_url) when
postgres.enabled or prefect.database_url is set.
"""

from __future__ import annotations

import sys
from pathlib import Path

from stack import packages, probe
from stack.daemon import Daemon


class PrefectServer(Daemon):
    name = "prefect"
    # First start runs the database migrations: ~10 s alone, much more on a busy 2-core box.
    start_timeout_s = 180.0

    @property
    def url(self) -> str:
        """The UI; the API is settings.prefect.api_url."""
        return f"http://127.0.0.1:{self.settings.prefect.port}"

    def ports(self) -> list[int]:
        return [self.settings.prefect.port]

    def missing_packages(self) -> list[str]:
        return packages.missing_python(["prefect"])

    def argv(self) -> list[str]:
        prefect = Path(sys.executable).parent / "prefect"
        port = str(self.settings.prefect.port)
        return [str(prefect), "server", "start", "--host", "127.0.0.1", "--port", port]

    def extra_env(self) -> dict[str, str]:
        env = {
            "PREFECT_HOME": str(self.base_dir / "home"),
            "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
            "DO_NOT_TRACK": "1",
            "PREFECT_SERVER_API_HOST": "127.0.0.1",
            "PREFECT_SERVER_API_PORT": str(self.settings.prefect.port),
            # A client setting inherited from a test session must not point the server elsewhere.
            "PREFECT_API_URL": self.settings.prefect.api_url,
            # A crashed run's publish lease is freed at most this long after it expires
            # (Prefect's floor for a lease is 60 s; its default sweep is every 15 s).
            "PREFECT_SERVER_SERVICES_REPOSSESSOR_LOOP_SECONDS": "5",
        }
        database_url = self.settings.prefect_database_url
        if database_url is not None:
            env["PREFECT_SERVER_DATABASE_CONNECTION_URL"] = database_url
        return env

    def prepare(self) -> None:
        (self.base_dir / "home").mkdir(parents=True, exist_ok=True)

    def probe(self) -> tuple[bool, str]:
        answer = probe.http("GET", f"{self.settings.prefect.api_url}/health")
        return answer.status == 200, f"GET /api/health -> {answer.status or answer.error}"
