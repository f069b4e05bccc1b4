"""Read and verify a repository: open (signature chain), walk, read every file, fsck.

Usage: .venv/bin/python -m bench.read_verify [--scale F] [--seed N] [--work DIR] [--repo DIR
       --fqrn NAME --key PUB]
Without --repo it imports the synthetic benchmark tree (bench/tree.py) into a fresh local
repository first. Prints wall time and throughput of each step, and peak RSS.
"""

from __future__ import annotations

import argparse
import os
import resource
import shutil
import time
from pathlib import Path

from bench.tree import TreeSpec, generate_tree
from cvmfs.fsck import fsck
from cvmfs.keys import generate_keyset
from cvmfs.reader import RepositoryReader
from cvmfs.storage import LocalStorage
from cvmfs.tarball import import_directory
from cvmfs.writer import create_repository

FQRN = "bench-read.example.org"
MB = 1_000_000


def build_repository(work: Path, spec: TreeSpec) -> tuple[Path, str]:
    """Import the synthetic tree into `work/repo`; returns (repo dir, public key PEM)."""
    tree = work / f"tree-seed{spec.seed}-scale{spec.scale}"
    if not tree.exists():
        generate_tree(tree, spec)
    repo = work / "repo-read"
    shutil.rmtree(repo, ignore_errors=True)
    keys = generate_keyset(FQRN)
    writer, _ = create_repository(LocalStorage(repo), FQRN, keys)
    with writer.transaction() as transaction:
        import_directory(transaction, tree)
        transaction.publish()
    return repo, keys.master_public_pem


def stored_bytes(repo: Path) -> int:
    return sum(p.stat().st_size for p in (repo / "data").rglob("*") if p.is_file())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--scale", type=float, default=0.1, help="1.0 = 10,000 files, 1 GiB")
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--work", type=Path, default=Path("/tmp/cvmfs-bench"))
    parser.add_argument("--repo", type=Path, help="an existing stratum-0 directory")
    parser.add_argument("--fqrn", default=FQRN)
    parser.add_argument("--key", type=Path, help="master public key of --repo")
    args = parser.parse_args()

    if args.repo:
        repo, fqrn, keys = args.repo, args.fqrn, [str(args.key)]
    else:
        args.work.mkdir(parents=True, exist_ok=True)
        started = time.perf_counter()
        repo, pem = build_repository(args.work, TreeSpec(args.seed, args.scale))
        fqrn, keys = FQRN, [pem]
        print(f"built {repo} in {time.perf_counter() - started:.1f} s")

    started = time.perf_counter()
    reader = RepositoryReader.open(repo, fqrn, keys)
    print(f"open+verify wall_s={time.perf_counter() - started:.3f}")

    started = time.perf_counter()
    entries = list(reader.walk())
    wall = time.perf_counter() - started
    print(f"walk entries={len(entries)} wall_s={wall:.2f} entries_per_s={len(entries) / wall:.0f}")

    files = [e for e in entries if e.is_regular]
    started = time.perf_counter()
    size = sum(len(piece) for e in files for piece in reader.iter_content(e))
    wall = time.perf_counter() - started
    print(
        f"read files={len(files)} bytes={size} wall_s={wall:.2f} "
        f"files_per_s={len(files) / wall:.0f} mb_per_s={size / MB / wall:.1f}"
    )

    stored = stored_bytes(repo) if isinstance(reader.storage, LocalStorage) else 0
    for workers in sorted({1, os.cpu_count() or 1}):
        started = time.perf_counter()
        report = fsck(reader, workers=workers)
        wall = time.perf_counter() - started
        print(
            f"fsck workers={workers} ok={report.ok} objects={report.objects_checked} "
            f"entries={report.entries_checked} wall_s={wall:.2f} "
            f"objects_per_s={report.objects_checked / wall:.0f} "
            f"stored_mb_per_s={stored / MB / wall:.1f}"
        )
    reader.close()
    print(f"peak_rss_mib={resource.getrusage(resource.RUSAGE_SELF).ru_maxrss // 1024}")


if __name__ == "__main__":
    main()
