"""Runs the bridge as a process: wires settings, lookup and the Prefect starter, handles signals.

The service's CLI calls `run_bridge` with its repository registry as the lookup.
"""

from __future__ import annotations

import signal
from types import FrameType

from bridge.config import BridgeConfig
from bridge.consumer import BridgeConsumer
from bridge.repositories import RepositoryLookup
from bridge.run_requests import FlowStarter, RequestParameters, repository_request_parameters
from metrics.bridge import BridgeMetrics
from service.settings import Settings


def run_bridge(
    settings: Settings,
    lookup: RepositoryLookup,
    config: BridgeConfig | None = None,
    starter: FlowStarter | None = None,
    request_params: RequestParameters = repository_request_parameters,
    metrics: BridgeMetrics | None = None,
) -> None:
    """Consume until SIGTERM or SIGINT, then finish the batch in hand and close."""
    if starter is None:
        from bridge.flow_starter import PrefectFlowStarter  # imports prefect: ~1.5 s

        starter = PrefectFlowStarter(settings.prefect.api_url)
    consumer = BridgeConsumer(
        settings.rabbitmq,
        config or BridgeConfig(),
        lookup,
        starter,
        request_params=request_params,
        metrics=metrics,
    )

    def stop(_signum: int, _frame: FrameType | None) -> None:
        consumer.request_stop()

    previous = {sig: signal.signal(sig, stop) for sig in (signal.SIGTERM, signal.SIGINT)}
    try:
        consumer.run()
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
