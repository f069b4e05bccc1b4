"""Advisory file locks that serialise whole-stack operations between processes.

One `stack up`/`down` per data directory; one test stack per port offset on the machine.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import time
from collections.abc import Callable, Iterator
from pathlib import Path

from stack.errors import StackError


@contextlib.contextmanager
def exclusive(
    path: Path,
    *,
    wait_s: float,
    what: str,
    on_wait: Callable[[str], None] | None = None,
) -> Iterator[None]:
    """Hold an exclusive flock on `path`, waiting up to `wait_s`; the holder's pid is recorded.

    `on_wait(message)` is called once if the lock is taken. The kernel drops the lock when its
    holder dies, so a killed process never blocks others.
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("a+") as handle:
        deadline = time.monotonic() + wait_s
        told = on_wait is None
        while True:
            try:
                fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                handle.seek(0)
                holder = handle.read().strip() or "unknown"
                if not told and on_wait is not None:
                    on_wait(f"{what} is held by pid {holder}; waiting up to {wait_s:.0f} s")
                    told = True
                if time.monotonic() >= deadline:
                    raise StackError(
                        f"{what} is held by pid {holder} for more than {wait_s:.0f} s "
                        f"({path}); wait for that process to finish, then retry."
                    ) from None
                time.sleep(0.5)
        handle.seek(0)
        handle.truncate()
        handle.write(f"{os.getpid()}\n")
        handle.flush()
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def lock_path_for_test_stack(port_offset: int) -> Path:
    """The machine-wide lock of the test stack that runs on the dev ports + `port_offset`."""
    return Path("/tmp") / f"cvmfs-svc-test-stack-{port_offset}.lock"
