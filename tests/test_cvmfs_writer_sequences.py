"""Random sequences of transactions (seeded) against a model of the tree: after every publish
the reader sees exactly the model, catalog invariants hold, fsck is clean, and earlier
revisions stay readable. Markers, merges, automatic splits and hard links interleave."""

from __future__ import annotations

import datetime as dt
import random
from pathlib import Path

import pytest

from cvmfs.fsck import fsck
from cvmfs.keys import KeySet, generate_keyset
from cvmfs.reader import RepositoryReader
from cvmfs.storage import LocalStorage
from cvmfs.transaction import AUTO_CATALOG_MARKER, CATALOG_MARKER, Transaction
from cvmfs.writer import WriterOptions, create_repository
from tests.test_cvmfs_writer_support import SteppingClock, check_catalog_invariants

FQRN = "sequences.example.org"
T0 = 1_800_000_000
MARKERS = (CATALOG_MARKER, AUTO_CATALOG_MARKER)
Model = dict[str, tuple[str, bytes | str]]  # path -> ("dir", b"") | ("file", data) | ("link", t)


@pytest.fixture(scope="module")
def keys() -> KeySet:
    return generate_keyset(FQRN)


def _visible(reader: RepositoryReader) -> Model:
    seen: Model = {}
    for entry in reader.walk():
        if entry.path == "" or entry.name == AUTO_CATALOG_MARKER:
            continue
        if entry.is_dir:
            seen[entry.path] = ("dir", b"")
        elif entry.is_symlink:
            seen[entry.path] = ("link", entry.symlink)
        else:
            seen[entry.path] = ("file", reader.read(entry.path))
    return seen


def _dirs(model: Model) -> list[str]:
    return ["", *sorted(p for p, v in model.items() if v[0] == "dir")]


def _remove(model: Model, path: str) -> None:
    for p in [p for p in model if p == path or p.startswith(path + "/")]:
        del model[p]


def _step(rng: random.Random, txn: Transaction, model: Model, n: int) -> None:
    dirs = _dirs(model)
    op = rng.random()
    parent = rng.choice(dirs)
    if op < 0.35:
        path = f"{parent}/f{n}"
        data = rng.randbytes(rng.choice([0, 10, 3000]))
        txn.add_file(path, data)
        model[path] = ("file", data)
    elif op < 0.45:
        path = f"{parent}/d{n}/e{n}"
        txn.mkdir(path)
        model[f"{parent}/d{n}"] = ("dir", b"")
        model[path] = ("dir", b"")
    elif op < 0.55 and parent:
        marker = f"{parent}/{CATALOG_MARKER}"
        if marker in model:
            txn.remove(marker)
            del model[marker]
        else:
            txn.add_file(marker, b"")
            model[marker] = ("file", b"")
    elif op < 0.65:
        txn.symlink(f"{parent}/l{n}", f"target-{n}")
        model[f"{parent}/l{n}"] = ("link", f"target-{n}")
    elif op < 0.75:
        files = [p for p, v in model.items() if v[0] == "file" and p.rsplit("/", 1)[1][0] == "f"]
        if files:
            source = rng.choice(files)
            same_dir = rng.random() < 0.7
            target = f"{source.rsplit('/', 1)[0] if same_dir else parent}/h{n}"
            txn.link(source, target)
            model[target] = model[source]
    elif model:
        victim = rng.choice(sorted(p for p in model if p.rsplit("/", 1)[1] not in MARKERS))
        txn.remove(victim)
        _remove(model, victim)


@pytest.mark.parametrize(("seed", "limit"), [(11, None), (12, 12), (13, 25), (14, 8)])
def test_random_transaction_sequences(
    tmp_path: Path, keys: KeySet, seed: int, limit: int | None
) -> None:
    rng = random.Random(seed)
    storage = LocalStorage(tmp_path / "s")
    clock = SteppingClock(*range(T0, T0 + 1000))
    writer, _ = create_repository(
        storage, FQRN, keys, WriterOptions(max_catalog_entries=limit), clock=clock
    )
    model: Model = {}
    published: list[tuple[str, Model]] = []
    n = 0
    now = dt.datetime.fromtimestamp(T0 + 60, dt.UTC)
    for _publish in range(6):
        with writer.transaction() as txn:
            for _ in range(rng.randrange(5, 30)):
                n += 1
                _step(rng, txn, model, n)
            result = txn.publish()
        check_catalog_invariants(storage, result.root_hash)
        with RepositoryReader(storage, FQRN, [keys.master_public_pem], now=now) as reader:
            # the automatic policy adds a .cvmfscatalog next to each .cvmfsautocatalog it makes
            for entry in reader.walk():
                if entry.name == AUTO_CATALOG_MARKER:
                    model[entry.path.rsplit("/", 1)[0] + "/" + CATALOG_MARKER] = ("file", b"")
            assert _visible(reader) == model, f"seed {seed} after publish {result.revision}"
            report = fsck(reader)
            assert report.ok, [str(p) for p in report.problems]
            published.append((result.root_hash.hex, dict(model)))
            for root_hash, old_model in published:
                with reader.at_root_hash(root_hash) as old:
                    assert _visible(old) == old_model
