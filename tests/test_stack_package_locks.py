"""`./svc stack install` waits for a package manager that holds the dpkg/apt locks.

The holder is a real second process taking an fcntl write lock, as apt and dpkg do; it locks a
file of the test's own instead of /var/lib/dpkg/lock-frontend, because other sessions on this
machine may be installing packages at the same time.
"""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from stack.errors import PackageError
from stack.package_locks import PACKAGE_LOCKS, lock_holder, wait_for_package_locks

HOLDER = """
import fcntl, os, sys, time
lock, marker, hold_s = sys.argv[1], sys.argv[2], float(sys.argv[3])
descriptor = os.open(lock, os.O_RDWR | os.O_CREAT, 0o640)
fcntl.lockf(descriptor, fcntl.LOCK_EX)  # F_SETLKW write lock, as apt's GetLock
print("locked", flush=True)
time.sleep(hold_s)
open(marker, "w").close()  # written before the release: whoever got the lock saw it first
fcntl.lockf(descriptor, fcntl.LOCK_UN)
time.sleep(60)
"""


@pytest.fixture
def holder(tmp_path: Path, request: pytest.FixtureRequest) -> Iterator[subprocess.Popen[str]]:
    hold_s = request.param
    process = subprocess.Popen(
        [sys.executable, "-c", HOLDER, str(tmp_path / "lock"), str(tmp_path / "released"), hold_s],
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert process.stdout is not None and process.stdout.readline() == "locked\n"
        yield process
    finally:
        process.kill()
        process.wait()


@pytest.mark.parametrize("holder", ["1.5"], indirect=True)
def test_waits_until_the_holder_releases_and_says_who_holds_it(
    holder: subprocess.Popen[str], tmp_path: Path
) -> None:
    lock = tmp_path / "lock"
    assert lock_holder(lock) == holder.pid
    messages: list[str] = []
    remaining_s = wait_for_package_locks(
        messages.append, paths=[tmp_path / "absent", lock], timeout_s=60, poll_s=0.1
    )
    assert (tmp_path / "released").exists()  # it returned only after the holder let go
    assert lock_holder(lock) is None
    assert 0 < remaining_s < 60
    assert messages[0].startswith(
        f"stack: waiting for the package manager: {lock} is held by process {holder.pid} (python"
    )
    assert messages[0].endswith("); waiting up to 60 s")
    assert messages[-1] == "stack: the package manager lock is free, installing"


@pytest.mark.parametrize("holder", ["600"], indirect=True)
def test_gives_up_after_the_bound_naming_the_holder(
    holder: subprocess.Popen[str], tmp_path: Path
) -> None:
    messages: list[str] = []
    with pytest.raises(PackageError, match=f"still held by process {holder.pid} .* after 1 s"):
        wait_for_package_locks(messages.append, paths=[tmp_path / "lock"], timeout_s=1, poll_s=0.1)
    assert len(messages) == 1  # said once, not once per poll
    assert not (tmp_path / "released").exists()


def test_free_and_missing_locks_do_not_wait(tmp_path: Path) -> None:
    (tmp_path / "free").touch()
    messages: list[str] = []
    paths = [tmp_path / "free", tmp_path / "missing"]
    assert wait_for_package_locks(messages.append, paths=paths, timeout_s=5) > 0
    assert messages == []
    assert all(lock_holder(path) is None for path in paths)
    assert Path("/var/lib/dpkg/lock-frontend") in PACKAGE_LOCKS
