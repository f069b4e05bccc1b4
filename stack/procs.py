"""Processes of the local stack: pid files, liveness, descendants, termination and memory.

Reads /proc directly (no psutil); every kill is aimed at a pid the caller recorded itself.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from pathlib import Path

from stack.errors import StartError

_PROC = Path("/proc")


def read_pid(pid_file: Path) -> int | None:
    """The pid recorded in `pid_file`, or None when there is no usable record."""
    try:
        text = pid_file.read_text().strip()
    except (FileNotFoundError, NotADirectoryError):
        return None
    return int(text) if text.isdigit() else None


def write_pid(pid_file: Path, pid: int) -> None:
    pid_file.parent.mkdir(parents=True, exist_ok=True)
    tmp = pid_file.with_name(pid_file.name + ".tmp")
    tmp.write_text(f"{pid}\n")
    tmp.replace(pid_file)


def is_alive(pid: int) -> bool:
    """True when `pid` exists and is not a zombie."""
    try:
        stat = (_PROC / str(pid) / "stat").read_text()
    except (FileNotFoundError, ProcessLookupError):
        return False
    # The state letter follows the parenthesised command name, which may contain spaces.
    return stat[stat.rindex(")") + 2] not in "ZX"


def cmdline(pid: int) -> list[str]:
    try:
        raw = (_PROC / str(pid) / "cmdline").read_bytes()
    except (FileNotFoundError, ProcessLookupError):
        return []
    return [part.decode(errors="replace") for part in raw.split(b"\0") if part]


def environ(pid: int) -> dict[str, str]:
    """The environment `pid` was started with (readable by root or its owner)."""
    try:
        raw = (_PROC / str(pid) / "environ").read_bytes()
    except (FileNotFoundError, ProcessLookupError, PermissionError):
        return {}
    pairs = (part.decode(errors="replace").partition("=") for part in raw.split(b"\0") if part)
    return {key: value for key, _, value in pairs}


def command_name(pid: int) -> str:
    try:
        return (_PROC / str(pid) / "comm").read_text().strip()
    except (FileNotFoundError, ProcessLookupError):
        return ""


def running_pid(pid_file: Path, marker: str) -> int | None:
    """The recorded pid if it is alive and its command line contains `marker`.

    The marker (a config path, a port) guards against a recycled pid that now belongs to
    some other program.
    """
    pid = read_pid(pid_file)
    if pid is None or not is_alive(pid):
        return None
    return pid if marker in " ".join(cmdline(pid)) else None


def _parent_of(pid: int) -> int | None:
    try:
        stat = (_PROC / str(pid) / "stat").read_text()
    except (FileNotFoundError, ProcessLookupError):
        return None
    return int(stat[stat.rindex(")") + 2 :].split()[1])


def descendants(pid: int) -> list[int]:
    """All living descendants of `pid` (children, grandchildren, ...)."""
    children: dict[int, list[int]] = {}
    for entry in _PROC.iterdir():
        if entry.name.isdigit():
            parent = _parent_of(int(entry.name))
            if parent is not None:
                children.setdefault(parent, []).append(int(entry.name))
    found: list[int] = []
    todo = [pid]
    while todo:
        for child in children.get(todo.pop(), []):
            if is_alive(child):
                found.append(child)
                todo.append(child)
    return found


def _reap(pid: int) -> None:
    # Our own children become zombies until waited for; without this they look alive to
    # `kill 0` (is_alive reads the state instead) and linger in `ps`.
    with contextlib.suppress(ChildProcessError, OSError):
        os.waitpid(pid, os.WNOHANG)


def _signal(pids: Iterable[int], sig: signal.Signals) -> None:
    for pid in pids:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, sig)


def wait_gone(pids: Iterable[int], timeout_s: float) -> list[int]:
    """Wait until none of `pids` is alive; returns those still alive at the deadline."""
    remaining = list(pids)
    deadline = time.monotonic() + timeout_s
    while True:
        for pid in remaining:
            _reap(pid)
        remaining = [pid for pid in remaining if is_alive(pid)]
        if not remaining or time.monotonic() >= deadline:
            return remaining
        time.sleep(0.1)


def terminate_tree(pid: int, grace_s: float = 10.0) -> None:
    """SIGTERM `pid`, then its descendants (recorded before it exits), SIGKILL what remains.

    The descendants are listed first because once the parent dies they are re-parented and
    can no longer be told apart from unrelated processes.
    """
    family = descendants(pid)
    _signal([pid], signal.SIGTERM)
    wait_gone([pid], min(2.0, grace_s))
    _signal([p for p in family if is_alive(p)], signal.SIGTERM)
    left = wait_gone([pid, *family], grace_s)
    _signal(left, signal.SIGKILL)
    wait_gone(left, 5.0)


def rss_bytes(pid: int) -> int:
    """Resident memory of one process (VmRSS), 0 when it is gone."""
    try:
        for line in (_PROC / str(pid) / "status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    except (FileNotFoundError, ProcessLookupError):
        pass
    return 0


def spawn(
    argv: Sequence[str],
    *,
    log_file: Path,
    env: Mapping[str, str] | None = None,
    cwd: Path | None = None,
) -> int:
    """Start a long-running daemon in its own session, output appended to `log_file`.

    Its own session keeps a Ctrl-C in the operator's terminal away from the stack.
    """
    log_file.parent.mkdir(parents=True, exist_ok=True)
    with log_file.open("ab") as log:
        proc = subprocess.Popen(
            list(argv),
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            env=dict(env) if env is not None else None,
            cwd=cwd,
            start_new_session=True,
        )
    # Popen would warn that the child still runs when the object is collected; the pid file,
    # not this object, is what tracks the daemon from now on.
    proc.returncode = 0
    return proc.pid


def wait_until(
    check: Callable[[], bool],
    *,
    timeout_s: float,
    what: str,
    hint: str,
    interval_s: float = 0.25,
    alive: Callable[[], bool] | None = None,
) -> None:
    """Poll `check` until it is true; raise StartError naming `what` and `hint` otherwise.

    `alive` lets the wait stop early when the process it waits for has already died.
    """
    deadline = time.monotonic() + timeout_s
    while True:
        if check():
            return
        if alive is not None and not alive():
            raise StartError(f"{what}: the process exited while starting. {hint}")
        if time.monotonic() >= deadline:
            raise StartError(f"{what}: not ready after {timeout_s:.0f} s. {hint}")
        time.sleep(interval_s)
