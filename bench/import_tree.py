"""Import the benchmark tree into a fresh local repository, as a directory and as a tarball,
in the stock compression and in fast mode, against the compute floor measured in the same run.

Usage: .venv/bin/python -m bench.import_tree [--scale F] [--seed N] [--work DIR] [--modes dir,tar]
           [--compressions zlib,isal] [--no-floor] [--verify]
Prints the floor (zlib level 6 + SHA-1 on the same threads, no I/O), then per mode and
compression: wall time, CPU time, files/s, MB/s, peak RSS, objects written, the ratio of the
wall time to the floor's, and the time of publishing one changed file into the imported
repository; a summary table closes. Each import runs in its own process so its peak RSS is its
own. `--verify` also fscks each repository and reads every file back against the tree.
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
from cvmfs.codecs import Compression
from cvmfs.fsck import fsck
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


def peak_rss_kib() -> int:
    """This process's own peak RSS: VmHWM of its address space, which starts afresh at exec.

    Not `ru_maxrss`: Linux carries the parent's peak at fork into the child's `ru_maxrss`, so a
    bench parent that generated the tree or measured the floor inflated every import's figure.
    """
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1])
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # not Linux


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


def verify(reader: RepositoryReader, tree: Path) -> str:
    """fsck, then every file and symlink of `tree` read back from the repository."""
    report = fsck(reader)
    if not report.ok:
        return f"fsck: {len(report.problems)} problem(s), first: {report.problems[0]}"
    checked = 0
    for path in sorted(tree.rglob("*")):
        name = "/" + path.relative_to(tree).as_posix()
        if path.is_symlink():
            if reader.readlink(name) != os.readlink(path):
                return f"symlink {name} differs"
        elif path.is_file():
            if reader.read(name) != path.read_bytes():
                return f"{name} differs"
        else:
            continue
        checked += 1
    return f"ok ({checked} files and symlinks identical, fsck clean)"


def run_one(
    mode: str,
    source: Path,
    repo_dir: Path,
    workers: int,
    compression: Compression,
    tree: Path | None,
) -> dict[str, object]:
    """Import `source` (a directory or a tarball) into a new repository; return the figures."""
    storage = LocalStorage(repo_dir)
    keys = generate_keyset(FQRN)
    options = WriterOptions(workers=workers, compression=compression)
    writer, _ = create_repository(storage, FQRN, keys, options)
    wall0, usage0 = time.perf_counter(), resource.getrusage(resource.RUSAGE_SELF)
    main0 = time.thread_time()  # the importing thread alone: the part nothing runs beside
    with writer.transaction() as transaction:
        if mode == "dir":
            stats = import_directory(transaction, source)
        else:
            with source.open("rb") as stream:
                stats = import_tarball(transaction, stream)
        result = transaction.publish()
    wall = time.perf_counter() - wall0
    main_cpu = time.thread_time() - main0
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
    verified = verify(reader, tree) if tree is not None else "not asked (--verify)"
    return {
        "mode": mode,
        "compression": compression.value,
        "files": stats.files,
        "bytes": stats.bytes,
        "wall_s": round(wall, 2),
        "cpu_s": round(cpu, 2),
        "main_thread_cpu_s": round(main_cpu, 2),
        "files_per_s": round(stats.files / wall),
        "mb_per_s": round(stats.bytes / MB / wall, 1),
        "peak_rss_mib": round(peak_rss_kib() / 1024),
        "objects": objects,
        "chunk_objects": chunk_objects,
        "object_mb": round(object_bytes / MB, 1),
        "catalogs": len(result.catalogs_written),
        "publish_one_s": round(one_wall, 3),
        "publish_one_catalogs_rewritten": len(one.catalogs_written),
        "verified": verified,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--scale", type=float, default=1.0, help="1.0 = 10,000 files, 1 GiB")
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--work", type=Path, default=Path("/tmp/cvmfs-bench"))
    parser.add_argument("--modes", default="dir,tar")
    parser.add_argument("--compressions", default="zlib,isal")
    parser.add_argument("--workers", type=int, default=os.cpu_count() or 2)
    parser.add_argument("--no-floor", action="store_true", help="skip timing zlib+SHA-1 alone")
    parser.add_argument("--verify", action="store_true", help="fsck + read every file back")
    parser.add_argument("--run-one", help=argparse.SUPPRESS)
    parser.add_argument("--run-floor", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--compression", default="zlib", help=argparse.SUPPRESS)
    parser.add_argument("--source", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--repo", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--tree", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args()

    if args.run_floor:
        print(json.dumps(compute_floor(args.run_floor, args.workers)))
        return
    if args.run_one:
        figures = run_one(
            args.run_one,
            args.source,
            args.repo,
            args.workers,
            Compression(args.compression),
            args.tree,
        )
        print(json.dumps(figures))
        return

    tree = args.work / f"tree-seed{args.seed}-scale{args.scale}"
    tarball = tree.parent / f"{tree.name}.tar"
    if not tree.exists():
        started = time.perf_counter()
        files, size = generate_tree(tree, TreeSpec(args.seed, args.scale))
        write_tarball(tree, tarball)
        elapsed = time.perf_counter() - started
        print(f"generated {tree} ({files} files, {size} bytes) in {elapsed:.1f} s")
    print(f"load average at start: {' '.join(f'{x:.1f}' for x in os.getloadavg())}")
    floor_wall: float | None = None
    if not args.no_floor:
        # In a process of its own, like each import, so no measurement disturbs another.
        command = [sys.executable, "-m", "bench.import_tree", "--run-floor", str(tree)]
        command += ["--workers", str(args.workers)]
        output = subprocess.run(command, check=True, capture_output=True, text=True).stdout
        floor = json.loads(output.strip().splitlines()[-1])
        floor_wall = float(str(floor["wall_s"]))
        print(" ".join(f"{key}={value}" for key, value in floor.items()))
    rows: list[dict[str, object]] = []
    for compression in args.compressions.split(","):
        for mode in args.modes.split(","):
            repo = args.work / f"repo-{mode}-{compression}"
            shutil.rmtree(repo, ignore_errors=True)
            source = tree if mode == "dir" else tarball
            command = [sys.executable, "-m", "bench.import_tree", "--run-one", mode]
            command += ["--compression", compression, "--source", str(source)]
            command += ["--repo", str(repo), "--workers", str(args.workers)]
            if args.verify:
                command += ["--tree", str(tree)]
            output = subprocess.run(command, check=True, capture_output=True, text=True).stdout
            figures = json.loads(output.strip().splitlines()[-1])
            if floor_wall:
                figures["x_floor"] = round(float(figures["wall_s"]) / floor_wall, 2)
            print(" ".join(f"{key}={value}" for key, value in figures.items()))
            rows.append(figures)
            shutil.rmtree(repo, ignore_errors=True)
    print(f"load average at end: {' '.join(f'{x:.1f}' for x in os.getloadavg())}")
    print()
    print("| mode | compression | wall s | CPU s | peak RSS MiB | x floor | MB/s | verified |")
    print("|---|---|---|---|---|---|---|---|")
    if floor_wall:
        print(
            f"| floor: zlib 6 + SHA-1, {args.workers} threads, no I/O | zlib | {floor_wall} "
            "| | | 1.0 | | |"
        )
    for row in rows:
        print(
            f"| {row['mode']} | {row['compression']} | {row['wall_s']} | {row['cpu_s']} "
            f"| {row['peak_rss_mib']} | {row.get('x_floor', '')} | {row['mb_per_s']} "
            f"| {row['verified']} |"
        )


if __name__ == "__main__":
    main()
