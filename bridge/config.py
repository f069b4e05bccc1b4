"""Tunables of the bridge (queues, bindings, coalescing, retries, deployments), with defaults.

Broker endpoints and exchange names come from `Settings.rabbitmq`; this holds the rest.
"""

from __future__ import annotations

from pydantic import BaseModel, Field


class QueueRoute(BaseModel):
    """A work queue of the bridge and the routing keys that feed it from the events exchange."""

    queue: str
    binding_keys: list[str]

    @property
    def retry_queue(self) -> str:
        return f"{self.queue}.retry"


class BridgeConfig(BaseModel):
    # RGW publishes with routing key = topic name, so bucket topics are named `s3.<anything>`
    # (e.g. `s3.<fqrn>`) and one shared queue serves every repository.
    s3: QueueRoute = Field(
        default_factory=lambda: QueueRoute(queue="cvmfs.bridge.s3-events", binding_keys=["s3.#"])
    )
    registry: QueueRoute = Field(
        default_factory=lambda: QueueRoute(
            queue="cvmfs.bridge.registry-events", binding_keys=["registry.#"]
        )
    )
    repository_requests: QueueRoute = Field(
        default_factory=lambda: QueueRoute(
            queue="cvmfs.bridge.repository-requests", binding_keys=["repository.#"]
        )
    )
    dead_letter_queue: str = "cvmfs.dead-letter"
    # Quorum queues (RabbitMQ >= 3.8) survive unclean broker stops and count deliveries;
    # "classic" is the fallback for brokers without them.
    queue_type: str = "quorum"
    # A message that kills the consumer process on every delivery is dead-lettered by the
    # broker after this many deliveries (quorum queues only).
    delivery_limit: int = 20

    coalesce_window_s: float = Field(default=1.0, ge=0.0)
    coalesce_max_events: int = Field(default=500, ge=1)
    # A batch that got no event for this long is started before its window ends (a lone
    # upload waits 0.25 s, not 1 s); a burst still fills whole windows. None: windows only.
    coalesce_quiet_s: float | None = Field(default=0.25, ge=0.0)
    prefetch_count: int = Field(default=1000, ge=1)

    # Attempts of a transient failure before the message is dead-lettered: 20 with the delays
    # below wait 14 min in all, through a Prefect server restart or upgrade. 8 (2 min) was
    # too few: with Prefect stopped for 2.5 min on `./svc up`, an upload's event went to the
    # dead-letter queue (`retries_exhausted`), where a repository request waits for a replay.
    max_attempts: int = Field(default=20, ge=1)
    retry_base_delay_s: float = Field(default=1.0, gt=0.0)
    retry_max_delay_s: float = Field(default=60.0, gt=0.0)
    reconnect_max_delay_s: float = Field(default=10.0, gt=0.0)

    sync_deployment: str = "sync/sync"
    unpack_deployment: str = "unpack/unpack"
    provision_deployment: str = "provision/provision"
    reconcile_deployment: str = "reconcile/reconcile"
    # After a lost broker connection, reconcile every repository this long after reconnecting
    # (RGW drops events it cannot deliver unless the topic is persistent); None: never.
    reconcile_after_reconnect_s: float | None = Field(default=15.0, ge=0.0)

    def retry_delay_s(self, attempt: int) -> float:
        """Delay before attempt number `attempt` + 1 (exponential, capped)."""
        return float(
            min(self.retry_base_delay_s * 2 ** max(attempt - 1, 0), self.retry_max_delay_s)
        )
