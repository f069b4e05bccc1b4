"""Scratch directories of writers killed mid-transaction are swept by the next writer."""

from __future__ import annotations

import datetime as dt
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

from cvmfs.keys import generate_keyset, write_keyset
from cvmfs.scratch import PREFIX, make_scratch_dir, sweep_scratch_dirs
from cvmfs.storage import LocalStorage
from cvmfs.writer import RepositoryWriter, WriterOptions, create_repository

FQRN = "scratch.sw.example.org"

# A writer process that opens a transaction, stages a file and dies without any clean-up.
_KILLED_WRITER = textwrap.dedent(
    """
    import os, signal, sys
    from cvmfs.keys import load_keyset
    from cvmfs.storage import LocalStorage
    from cvmfs.writer import RepositoryWriter, WriterOptions
    root, work, keys_dir, fqrn = sys.argv[1:5]
    keys = load_keyset(keys_dir, fqrn)
    writer = RepositoryWriter.open(LocalStorage(root), fqrn, keys, WriterOptions(work_dir=work))
    txn = writer.transaction()
    txn.add_file("/staged.txt", b"never published")
    os.kill(os.getpid(), signal.SIGKILL)
    """
)


def test_the_next_transaction_removes_what_a_killed_writer_left(tmp_path: Path) -> None:
    root, work, keys_dir = tmp_path / "stratum0", tmp_path / "work", tmp_path / "keys"
    work.mkdir()
    keys = generate_keyset(FQRN, now=dt.datetime.now(dt.UTC))
    write_keyset(keys, keys_dir, FQRN)
    options = WriterOptions(work_dir=str(work))
    create_repository(LocalStorage(root), FQRN, keys, options)
    assert list(work.iterdir()) == []  # creation cleans up after itself

    killed = subprocess.run(
        [sys.executable, "-c", _KILLED_WRITER, str(root), str(work), str(keys_dir), FQRN],
        capture_output=True,
        check=False,
    )
    assert killed.returncode == -signal.SIGKILL, killed.stderr.decode()
    left = [p for p in work.iterdir() if p.name.startswith(PREFIX)]
    assert len(left) == 1 and any(left[0].iterdir())  # its working catalog stayed behind

    mine = make_scratch_dir("txn", work)  # a live process's directory is kept
    foreign = work / f"{PREFIX}otherhost-{killed_pid_placeholder()}-txn-abc"
    foreign.mkdir()  # another host's (shared temp volume) is never touched
    writer = RepositoryWriter.open(LocalStorage(root), FQRN, keys, options)
    with writer.transaction() as txn:
        txn.add_file("/kept.txt", b"published")
        txn.publish()
    assert sorted(p.name for p in work.iterdir()) == sorted([mine.name, foreign.name])
    assert sweep_scratch_dirs(work) == []


def killed_pid_placeholder() -> int:
    """A pid that is certainly not running here (the sweep must still skip other hosts)."""
    return 2**22 + 1


def test_sweeping_a_missing_directory_does_nothing(tmp_path: Path) -> None:
    assert sweep_scratch_dirs(tmp_path / "absent") == []
    assert not (tmp_path / "absent").exists()  # nothing is created either
