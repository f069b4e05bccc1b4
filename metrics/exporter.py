"""Gauges of shared state, read at scrape time by the API process: queue depths (RabbitMQ
management API), flow runs by state (Prefect API), each repository's newest revision and
whitelist expiry (stratum-0 manifests and whitelists, for the repositories in the registry).

This state belongs to no single process, so any API copy can report it; with several copies
each reports the same values (aggregate with `max`, not `sum`). Reads are cached
(`metrics.*_ttl_s`), so frequent scrapes of several copies cost the services little. A
source that fails shows as `cvmfs_exporter_source_up{source} 0` and its gauges are left out.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Generic, TypeVar
from urllib.parse import quote

import httpx
from prometheus_client import CollectorRegistry
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from cvmfs.errors import CvmfsError
from cvmfs.manifest import SignedManifest
from cvmfs.reader import MANIFEST_KEY, WHITELIST_KEY
from cvmfs.whitelist import SignedWhitelist
from metrics.endpoint import serve_metrics
from service.repositories import RepositoryRegistry
from service.settings import Settings
from tasks.storage import repository_storage

log = logging.getLogger("cvmfs.metrics")
T = TypeVar("T")
# Prefect's state types (prefect.client.schemas.objects.StateType), counted one request each.
FLOW_RUN_STATE_TYPES = (
    "SCHEDULED",
    "PENDING",
    "RUNNING",
    "PAUSED",
    "CANCELLING",
    "COMPLETED",
    "FAILED",
    "CANCELLED",
    "CRASHED",
)


@dataclass(frozen=True)
class QueueDepth:
    queue: str
    ready: int
    unacked: int
    consumers: int


@dataclass(frozen=True)
class RepositoryState:
    fqrn: str
    revision: int
    published_at_s: float | None  # the manifest's publish timestamp (spec §3.1 `T`)
    whitelist_expires_at_s: float


class Cached(Generic[T]):
    """A value read at most every `ttl_s`; a failed read is not cached."""

    def __init__(self, read: Callable[[], T], ttl_s: float, clock: Callable[[], float]) -> None:
        self._read = read
        self._ttl_s = ttl_s
        self._clock = clock
        self._lock = threading.Lock()
        self._value: T | None = None
        self._read_at = float("-inf")

    def get(self) -> T:
        with self._lock:
            if self._value is None or self._clock() - self._read_at >= self._ttl_s:
                self._value = self._read()
                self._read_at = self._clock()
            return self._value


def read_queue_depths(settings: Settings, http: httpx.Client) -> list[QueueDepth]:
    mq = settings.rabbitmq
    response = http.get(f"{mq.management_url}/api/queues/{quote(mq.vhost, safe='')}")
    response.raise_for_status()
    return [
        QueueDepth(
            queue=str(queue["name"]),
            ready=int(queue.get("messages_ready", 0)),
            unacked=int(queue.get("messages_unacknowledged", 0)),
            consumers=int(queue.get("consumers", 0)),
        )
        for queue in response.json()
    ]


def read_flow_run_counts(settings: Settings, http: httpx.Client) -> dict[str, int]:
    """Flow runs per state type, plus `Late` (a SCHEDULED state past its start time)."""
    url = f"{settings.prefect.api_url}/flow_runs/count"
    counts: dict[str, int] = {}
    filters: dict[str, dict[str, object]] = {
        state: {"type": {"any_": [state]}} for state in FLOW_RUN_STATE_TYPES
    }
    filters["LATE"] = {"name": {"any_": ["Late"]}}
    for state, state_filter in filters.items():
        response = http.post(url, json={"flow_runs": {"state": state_filter}})
        response.raise_for_status()
        counts[state] = int(response.json())
    return counts


def read_repository_state(settings: Settings, fqrn: str) -> RepositoryState:
    storage = repository_storage(settings, fqrn)
    manifest = SignedManifest.parse(storage.get(MANIFEST_KEY)).manifest
    whitelist = SignedWhitelist.parse(storage.get(WHITELIST_KEY)).whitelist
    return RepositoryState(
        fqrn=fqrn,
        revision=manifest.revision,
        published_at_s=(
            None if manifest.publish_timestamp is None else float(manifest.publish_timestamp)
        ),
        whitelist_expires_at_s=whitelist.expires.timestamp(),
    )


def read_repository_states(settings: Settings) -> list[RepositoryState]:
    """Every ready repository's state; one that cannot be read now is left out (logged)."""
    registry = RepositoryRegistry.open(settings)
    try:
        names = [repository.fqrn for repository in registry.repositories("ready")]
    finally:
        registry.close()
    states = []
    for fqrn in names:
        try:
            states.append(read_repository_state(settings, fqrn))
        except CvmfsError as error:
            log.info("event=repository-state-unreadable repo=%s error=%r", fqrn, error)
    return states


class ServiceStateCollector(Collector):
    """The API process's scrape-time gauges (register it in the API's metrics registry)."""

    def __init__(
        self,
        settings: Settings,
        http: httpx.Client | None = None,
        clock: Callable[[], float] = time.monotonic,
        wall_clock: Callable[[], float] = time.time,
    ) -> None:
        self._http = http or httpx.Client(
            auth=(settings.rabbitmq.username, settings.rabbitmq.password.get_secret_value()),
            timeout=5.0,
        )
        self._wall_clock = wall_clock
        service_ttl_s = settings.metrics.service_state_ttl_s
        self._queues = Cached(lambda: read_queue_depths(settings, self._http), service_ttl_s, clock)
        self._runs = Cached(
            lambda: read_flow_run_counts(settings, self._http), service_ttl_s, clock
        )
        self._repositories = Cached(
            lambda: read_repository_states(settings),
            settings.metrics.repository_state_ttl_s,
            clock,
        )

    def close(self) -> None:
        self._http.close()

    def collect(self) -> Iterator[Metric]:
        up = GaugeMetricFamily(
            "cvmfs_exporter_source_up",
            "1 if the exporter's last read of this source succeeded, else 0.",
            labels=["source"],
        )
        queues = _read("rabbitmq", self._queues.get, up)
        runs = _read("prefect", self._runs.get, up)
        repositories = _read("stratum0", self._repositories.get, up)
        yield up
        if queues is not None:
            yield from _queue_metrics(queues)
        if runs is not None:
            yield from _flow_run_metrics(runs)
        if repositories is not None:
            yield from _repository_metrics(repositories, self._wall_clock())


def _read(source: str, read: Callable[[], T], up: GaugeMetricFamily) -> T | None:
    try:
        value = read()
    except (httpx.HTTPError, CvmfsError, OSError, ValueError, KeyError, TypeError) as error:
        log.warning("event=metrics-source-failed source=%s error=%r", source, error)
        up.add_metric([source], 0)
        return None
    up.add_metric([source], 1)
    return value


def _queue_metrics(queues: list[QueueDepth]) -> Iterator[Metric]:
    messages = GaugeMetricFamily(
        "cvmfs_queue_messages",
        "Messages in a RabbitMQ queue of the service's vhost: ready or delivered but unacked.",
        labels=["queue", "state"],
    )
    consumers = GaugeMetricFamily(
        "cvmfs_queue_consumers", "Consumers of a RabbitMQ queue.", labels=["queue"]
    )
    for queue in queues:
        messages.add_metric([queue.queue, "ready"], queue.ready)
        messages.add_metric([queue.queue, "unacked"], queue.unacked)
        consumers.add_metric([queue.queue], queue.consumers)
    yield messages
    yield consumers


def _flow_run_metrics(counts: dict[str, int]) -> Iterator[Metric]:
    runs = GaugeMetricFamily(
        "cvmfs_flow_runs",
        "Flow runs the Prefect server holds, by state type (all flows).",
        labels=["state"],
    )
    for state in FLOW_RUN_STATE_TYPES:
        runs.add_metric([state.lower()], counts[state])
    yield runs
    yield GaugeMetricFamily(
        "cvmfs_flow_runs_late",
        "Scheduled flow runs past their start time that no runner has picked up.",
        value=counts["LATE"],
    )


def _repository_metrics(states: list[RepositoryState], now_s: float) -> Iterator[Metric]:
    revision = GaugeMetricFamily(
        "cvmfs_repository_revision", "The revision in the manifest.", labels=["repo"]
    )
    age = GaugeMetricFamily(
        "cvmfs_repository_revision_age_seconds",
        "Seconds since the newest revision was published (the manifest's timestamp).",
        labels=["repo"],
    )
    expiry = GaugeMetricFamily(
        "cvmfs_repository_whitelist_expiry_timestamp_seconds",
        "When the repository's whitelist expires (clients refuse it after that).",
        labels=["repo"],
    )
    remaining = GaugeMetricFamily(
        "cvmfs_repository_whitelist_remaining_seconds",
        "Seconds until the whitelist expires (negative: expired).",
        labels=["repo"],
    )
    for state in states:
        revision.add_metric([state.fqrn], state.revision)
        if state.published_at_s is not None:
            age.add_metric([state.fqrn], now_s - state.published_at_s)
        expiry.add_metric([state.fqrn], state.whitelist_expires_at_s)
        remaining.add_metric([state.fqrn], state.whitelist_expires_at_s - now_s)
    yield from (revision, age, expiry, remaining)


def serve_api_metrics(settings: Settings) -> ServiceStateCollector | None:
    """The exporter, served on `metrics.api_port`; None when metrics are off (or no port)."""
    if not settings.metrics.enabled:
        return None
    registry = CollectorRegistry()
    collector = ServiceStateCollector(settings)
    registry.register(collector)
    port = settings.metrics.api_port
    if not serve_metrics(registry, port, "api", "api_port", settings.metrics.bind_host):
        collector.close()
        return None
    return collector
