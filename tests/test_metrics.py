"""The metric definitions without the stack: what each records, where the runner's values
come from (real flow-run-like subprocesses), and what the exporter reports when a source fails.
"""

from __future__ import annotations

import socket
import subprocess
import sys
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

import httpx
import pytest
from prometheus_client import CollectorRegistry
from prometheus_client.parser import text_string_to_metric_families
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route
from starlette.testclient import TestClient

from bridge.coalescer import Coalescer, InboundMessage
from bridge.repositories import RepositoryTarget
from bridge.run_requests import sync_parameters
from bridge.s3_events import ObjectEvent, ObjectEventKind
from metrics.endpoint import serve_metrics
from metrics.exporter import Cached, ServiceStateCollector
from metrics.flows import FlowMetrics, visible_event_times
from metrics.gateway import GatewayMetrics, GatewayMetricsMiddleware
from metrics.runner import (
    MULTIPROC_ENV,
    RunnerCollector,
    empty_metrics_dir,
    merge_exited_processes,
    runner_metrics_dir,
)
from service.settings import Settings
from tasks.sync import SyncRequest

T0 = datetime(2026, 12, 5, 12, 0, tzinfo=UTC)
TARGET = RepositoryTarget(fqrn="alpha.sw.example.org", bucket="alpha", owner_id="alice")


def _event(key: str, at_s: float) -> ObjectEvent:
    return ObjectEvent(
        source="ceph:s3",
        bucket="alpha",
        key=key,
        kind=ObjectEventKind.CREATED,
        event_name="ObjectCreated:Put",
        event_time=T0 + timedelta(seconds=at_s),
    )


def test_upload_to_visible_is_one_observation_per_key_and_never_negative() -> None:
    metrics = FlowMetrics()
    visible_at = T0 + timedelta(seconds=4)
    metrics.observe_visible([T0, T0 + timedelta(seconds=3), T0 + timedelta(seconds=9)], visible_at)
    sample = metrics.registry.get_sample_value
    assert sample("cvmfs_upload_to_visible_seconds_count") == 3
    assert sample("cvmfs_upload_to_visible_seconds_sum") == 5.0  # 4 + 1 + 0 (clock skew)
    assert sample("cvmfs_upload_to_visible_seconds_bucket", {"le": "1.0"}) == 2
    assert sample("cvmfs_upload_to_visible_seconds_bucket", {"le": "5.0"}) == 3


def test_refused_keys_are_not_counted_as_visible() -> None:
    times = {"cvmfs/a": T0, "cvmfs/bad.cvmfs.tar": T0, "cvmfs/b": T0}
    assert visible_event_times(times, ["cvmfs/bad.cvmfs.tar"]) == [T0, T0]


def test_a_batch_passes_each_keys_earliest_event_time_to_the_sync_run() -> None:
    coalescer = Coalescer(window_s=1.0, max_events=100)
    message = InboundMessage(queue="q", delivery_tag=1, routing_key="s3.x", body=b"", headers={})
    coalescer.add(TARGET, message, [_event("cvmfs/a", 2.0), _event("cvmfs/b", 1.0)], 0.0)
    coalescer.add(TARGET, message, [_event("cvmfs/a", 0.5)], 0.1)
    [batch] = coalescer.due(10.0)
    parameters = sync_parameters(batch)
    request = SyncRequest.model_validate(parameters["req"])  # as the flow receives them
    assert request.event_times == {
        "cvmfs/a": T0 + timedelta(seconds=0.5),
        "cvmfs/b": T0 + timedelta(seconds=1.0),
    }
    assert request.changed_keys == ["cvmfs/a", "cvmfs/b"]


RECORD_IN_CHILD = """
from datetime import UTC, datetime, timedelta
from metrics.flows import flow_metrics
now = datetime.now(UTC)
flow_metrics().observe_visible([now - timedelta(seconds={age})], now)
flow_metrics().lease_wait.labels("sync").observe(0.25)
"""


def _record_in_child(
    directory: Path, age_s: int, then_wait: bool = False
) -> subprocess.Popen[bytes]:
    code = RECORD_IN_CHILD.format(age=age_s) + (
        "\nimport time; time.sleep(60)" if then_wait else ""
    )
    return subprocess.Popen(
        [sys.executable, "-c", code],
        env={MULTIPROC_ENV: str(directory), "PATH": "/usr/bin:/bin"},
        cwd=Path(__file__).parent.parent,
    )


def _runner_samples(directory: Path) -> CollectorRegistry:
    registry = CollectorRegistry()
    registry.register(RunnerCollector(directory))
    return registry


def test_the_runner_serves_what_its_exited_flow_run_processes_recorded(tmp_path: Path) -> None:
    """Flow runs are subprocesses that exit; their values must survive them (multiprocess),
    and their files are merged into one so scrapes stay cheap; a live run's file stays."""
    settings = Settings(data_dir=tmp_path)
    directory = runner_metrics_dir(settings)
    empty_metrics_dir(directory)
    (directory / "counter_999999.db").write_bytes(b"from a previous runner")
    empty_metrics_dir(directory)  # a restarted runner starts from zero
    assert not list(directory.iterdir())
    for age in (2, 6):
        assert _record_in_child(directory, age).wait(timeout=60) == 0
    assert len(list(directory.glob("histogram_*.db"))) == 2
    registry = _runner_samples(directory)
    sample = registry.get_sample_value
    assert sample("cvmfs_upload_to_visible_seconds_count") == 2
    assert 8.0 <= (sample("cvmfs_upload_to_visible_seconds_sum") or 0) < 9.0
    assert sample("cvmfs_lease_wait_seconds_count", {"flow": "sync"}) == 2
    assert sorted(p.name for p in directory.iterdir()) == [
        "counter_merged.db",
        "histogram_merged.db",
    ]
    running = _record_in_child(directory, 1, then_wait=True)
    try:
        wait_until_file = time.monotonic() + 30
        live_file = directory / f"histogram_{running.pid}.db"
        while not live_file.exists() and time.monotonic() < wait_until_file:
            time.sleep(0.05)
        time.sleep(0.5)  # its observations follow the file's creation
        assert sample("cvmfs_upload_to_visible_seconds_count") == 3
        assert live_file.exists()  # a live process's file is never merged
    finally:
        running.kill()
        running.wait()
    assert sample("cvmfs_upload_to_visible_seconds_count") == 3  # merged now, counted once
    assert not live_file.exists()
    assert sample("cvmfs_upload_to_visible_seconds_bucket", {"le": "10.0"}) == 3


def test_exited_processes_gauge_files_are_dropped_and_live_ones_kept(tmp_path: Path) -> None:
    for name in ("gauge_all_111.db", "gauge_livesum_222.db", "gauge_all_333.db"):
        (tmp_path / name).write_bytes(b"")
    merge_exited_processes(tmp_path, alive=lambda pid: pid == 333)
    assert [p.name for p in tmp_path.iterdir()] == ["gauge_all_333.db"]


def test_gateway_requests_are_counted_by_route_template_not_by_token() -> None:
    async def lease(request: Request) -> JSONResponse:
        return JSONResponse({"status": "ok"})

    metrics = GatewayMetrics()
    app = Starlette(routes=[Route("/api/v1/leases/{token}", lease, methods=["DELETE"])])
    app.add_middleware(GatewayMetricsMiddleware, metrics=metrics)
    with TestClient(app) as client:
        for token in ("secret-token-1", "secret-token-2"):
            assert client.delete(f"/api/v1/leases/{token}").status_code == 200
        assert client.get("/nowhere").status_code == 404
    sample = metrics.registry.get_sample_value
    labels = {"method": "DELETE", "route": "/api/v1/leases/{token}", "status": "200"}
    assert sample("cvmfs_gateway_requests_total", labels) == 2
    unmatched = {"method": "GET", "route": "unmatched", "status": "404"}
    assert sample("cvmfs_gateway_requests_total", unmatched) == 1
    exposition = "\n".join(str(m) for m in metrics.registry.collect())
    assert "secret-token" not in exposition


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def test_an_endpoint_serves_the_registry_and_a_taken_port_is_reported() -> None:
    metrics = FlowMetrics()
    metrics.refused_uploads.inc(3)
    port = _free_port()
    assert serve_metrics(metrics.registry, port, "test", "runner_port")
    text = httpx.get(f"http://127.0.0.1:{port}/metrics").text
    families = {f.name: f for f in text_string_to_metric_families(text)}
    assert families["cvmfs_sync_refused_uploads"].samples[0].value == 3
    assert not serve_metrics(metrics.registry, port, "test", "runner_port")  # already bound


def test_an_unreachable_source_reports_down_and_leaves_its_gauges_out(tmp_path: Path) -> None:
    """Nothing listens on the ports: RabbitMQ and Prefect fail for real; stratum-0 has no
    registry entries, so it is read (empty) and up."""
    closed = _free_port()
    base = Settings(data_dir=tmp_path)
    settings = base.model_copy(
        update={
            "rabbitmq": base.rabbitmq.model_copy(update={"management_port": closed}),
            "prefect": base.prefect.model_copy(update={"port": closed}),
        }
    )
    collector = ServiceStateCollector(settings)
    registry = CollectorRegistry()
    registry.register(collector)
    try:
        sample = registry.get_sample_value
        assert sample("cvmfs_exporter_source_up", {"source": "rabbitmq"}) == 0
        assert sample("cvmfs_exporter_source_up", {"source": "prefect"}) == 0
        assert sample("cvmfs_exporter_source_up", {"source": "stratum0"}) == 1
        names = {family.name for family in registry.collect()}
        assert "cvmfs_queue_messages" not in names and "cvmfs_flow_runs" not in names
    finally:
        collector.close()


def test_cached_reads_at_most_once_per_ttl_and_never_caches_a_failure() -> None:
    now = [0.0]
    reads: list[float] = []

    def read() -> int:
        reads.append(now[0])
        if len(reads) == 2:
            raise ValueError("source down")
        return len(reads)

    cached = Cached(read, ttl_s=10.0, clock=lambda: now[0])
    assert cached.get() == 1
    now[0] = 9.9
    assert cached.get() == 1
    now[0] = 10.0
    with pytest.raises(ValueError, match="source down"):
        cached.get()
    assert cached.get() == 3  # the failure was not kept
    assert reads == [0.0, 10.0, 10.0]


def test_metrics_ports_move_with_the_test_offset(tmp_path: Path) -> None:
    base = Settings()
    moved = base.with_port_offset(410, tmp_path)
    assert moved.metrics.bridge_port == base.metrics.bridge_port + 410
    assert moved.metrics.runner_port == base.metrics.runner_port + 410
    assert moved.metrics_multiprocess_dir == (tmp_path / "metrics").resolve()
