"""Serves one process's registry as `/metrics` on <metrics.bind_host>:<port> in a daemon thread.

A port already taken does not stop the process it observes: the service keeps working and
the log line says which setting to change.
"""

from __future__ import annotations

import logging

from prometheus_client import CollectorRegistry, start_http_server

from service.settings import LOOPBACK

log = logging.getLogger("cvmfs.metrics")


def serve_metrics(
    registry: CollectorRegistry, port: int, process: str, setting: str, host: str = LOOPBACK
) -> bool:
    """Start the endpoint; False (logged) if the port cannot be bound."""
    try:
        start_http_server(port, addr=host, registry=registry)
    except OSError as error:
        log.error(
            "event=metrics-endpoint-not-started process=%s port=%d error=%r "
            "(another copy on this host? give it its own port: CVMFS_SVC_METRICS__%s)",
            process,
            port,
            error,
            setting.upper(),
        )
        return False
    log.info("event=metrics-endpoint process=%s url=http://%s:%d/metrics", process, host, port)
    return True
