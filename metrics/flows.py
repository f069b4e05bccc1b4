"""What flow runs record: upload-to-visible latency, publish duration and size, lease waits.

Flow runs are short-lived subprocesses of a deployments runner, so a registry inside a run
dies with it. The runner therefore sets PROMETHEUS_MULTIPROC_DIR for its children
(metrics/runner.py): every value below is then written to a per-process file in that directory,
and the runner's endpoint serves the sum over its children, dead ones included. Outside such
a runner (tests, an operator's direct call) the values stay in the calling process.

Only counters and histograms live here: gauges of dead processes have no sensible sum, and
state gauges are read from shared state by the API's exporter (metrics/exporter.py).
"""

from __future__ import annotations

import functools
from collections.abc import Iterable, Mapping
from datetime import datetime

from prometheus_client import CollectorRegistry, Counter, Histogram

# Upload to visible: the promise is seconds (docs/slo.md: p95 <= 10 s), a reconcile's repair
# takes up to its 30-minute schedule; edges at the SLO thresholds make the SLO queries exact.
LATENCY_BUCKETS = (0.5, 1, 2, 3, 5, 7.5, 10, 15, 20, 30, 60, 120, 300, 900, 1800, 3600)
DURATION_BUCKETS = (0.05, 0.1, 0.25, 0.5, 1, 2, 5, 10, 30, 60, 120, 300, 900)
SIZE_BUCKETS = tuple(float(2**n) for n in range(10, 37, 2))  # 1 KiB .. 64 GiB, x4
CHANGE_BUCKETS = (1, 2, 5, 10, 50, 100, 500, 1000, 5000, 20000)


class FlowMetrics:
    """The flows' metrics in `registry` (in multiprocess mode the registry only names them)."""

    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry or CollectorRegistry()
        r = self.registry
        self.upload_to_visible = Histogram(
            "cvmfs_upload_to_visible_seconds",
            "From the S3 event time of an upload (or delete) to the end of the sync run that "
            "made the repository show it, one observation per object key.",
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.publish_duration = Histogram(
            "cvmfs_publish_duration_seconds",
            "Time to apply a batch of changes and publish the revision (lease held), by flow.",
            ["flow"],
            buckets=DURATION_BUCKETS,
            registry=r,
        )
        self.publish_bytes = Histogram(
            "cvmfs_publish_size_bytes",
            "Bytes of uploaded objects a published revision took in (tarballs count whole).",
            ["flow"],
            buckets=SIZE_BUCKETS,
            registry=r,
        )
        self.publish_changes = Histogram(
            "cvmfs_publish_changes",
            "Files added, replaced or removed by a published revision.",
            ["flow"],
            buckets=CHANGE_BUCKETS,
            registry=r,
        )
        self.lease_wait = Histogram(
            "cvmfs_lease_wait_seconds",
            "Time a flow waited for its repository's publish lock, by flow.",
            ["flow"],
            buckets=DURATION_BUCKETS,
            registry=r,
        )
        self.refused_uploads = Counter(
            "cvmfs_sync_refused_uploads",
            "Uploads a sync refused and dead-lettered (tarball escaping, object too large).",
            registry=r,
        )

    def observe_visible(self, event_times: Iterable[datetime], visible_at: datetime) -> None:
        """One latency observation per key; a clock behind the event's counts as 0 s."""
        for event_time in event_times:
            self.upload_to_visible.observe(max((visible_at - event_time).total_seconds(), 0.0))


def visible_event_times(
    event_times: Mapping[str, datetime], refused_keys: Iterable[str]
) -> list[datetime]:
    """The event times of the keys a run made visible: all it was given but the refused."""
    refused = set(refused_keys)
    return [moment for key, moment in event_times.items() if key not in refused]


@functools.cache
def flow_metrics() -> FlowMetrics:
    """This process's flow metrics, made once.

    Process-wide on purpose: in multiprocess mode the values are keyed by process anyway,
    and a second set of the same names in one process would be refused by its registry.
    """
    return FlowMetrics()
