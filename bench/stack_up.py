"""Times the local stack: cold `stack up` (fresh data dir), warm `up`, down, restart; prints RSS.

Runs on the test ports (dev + 100) in a temporary directory, holding the test-stack lock so that
it never collides with a test session: `.venv/bin/python -m bench.stack_up`.
"""

from __future__ import annotations

import shutil
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

from service.settings import Settings
from stack.locks import exclusive, lock_path_for_test_stack
from stack.manager import Stack

PORT_OFFSET = 100


def timed(label: str, action: Callable[[], object]) -> None:
    began = time.monotonic()
    action()
    print(f"{label:<34} {time.monotonic() - began:6.1f} s", flush=True)


def main() -> None:
    with exclusive(lock_path_for_test_stack(PORT_OFFSET), wait_s=900, what="The test stack"):
        data_dir = Path(tempfile.mkdtemp(prefix="cvmfs-svc-test-bench-"))
        data_dir.chmod(0o755)  # RabbitMQ runs as user rabbitmq
        stack = Stack(Settings.load().with_port_offset(PORT_OFFSET, data_dir))
        try:
            per_component: list[str] = []
            timed(
                "cold up (fresh data dir)",
                lambda: stack.up(progress=lambda n, s: per_component.append(f"{n} {s:.1f} s")),
            )
            print("  " + ", ".join(per_component))
            timed("warm up (all running)", stack.up)
            total = 0
            for component in stack.components:
                rss = stack.rss_bytes(component)
                total += rss
                print(f"  rss {component.name:<14} {rss / 2**20:7.1f} MB")
            print(f"  rss total          {total / 2**20:7.1f} MB")
            timed("down", stack.down)
            timed("up again (existing data)", stack.up)
            timed("down", stack.down)
        finally:
            stack.down()
            shutil.rmtree(data_dir, ignore_errors=True)


if __name__ == "__main__":
    main()
