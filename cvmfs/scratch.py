"""Scratch directories for working catalogs, named after their host and process so a later
writer can remove those a killed process left behind (same host, process gone).
"""

from __future__ import annotations

import contextlib
import os
import re
import shutil
import socket
import tempfile
from collections.abc import Iterator
from pathlib import Path

PREFIX = "cvmfs-scratch-"
# <prefix><host>-<pid>-<kind>-<random>; hosts sharing a temp directory (containers with a
# shared volume and their own process ids) only ever sweep their own.
_NAME = re.compile(rf"^{re.escape(PREFIX)}(?P<host>[A-Za-z0-9.]+)-(?P<pid>\d+)-[a-z]+-")


def _host() -> str:
    return re.sub(r"[^A-Za-z0-9.]", ".", socket.gethostname()) or "host"


def make_scratch_dir(kind: str, base: str | Path | None = None) -> Path:
    """A new directory in `base` (system temp if None); the caller removes it."""
    return Path(tempfile.mkdtemp(prefix=f"{PREFIX}{_host()}-{os.getpid()}-{kind}-", dir=base))


@contextlib.contextmanager
def scratch_dir(kind: str, base: str | Path | None = None) -> Iterator[Path]:
    path = make_scratch_dir(kind, base)
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # someone else's live process
        return True
    return True


def sweep_scratch_dirs(base: str | Path | None = None) -> list[Path]:
    """Remove the scratch directories of this host's processes that no longer run."""
    root = Path(base) if base is not None else Path(tempfile.gettempdir())
    host = _host()
    removed: list[Path] = []
    try:
        # names only, filtered by prefix first: a shared /tmp holds thousands of other entries
        # and every transaction sweeps (pathlib + regex per entry: ~3 ms for 900 entries)
        names = [name for name in os.listdir(root) if name.startswith(PREFIX)]
    except FileNotFoundError:
        return removed
    for name in names:
        match = _NAME.match(name)
        if match is None or match["host"] != host or _alive(int(match["pid"])):
            continue
        entry = root / name
        shutil.rmtree(entry, ignore_errors=True)
        removed.append(entry)
    return removed
