"""Publish one changed file into a repository of 100,000 files: time and catalogs rewritten.

Usage: .venv/bin/python -m bench.publish_one [--files N] [--markers] [--work DIR] [--repeat K]
The repository is built once (100 top directories x 10 subdirectories x 100 files, small
distinct contents); then one file deep in the tree is changed and published, K times.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import resource
import shutil
import time
from pathlib import Path

from cvmfs.keys import KeySet, generate_keyset
from cvmfs.storage import LocalStorage
from cvmfs.writer import RepositoryWriter, WriterOptions, create_repository

FQRN = "bench.example.org"
SUBDIRECTORIES = 10
FILES_PER_DIRECTORY = 100


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--files", type=int, default=100_000)
    parser.add_argument(
        "--markers", action="store_true", help="a .cvmfscatalog in every top directory"
    )
    parser.add_argument("--work", type=Path, default=Path("/tmp/cvmfs-bench"))
    parser.add_argument("--repeat", type=int, default=5)
    parser.add_argument(
        "--keep",
        action="store_true",
        help="keep the repository (and its keys) in --work and reuse it on the next run",
    )
    args = parser.parse_args()

    layout = f"{args.files}{'-markers' if args.markers else ''}"
    repo_dir = args.work / f"repo-publish-one-{layout}"
    keys_file = args.work / f"keys-publish-one-{layout}.json"
    per_top = SUBDIRECTORIES * FILES_PER_DIRECTORY
    tops = max(1, args.files // per_top)
    storage = LocalStorage(repo_dir)
    if args.keep and keys_file.exists() and (repo_dir / ".cvmfspublished").exists():
        keys = KeySet(**json.loads(keys_file.read_text()))
        writer = RepositoryWriter.open(storage, FQRN, keys)
        print(f"reusing {repo_dir}")
    else:
        shutil.rmtree(repo_dir, ignore_errors=True)
        keys = generate_keyset(FQRN)
        writer, _ = create_repository(storage, FQRN, keys, WriterOptions())
        started = time.perf_counter()
        with writer.transaction() as transaction:
            for top in range(tops):
                if args.markers:
                    transaction.add_file(f"/d{top:03d}/.cvmfscatalog", b"")
                for sub in range(SUBDIRECTORIES):
                    for number in range(FILES_PER_DIRECTORY):
                        path = f"/d{top:03d}/s{sub:02d}/f{number:03d}.txt"
                        transaction.add_file(path, f"{path} initial content\n".encode())
            built = transaction.publish()
        build_s = time.perf_counter() - started
        print(
            f"built files={tops * per_top} catalogs={len(built.catalogs_written)} "
            f"wall_s={build_s:.1f} files_per_s={tops * per_top / build_s:.0f}"
        )
        if args.keep:
            keys_file.write_text(json.dumps(dataclasses.asdict(keys)))

    changed = f"/d{tops // 2:03d}/s05/f042.txt"
    timings: list[float] = []
    cpu_timings: list[float] = []
    for attempt in range(args.repeat):
        started, cpu_started = time.perf_counter(), time.process_time()
        with writer.transaction() as transaction:
            transaction.add_file(changed, f"{changed} change {attempt}\n".encode())
            result = transaction.publish()
        timings.append(time.perf_counter() - started)
        cpu_timings.append(time.process_time() - cpu_started)
        rewritten = result.catalogs_rewritten
        print(
            f"publish_one path={changed} wall_s={timings[-1]:.3f} cpu_s={cpu_timings[-1]:.3f} "
            f"catalogs_rewritten={len(rewritten)} mountpoints={[m or '/' for m in rewritten]}"
        )
    timings.sort()
    cpu_timings.sort()
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(
        f"summary median_s={timings[len(timings) // 2]:.3f} best_s={timings[0]:.3f} "
        f"median_cpu_s={cpu_timings[len(cpu_timings) // 2]:.3f} "
        f"load_avg={os.getloadavg()[0]:.1f} "
        f"peak_rss_mib={peak:.0f}"
    )
    if not args.keep:
        shutil.rmtree(repo_dir, ignore_errors=True)


if __name__ == "__main__":
    main()
