"""Import the benchmark tree into a fresh local repository, as a directory and as a tarball.

Usage: .venv/bin/python -m bench.import_tree [--scale F] [--seed N] [--work DIR] [--modes dir,tar]
Prints wall time, CPU time, files/s, MB/s, peak RSS and objects written per mode, then the time
of publishing one changed file into the imported repository. Each mode runs in its own process
so its peak RSS is its own.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import resource
import shutil
import subprocess
import sys
import time
import zlib
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from bench.tree import TreeSpec, generate_tree, write_tarball
from cvmfs.keys import generate_keyset
from cvmfs.reader import RepositoryReader
from cvmfs.storage import LocalStorage
from cvmfs.tarball import import_directory, import_tarball
from cvmfs.writer import WriterOptions, create_repository

FQRN = "bench.example.org"
MB = 1_000_000


def _storage_objects(root: Path) -> tuple[int, int, int]:
    """(objects, of which chunks, bytes) under `root/data` (staging excluded)."""
    count = chunks = size = 0
    for directory in (root / "data").iterdir():
        if directory.name == "txn" or not directory.is_dir():
            continue
        for entry in os.scandir(directory):
            count += 1
            chunks += entry.name.endswith("P")
            size += entry.stat().st_size
    return count, chunks, size


def compute_floor(tree: Path, workers: int) -> dict[str, object]:
    """zlib level 6 then SHA-1 of every file of the tree on `workers` threads: the compute floor
    of any Python writer on this machine, measured in the same run (docs/performance.md)."""
    files = sorted(p for p in tree.rglob("*") if p.is_file() and not p.is_symlink())

    def encode(path: Path) -> int:
        return len(hashlib.sha1(zlib.compress(path.read_bytes(), 6)).digest())

    started, cpu0 = time.perf_counter(), time.process_time()
    with ThreadPoolExecutor(workers) as pool:
        list(pool.map(encode, files))
    wall, cpu = time.perf_counter() - started, time.process_time() - cpu0
    size = sum(p.stat().st_size for p in files)
    return {
        "mode": "floor",
        "workers": workers,
        "wall_s": round(wall, 2),
        "cpu_s": round(cpu, 2),
        "mb_per_s": round(size / MB / wall, 1),
    }


def run_one(mode: str, source: Path, repo_dir: Path, workers: int) -> dict[str, object]:
    """Import `source` (a directory or a tarball) into a new repository; return the figures."""
    storage = LocalStorage(repo_dir)
    keys = generate_keyset(FQRN)
    writer, _ = create_repository(storage, FQRN, keys, WriterOptions(workers=workers))
    wall0, usage0 = time.perf_counter(), resource.getrusage(resource.RUSAGE_SELF)
    with writer.transaction() as transaction:
        if mode == "dir":
            stats = import_directory(transaction, source)
        else:
            with source.open("rb") as stream:
                stats = import_tarball(transaction, stream)
        result = transaction.publish()
    wall = time.perf_counter() - wall0
    usage = resource.getrusage(resource.RUSAGE_SELF)
    cpu = (usage.ru_utime - usage0.ru_utime) + (usage.ru_stime - usage0.ru_stime)
    objects, chunk_objects, object_bytes = _storage_objects(repo_dir)

    # One changed file, published into the repository just imported.
    reader = RepositoryReader(storage, FQRN, [keys.master_public_pem])
    changed = next(e.path for e in reader.listdir("/bin") if e.is_regular)
    one0 = time.perf_counter()
    with writer.transaction() as transaction:
        transaction.add_file(changed, b"changed by bench/import_tree.py\n")
        one = transaction.publish()
    one_wall = time.perf_counter() - one0
    return {
        "mode": mode,
        "files": stats.files,
        "bytes": stats.bytes,
        "wall_s": round(wall, 2),
        "cpu_s": round(cpu, 2),
        "files_per_s": round(stats.files / wall),
        "mb_per_s": round(stats.bytes / MB / wall, 1),
        "peak_rss_mib": round(usage.ru_maxrss / 1024),
        "objects": objects,
        "chunk_objects": chunk_objects,
        "object_mb": round(object_bytes / MB, 1),
        "catalogs": len(result.catalogs_written),
        "publish_one_s": round(one_wall, 3),
        "publish_one_catalogs_rewritten": len(one.catalogs_written),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--scale", type=float, default=1.0, help="1.0 = 10,000 files, 1 GiB")
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--work", type=Path, default=Path("/tmp/cvmfs-bench"))
    parser.add_argument("--modes", default="dir,tar")
    parser.add_argument("--workers", type=int, default=os.cpu_count() or 2)
    parser.add_argument("--floor", action="store_true", help="also time zlib+SHA-1 alone")
    parser.add_argument("--run-one", help=argparse.SUPPRESS)
    parser.add_argument("--source", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--repo", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args()

    if args.run_one:
        print(json.dumps(run_one(args.run_one, args.source, args.repo, args.workers)))
        return

    tree = args.work / f"tree-seed{args.seed}-scale{args.scale}"
    tarball = tree.parent / f"{tree.name}.tar"
    if not tree.exists():
        started = time.perf_counter()
        files, size = generate_tree(tree, TreeSpec(args.seed, args.scale))
        write_tarball(tree, tarball)
        elapsed = time.perf_counter() - started
        print(f"generated {tree} ({files} files, {size} bytes) in {elapsed:.1f} s")
    for mode in args.modes.split(","):
        repo = args.work / f"repo-{mode}"
        shutil.rmtree(repo, ignore_errors=True)
        source = tree if mode == "dir" else tarball
        output = subprocess.run(
            [
                sys.executable,
                "-m",
                "bench.import_tree",
                "--run-one",
                mode,
                "--source",
                str(source),
                "--repo",
                str(repo),
                "--workers",
                str(args.workers),
            ],
            check=True,
            capture_output=True,
            text=True,
        ).stdout
        figures = json.loads(output.strip().splitlines()[-1])
        print(" ".join(f"{key}={value}" for key, value in figures.items()))
        shutil.rmtree(repo, ignore_errors=True)
    if args.floor:
        figures = compute_floor(tree, args.workers)
        print(" ".join(f"{key}={value}" for key, value in figures.items()))


if __name__ == "__main__":
    main()
