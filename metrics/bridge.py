"""What the bridge counts: messages and S3 events in, batches out, dead letters by reason.

Each bridge copy counts what it consumed; Prometheus sums the copies (`sum by (reason)`).
"""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

from metrics.endpoint import serve_metrics
from service.settings import Settings

# Events per started sync batch: a lone upload is 1, a burst fills up to coalesce_max_events.
BATCH_EVENT_BUCKETS = (1, 2, 5, 10, 20, 50, 100, 200, 500, 1000)


class BridgeMetrics:
    """The bridge's metrics in `registry` (a fresh, unexported one when none is given)."""

    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry or CollectorRegistry()
        r = self.registry
        self.messages_received = Counter(
            "cvmfs_bridge_messages_received",
            "AMQP messages delivered to the bridge, by queue.",
            ["queue"],
            registry=r,
        )
        self.events_received = Counter(
            "cvmfs_bridge_s3_events_received",
            "S3 object events (records) in the well-formed notifications the bridge consumed.",
            registry=r,
        )
        self.events_coalesced = Counter(
            "cvmfs_bridge_s3_events_coalesced",
            "S3 events that joined a batch another event opened (no run of their own).",
            registry=r,
        )
        self.batch_events = Histogram(
            "cvmfs_bridge_sync_batch_events",
            "S3 events per sync batch the bridge started a run for.",
            buckets=BATCH_EVENT_BUCKETS,
            registry=r,
        )
        self.runs_started = Counter(
            "cvmfs_bridge_flow_runs_started",
            "Flow runs the bridge created (or found by idempotency key), by deployment.",
            ["deployment"],
            registry=r,
        )
        self.dead_lettered = Counter(
            "cvmfs_bridge_dead_lettered",
            "Messages sent to the dead-letter queue, by queue and reason kind.",
            ["queue", "reason"],
            registry=r,
        )
        self.retried = Counter(
            "cvmfs_bridge_retried",
            "Messages sent to their retry queue after a transient failure, by queue.",
            ["queue"],
            registry=r,
        )
        self.open_messages = Gauge(
            "cvmfs_bridge_open_messages",
            "Messages held unacked in open batches or the inbox of this bridge.",
            registry=r,
        )
        self.broker_reconnects = Counter(
            "cvmfs_bridge_broker_connections_lost",
            "Lost RabbitMQ connections (each followed by a reconnect and a catch-up reconcile).",
            registry=r,
        )


def serve_bridge_metrics(settings: Settings) -> BridgeMetrics:
    """The bridge's metrics, served on `metrics.bridge_port` unless metrics are off."""
    metrics = BridgeMetrics()
    if settings.metrics.enabled:
        serve_metrics(
            metrics.registry,
            settings.metrics.bridge_port,
            "bridge",
            "bridge_port",
            settings.metrics.bind_host,
        )
    return metrics
