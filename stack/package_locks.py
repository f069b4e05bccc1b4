"""Waiting for the Debian package manager's locks that another process holds.

On a fresh machine `unattended-upgrades` or cloud-init's apt run often holds them for minutes;
apt-get would fail at once ("Could not get lock /var/lib/dpkg/lock-frontend").
"""

from __future__ import annotations

import fcntl
import os
import struct
import time
from collections.abc import Callable, Sequence
from pathlib import Path

from stack.errors import PackageError

# What apt and dpkg lock (apt-pkg `pkgDPkgSystem::Lock`, `GetLock`): fcntl write locks on these.
PACKAGE_LOCKS = (
    Path("/var/lib/dpkg/lock-frontend"),
    Path("/var/lib/dpkg/lock"),
    Path("/var/lib/apt/lists/lock"),
    Path("/var/cache/apt/archives/lock"),
)
# A first unattended-upgrades run on a fresh cloud image takes a few minutes; beyond ten, the
# holder is more likely stuck than busy, and the operator should look at it.
LOCK_WAIT_S = 600.0
# struct flock on Linux: short l_type, short l_whence, off_t l_start, off_t l_len, pid_t l_pid
# (and padding to 32 bytes on 64-bit).
_FLOCK = "hhqqi4x"


def lock_holder(path: Path) -> int | None:
    """The pid of the process holding a lock on `path` that a writer would wait for, or None.

    Asks the kernel (F_GETLK) without taking the lock, so nothing here ever blocks apt.
    """
    try:
        descriptor = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    except FileNotFoundError:
        return None
    try:
        query = struct.pack(_FLOCK, fcntl.F_WRLCK, os.SEEK_SET, 0, 0, 0)
        answer = fcntl.fcntl(descriptor, fcntl.F_GETLK, query)
    finally:
        os.close(descriptor)
    lock_type, _whence, _start, _length, pid = struct.unpack(_FLOCK, answer)
    return None if lock_type == fcntl.F_UNLCK else pid


def _process_name(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/comm").read_text().strip()
    except OSError:
        return "?"


def wait_for_package_locks(
    notify: Callable[[str], None],
    *,
    paths: Sequence[Path] = PACKAGE_LOCKS,
    timeout_s: float = LOCK_WAIT_S,
    poll_s: float = 1.0,
) -> float:
    """Return once no other process holds any of `paths`; the seconds left of `timeout_s`.

    Says once, through `notify`, who holds which lock and how long it waits; raises
    `PackageError` naming the holder if the lock is still held after `timeout_s`.
    """
    deadline = time.monotonic() + timeout_s
    announced: tuple[Path, int] | None = None
    while True:
        held = [(path, pid) for path in paths if (pid := lock_holder(path)) is not None]
        if not held:
            if announced is not None:
                notify("stack: the package manager lock is free, installing")
            return max(deadline - time.monotonic(), 0.0)
        path, pid = held[0]
        if time.monotonic() >= deadline:
            raise PackageError(
                f"{path} is still held by process {pid} ({_process_name(pid)}) after "
                f"{timeout_s:.0f} s: let it finish (or stop it), then run `./svc stack install` "
                "again"
            )
        if announced != (path, pid):
            notify(
                f"stack: waiting for the package manager: {path} is held by process {pid} "
                f"({_process_name(pid)}); waiting up to {timeout_s:.0f} s"
            )
            announced = (path, pid)
        time.sleep(poll_s)
