"""The OCI registry of the local stack: Debian's docker-registry (distribution 2.8).

It runs with a config of our own bound to 127.0.0.1, deletes enabled, webhooks to the service.
"""

from __future__ import annotations

import os
from pathlib import Path

import yaml

from stack import packages, probe
from stack.daemon import Daemon


class Registry(Daemon):
    name = "registry"
    start_timeout_s = 30.0

    @property
    def url(self) -> str:
        return self.settings.registry.url

    @property
    def config_file(self) -> Path:
        return self.base_dir / "config.yml"

    def ports(self) -> list[int]:
        return [self.settings.registry.port]

    def argv(self) -> list[str]:
        return ["docker-registry", "serve", str(self.config_file)]

    def missing_packages(self) -> list[str]:
        return packages.missing_debian(["docker-registry", "skopeo", "umoci"])

    def config(self) -> dict[str, object]:
        """The registry configuration; never the packaged one, which binds every interface."""
        secret = self.settings.registry.webhook_secret.get_secret_value()
        return {
            "version": 0.1,
            "log": {"level": "info"},
            "storage": {
                "cache": {"blobdescriptor": "inmemory"},
                "filesystem": {"rootdirectory": str(self.base_dir / "data")},
                "delete": {"enabled": True},
            },
            "http": {
                "addr": f"127.0.0.1:{self.settings.registry.port}",
                "headers": {"X-Content-Type-Options": ["nosniff"]},
            },
            "notifications": {
                "events": {"includereferences": True},
                "endpoints": [
                    {
                        "name": "cvmfs-svc",
                        "url": f"http://127.0.0.1:{self.settings.api.port}/webhooks/registry",
                        "headers": {"Authorization": [f"Bearer {secret}"]},
                        "timeout": "2s",
                        "threshold": 5,
                        "backoff": "1s",
                    }
                ],
            },
        }

    def prepare(self) -> None:
        (self.base_dir / "data").mkdir(parents=True, exist_ok=True)
        # The file holds the webhook secret: readable by its owner only.
        fd = os.open(self.config_file, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as out:
            yaml.safe_dump(self.config(), out, sort_keys=False)

    def probe(self) -> tuple[bool, str]:
        answer = probe.http("GET", f"{self.url}/v2/")
        return answer.status == 200, f"GET /v2/ -> {answer.status or answer.error}"
