"""A publisher process for the durability tests: publishes and is SIGKILLed (by itself or from
outside) at some point of the publish; the parent then checks the repository with fsck.

    python -m tests.durability_child ROOT KEYS_DIR FQRN SEED KILL_AT

KILL_AT > 0: one publish, and the process SIGKILLs itself just before its KILL_AT-th storage
call (put, put_atomic or sync); it exits 0 if the publish needed fewer calls.
KILL_AT = 0: publish again and again (printing `published <revision>`) until killed from outside.
"""

from __future__ import annotations

import os
import random
import signal
import sys
from typing import IO

from cvmfs.keys import load_keyset
from cvmfs.storage import LocalStorage
from cvmfs.transaction import Transaction
from cvmfs.writer import RepositoryWriter


class SelfKillingStorage(LocalStorage):
    """A real LocalStorage whose process dies by a real SIGKILL before its N-th call."""

    def __init__(self, root: str, kill_at: int) -> None:
        super().__init__(root)
        self.kill_at = kill_at
        self.calls = 0

    def _tick(self) -> None:
        self.calls += 1
        if self.calls == self.kill_at:
            os.kill(os.getpid(), signal.SIGKILL)

    def put(self, key: str, data: bytes | IO[bytes]) -> None:
        self._tick()
        super().put(key, data)

    def put_atomic(self, key: str, data: bytes) -> None:
        self._tick()
        super().put_atomic(key, data)

    def sync(self) -> None:
        self._tick()
        super().sync()


def change(txn: Transaction, seed: int) -> None:
    """Distinct content per seed, so every run writes new objects (no dedup shortcuts)."""
    rng = random.Random(seed)
    txn.add_file("/nested/.cvmfscatalog", b"")
    for i in range(6):
        size = rng.choice((10, 3_000, 200_000, 1_500_000))
        txn.add_file(f"/nested/d{i % 3}/f{seed}-{i}", rng.randbytes(size) + b"%d" % seed)
    txn.add_file(f"/top-{seed}", b"top %d\n" % seed * 1000)
    txn.remove(f"/top-{seed - 1}", missing_ok=True)
    txn.symlink("/latest", f"top-{seed}")


def main() -> None:
    root, keys_dir, fqrn, seed_text, kill_text = sys.argv[1:6]
    keys = load_keyset(keys_dir, fqrn)
    seed, kill_at = int(seed_text), int(kill_text)
    writer = RepositoryWriter.open(SelfKillingStorage(root, kill_at), fqrn, keys)
    print("ready", flush=True)
    while True:
        with writer.transaction() as txn:
            change(txn, seed)
            result = txn.publish()
        print(f"published {result.revision}", flush=True)
        if kill_at:
            return
        seed += 1


if __name__ == "__main__":
    main()
