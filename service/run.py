"""Runs the service in the foreground: `serve_forever(settings)` returns on SIGINT or SIGTERM.

Placeholder until the deployments runner, the bridge and the API are wired in here.
"""

from __future__ import annotations

import signal
import threading
from types import FrameType

from service.settings import Settings


def serve_forever(settings: Settings) -> None:
    """Block until SIGINT or SIGTERM; the local stack keeps running (`stack down` stops it)."""
    stop = threading.Event()

    def request_stop(signum: int, frame: FrameType | None) -> None:
        stop.set()

    previous = {sig: signal.signal(sig, request_stop) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        print(f"service: running against {settings.absolute_data_dir}; Ctrl-C stops it", flush=True)
        stop.wait()
        print("service: stopped (the stack still runs; `./svc stack down` stops it)", flush=True)
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
