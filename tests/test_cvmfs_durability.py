"""Durability once per publish: objects are written without fsync and made durable together,
by one `storage.sync()`, before the manifest that names them.

The SIGKILL tests kill a real publisher process at every storage call of a publish and at
random moments, then run the project's fsck. SIGKILL does not lose page-cache data, so they
prove the ordering (the manifest is written last, after every object it names is complete),
not the fsync itself; `test_sync_fsyncs_what_put_wrote_before_the_manifest` proves that the
sync path issues an fsync for every object and directory before the manifest is written.
"""

from __future__ import annotations

import datetime as dt
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import IO

import pytest

import cvmfs.storage as storage_module
from cvmfs.fsck import fsck
from cvmfs.keys import KeySet, generate_keyset, write_keyset
from cvmfs.reader import RepositoryReader
from cvmfs.storage import LocalStorage
from cvmfs.writer import MANIFEST_KEY, create_repository

FQRN = "durable.example.org"
ROOT_DIR = Path(__file__).resolve().parents[1]
CHILD = [sys.executable, "-m", "tests.durability_child"]


@pytest.fixture(scope="module")
def keys() -> KeySet:
    return generate_keyset(FQRN, now=dt.datetime.now(dt.UTC) - dt.timedelta(hours=1))


class OrderRecordingStorage(LocalStorage):
    """A real LocalStorage that logs which of its methods ran, in order."""

    def __init__(self, root: Path) -> None:
        super().__init__(root)
        self.calls: list[str] = []

    def put(self, key: str, data: bytes | IO[bytes]) -> None:
        self.calls.append(f"put {key}")
        super().put(key, data)

    def put_atomic(self, key: str, data: bytes) -> None:
        self.calls.append(f"put_atomic {key}")
        super().put_atomic(key, data)

    def sync(self) -> None:
        self.calls.append("sync")
        super().sync()


def test_sync_fsyncs_what_put_wrote_before_the_manifest(
    tmp_path: Path, keys: KeySet, monkeypatch: pytest.MonkeyPatch
) -> None:
    # A spy on os.fsync: a lost power supply cannot be caused in a test, so the test checks
    # that the fsync calls are issued, for which files, and when.
    storage = OrderRecordingStorage(tmp_path / "s")
    writer, _ = create_repository(storage, FQRN, keys)
    fsynced: list[str] = []
    real_fsync = os.fsync

    def recording_fsync(fd: int) -> None:
        fsynced.append(os.readlink(f"/proc/self/fd/{fd}"))
        real_fsync(fd)

    monkeypatch.setattr(os, "fsync", recording_fsync)
    storage.calls.clear()
    with writer.transaction() as txn:
        for i in range(20):
            txn.add_file(f"/d{i % 4}/f{i}", os.urandom(1000 + i))
        txn._drain(block=True)  # every object of these files is written now
        assert fsynced == [], "objects must not be fsynced one by one"
        txn.publish()

    puts = [c.removeprefix("put ") for c in storage.calls if c.startswith("put data/")]
    assert len(puts) >= 21  # 20 files, the catalog, the history
    sync_at = storage.calls.index("sync")
    manifest_at = storage.calls.index(f"put_atomic {MANIFEST_KEY}")
    assert storage.calls.count("sync") == 1 and sync_at < manifest_at
    assert all(storage.calls.index(f"put {key}") < sync_at for key in puts)
    root = str((tmp_path / "s").resolve())
    for key in puts:  # the object and the directory holding its name
        assert f"{root}/{key}" in fsynced
        assert f"{root}/{key.rsplit('/', 1)[0]}" in fsynced
    # last: the manifest's temp file, then the directory holding its new name
    assert fsynced[-2].startswith(f"{root}/.tmp-") and fsynced[-1] == root
    assert all(fsynced.index(f"{root}/{key}") < len(fsynced) - 2 for key in puts)


def test_a_bulk_publish_is_made_durable_by_one_syncfs_before_the_manifest(
    tmp_path: Path, keys: KeySet, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Spies on the real syncfs(2) and os.fsync: a lost power supply cannot be caused in a test.
    storage = OrderRecordingStorage(tmp_path / "s")
    writer, _ = create_repository(storage, FQRN, keys)
    monkeypatch.setattr(storage_module, "SYNCFS_ABOVE", 10)
    fsynced: list[str] = []
    real_fsync, real_syncfs = os.fsync, storage_module._syncfs

    def recording_fsync(fd: int) -> None:
        fsynced.append(os.readlink(f"/proc/self/fd/{fd}"))
        real_fsync(fd)

    def recording_syncfs(root: Path) -> bool:
        storage.calls.append(f"syncfs {root}")
        return real_syncfs(root)

    monkeypatch.setattr(os, "fsync", recording_fsync)
    monkeypatch.setattr(storage_module, "_syncfs", recording_syncfs)
    storage.calls.clear()
    with writer.transaction() as txn:
        for i in range(20):
            txn.add_file(f"/d{i % 4}/f{i}", os.urandom(1000 + i))
        txn.publish()

    syncfs_at = storage.calls.index(f"syncfs {storage.root}")
    manifest_at = storage.calls.index(f"put_atomic {MANIFEST_KEY}")
    puts = [i for i, call in enumerate(storage.calls) if call.startswith("put data/")]
    assert len(puts) >= 21 and max(puts) < syncfs_at < manifest_at
    root = str((tmp_path / "s").resolve())
    # no object fsynced one by one: only the files put_atomic replaces, and their directory
    assert fsynced and all(p.startswith(f"{root}/.tmp-") or p == root for p in fsynced)
    assert storage._unsynced_files == set() and storage._unsynced_dirs == set()
    assert _check(tmp_path / "s", keys, "after a bulk publish") == 2


def test_nothing_is_left_to_sync_after_a_publish(tmp_path: Path, keys: KeySet) -> None:
    storage = LocalStorage(tmp_path / "s")
    writer, _ = create_repository(storage, FQRN, keys)
    with writer.transaction() as txn:
        txn.add_file("/a", b"a" * 5000)
        txn.publish()
    assert storage._unsynced_files == set() and storage._unsynced_dirs == set()


def _new_repository(tmp_path: Path, keys: KeySet) -> tuple[Path, Path]:
    root, keys_dir = tmp_path / "stratum0", tmp_path / "keys"
    write_keyset(keys, keys_dir, FQRN)
    create_repository(LocalStorage(root), FQRN, keys)
    return root, keys_dir


def _child(root: Path, keys_dir: Path, seed: int, kill_at: int) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [*CHILD, str(root), str(keys_dir), FQRN, str(seed), str(kill_at)],
        cwd=ROOT_DIR,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def _check(root: Path, keys: KeySet, what: str) -> int:
    """fsck of the head and every revision the history or reflog names; returns the revision."""
    reader = RepositoryReader(LocalStorage(root), FQRN, [keys.master_public_pem])
    report = fsck(reader, all_revisions=True)
    assert report.ok, (what, [str(p) for p in report.problems])
    return reader.revision


def test_a_publisher_killed_at_every_storage_call_leaves_a_sound_repository(
    tmp_path: Path, keys: KeySet
) -> None:
    root, keys_dir = _new_repository(tmp_path, keys)
    revision = _check(root, keys, "created")
    for kill_at in range(1, 200):
        child = _child(root, keys_dir, seed=kill_at, kill_at=kill_at)
        out, err = child.communicate(timeout=120)
        if child.returncode == 0:
            break  # the publish needed fewer calls: every point before each call was tried
        assert child.returncode == -signal.SIGKILL, err
        assert _check(root, keys, f"killed before call {kill_at}") == revision
    else:
        pytest.fail("the publish never completed")
    assert kill_at > 10  # files, catalogs, history, reflog, sync, manifest
    assert out.splitlines()[-1] == f"published {revision + 1}"
    assert _check(root, keys, "after the completed publish") == revision + 1


def test_a_publisher_killed_at_random_moments_leaves_a_sound_repository(
    tmp_path: Path, keys: KeySet
) -> None:
    root, keys_dir = _new_repository(tmp_path, keys)
    rng = random.Random(13)
    revision = _check(root, keys, "created")
    for round_ in range(8):
        child = _child(root, keys_dir, seed=1000 * (round_ + 1), kill_at=0)
        assert child.stdout is not None
        assert child.stdout.readline() == "ready\n", child.stderr.read() if child.stderr else ""
        time.sleep(rng.uniform(0.0, 1.5))
        child.send_signal(signal.SIGKILL)
        out, _err = child.communicate(timeout=60)
        published = [int(line.split()[1]) for line in out.splitlines() if line.startswith("pub")]
        now = _check(root, keys, f"round {round_}")
        # every publish the child reported is there; a killed one left the previous revision
        assert now >= max(published, default=revision) and now <= revision + len(published) + 1
        revision = now
