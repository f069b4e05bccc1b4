"""The bridge as the service runs it: registry lookup, authorized repository requests, Prefect,
and the repository watcher beside the consumer (bridge/repository_watch.py).

`./svc bridge` (service/cli.py) calls `serve_bridge(settings)`; it returns on SIGTERM.
"""

from __future__ import annotations

import threading

from bridge.config import BridgeConfig
from bridge.main import run_bridge
from bridge.provision_requests import ProvisionRequestParameters
from bridge.registry_lookup import RegistryRepositoryLookup
from bridge.repository_watch import run_watcher
from metrics.bridge import serve_bridge_metrics
from service.auth import TokenVerifier
from service.messages import ProvisionReply, RequestParser
from service.replies import publish_reply
from service.repositories import RepositoryRegistry
from service.settings import Settings


def serve_bridge(settings: Settings, config: BridgeConfig | None = None) -> None:
    def reply(answer: ProvisionReply) -> None:
        publish_reply(settings, answer)

    stop_watching = threading.Event()
    watcher = threading.Thread(
        target=run_watcher, args=(settings, stop_watching), name="repository-watcher", daemon=True
    )
    watcher.start()
    registry = RepositoryRegistry.open(settings)
    try:
        with TokenVerifier(settings.oidc) as verifier:
            requests = ProvisionRequestParameters(
                RequestParser.from_settings(settings), verifier, reply
            )
            run_bridge(
                settings,
                RegistryRepositoryLookup(registry),
                config,
                request_params=requests,
                metrics=serve_bridge_metrics(settings),
            )
    finally:
        stop_watching.set()
        registry.close()
        watcher.join(timeout=10)
