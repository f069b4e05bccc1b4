"""Runs the service in the foreground: the deployments runner, the bridge, the HTTP API and
the repository gateway.

Each is its own process (`cvmfs-svc serve-deployments | bridge | api`), so each can also be
run, scaled and restarted alone on any host; this supervisor is the one-machine convenience.
A child that dies is restarted after a pause; SIGINT or SIGTERM stops all of them.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from types import FrameType

from service.prefect_env import prefect_environment
from service.settings import Settings

RESTART_DELAY_S = 3.0
STOP_GRACE_S = 15.0
SERVICE_COMMANDS = ("serve-deployments", "bridge", "api", "gateway")


def service_commands(settings: Settings) -> tuple[str, ...]:
    """The runner is `serve-deployments` (embedded default) or, with prefect.work_pool set, a
    `worker` on that pool."""
    if settings.prefect.work_pool is None:
        return SERVICE_COMMANDS
    return tuple("worker" if c == "serve-deployments" else c for c in SERVICE_COMMANDS)


def child_environment(settings: Settings) -> dict[str, str]:
    """Prefect clients talk to the stack's server; runs poll often and send heartbeats."""
    return {**os.environ, **prefect_environment(settings)}


def _start(command: str, env: dict[str, str]) -> subprocess.Popen[bytes]:
    return subprocess.Popen([sys.executable, "-m", "service.cli", command], env=env)


def serve_forever(settings: Settings, after_start: Callable[[], None] | None = None) -> None:
    """Block until SIGINT or SIGTERM; the local stack keeps running (`stack down` stops it).

    `after_start` runs in a thread once the processes are started (`up` runs the demo there).
    """
    stop = threading.Event()

    def request_stop(signum: int, frame: FrameType | None) -> None:
        stop.set()

    previous = {sig: signal.signal(sig, request_stop) for sig in (signal.SIGINT, signal.SIGTERM)}
    env = child_environment(settings)
    commands = service_commands(settings)
    children = {command: _start(command, env) for command in commands}
    print("service: running " + ", ".join(commands) + "; Ctrl-C stops it", flush=True)
    if after_start is not None:
        threading.Thread(target=after_start, name="after-start", daemon=True).start()
    try:
        while not stop.wait(1.0):
            for command, child in list(children.items()):
                if child.poll() is not None:
                    print(f"service: {command} exited ({child.returncode}); restarting", flush=True)
                    time.sleep(RESTART_DELAY_S)
                    children[command] = _start(command, env)
    finally:
        for child in children.values():
            if child.poll() is None:
                child.terminate()
        deadline = time.monotonic() + STOP_GRACE_S
        for child in children.values():
            try:
                child.wait(timeout=max(deadline - time.monotonic(), 0.1))
            except subprocess.TimeoutExpired:
                child.kill()
        for sig, handler in previous.items():
            signal.signal(sig, handler)
        print("service: stopped (the stack still runs; `./svc stack down` stops it)", flush=True)
