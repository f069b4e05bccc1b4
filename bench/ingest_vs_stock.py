"""The tarball import of the benchmark tree against the stock `cvmfs_server ingest`, interleaved.

Usage (root, with the stock CernVM-FS server tools installed: docs/stock-tools.md):
    .venv/bin/python -m bench.ingest_vs_stock [--rounds 3] [--work DIR] [--scale 1.0]
        [--compression zlib|isal] [--stock-fqrn ingest.stock.test] [--floor]
Each round times two whole commands on a fresh repository each, stock first then ours, so both
see the same machine (A B A B): `cvmfs_server ingest -t tree.tar -b / <fqrn>` (its local
stratum 0 made by `cvmfs_server mkfs`) and `cvmfs-svc repo import <dir> tree.tar` (the
repository made by `cvmfs-svc repo create`). Repository creation is not timed. Prints wall,
CPU (user+sys of the command and everything it waited for) and peak RSS per run, then medians
and the ratio ours/stock per pair: the issue #13 target is a ratio ≤ 0.85 in stock mode.
`--floor` also times, first in each round, the compute floor (`bench.import_tree --run-floor`:
zlib level 6 then SHA-1 of every file of the tree on 2 threads, no writes) and prints both
commands' ratio to it: how far each is above the deflate both must do for stock's objects.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

from bench.tree import TreeSpec, generate_tree, write_tarball

OUR_FQRN = "ingest.ours.test"


@dataclass(frozen=True)
class Run:
    wall_s: float
    cpu_s: float
    peak_rss_mib: int


def timed(command: list[str], log: Path) -> Run:
    """Run `command` to its end; wall time, and CPU and peak RSS from wait4 (it and its
    waited-for descendants)."""
    with log.open("ab") as out:
        started = time.perf_counter()
        process = subprocess.Popen(command, stdout=out, stderr=subprocess.STDOUT)
        _, status, usage = os.wait4(process.pid, 0)
        wall = time.perf_counter() - started
    process.returncode = os.waitstatus_to_exitcode(status)
    if process.returncode != 0:
        raise SystemExit(f"{' '.join(command)} failed ({process.returncode}); see {log}")
    return Run(round(wall, 2), round(usage.ru_utime + usage.ru_stime, 2), usage.ru_maxrss // 1024)


def floor_run(tree: Path) -> Run:
    """The compute floor in a child process, as bench.import_tree measures it (wall and CPU of
    the compression and hashing alone)."""
    command = [sys.executable, "-m", "bench.import_tree", "--run-floor", str(tree)]
    output = subprocess.run(
        [*command, "--workers", "2"], capture_output=True, text=True, check=True
    ).stdout
    figures = json.loads(output.strip().splitlines()[-1])
    return Run(float(figures["wall_s"]), float(figures["cpu_s"]), 0)


def fresh_stock_repository(fqrn: str, log: Path) -> None:
    with log.open("ab") as out:
        subprocess.run(["cvmfs_server", "rmfs", "-f", fqrn], stdout=out, stderr=out)
        subprocess.run(
            ["cvmfs_server", "mkfs", "-o", "root", fqrn], stdout=out, stderr=out, check=True
        )


def fresh_repository(cli: str, directory: Path, keys: Path, compression: str, log: Path) -> None:
    shutil.rmtree(directory, ignore_errors=True)
    command = [cli, "repo", "create", str(directory), "--fqrn", OUR_FQRN]
    command += ["--keys-dir", str(keys), "--generate-keys", "--compression", compression]
    with log.open("ab") as out:
        subprocess.run(command, stdout=out, stderr=out, check=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--scale", type=float, default=1.0, help="1.0 = 10,000 files, 1 GiB")
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--work", type=Path, default=Path("/tmp/cvmfs-bench"))
    parser.add_argument("--compression", choices=["zlib", "isal"], default="zlib")
    parser.add_argument("--stock-fqrn", default="ingest.stock.test")
    parser.add_argument("--floor", action="store_true", help="also time the compute floor")
    args = parser.parse_args()
    if shutil.which("cvmfs_server") is None or os.geteuid() != 0:
        raise SystemExit("needs root and the stock cvmfs_server (docs/stock-tools.md)")

    tree = args.work / f"tree-seed{args.seed}-scale{args.scale}"
    tarball = tree.parent / f"{tree.name}.tar"
    if not tarball.exists():
        generate_tree(tree, TreeSpec(args.seed, args.scale))
        write_tarball(tree, tarball)
    cli = str(Path(sys.executable).with_name("cvmfs-svc"))
    ours_dir, keys, log = args.work / OUR_FQRN, args.work / "ingest-keys", args.work / "ingest.log"
    print(f"tarball {tarball} ({tarball.stat().st_size} bytes), log {log}")
    stock_runs: list[Run] = []
    our_runs: list[Run] = []
    floor_runs: list[Run] = []
    for number in range(1, args.rounds + 1):
        load = " ".join(f"{x:.1f}" for x in os.getloadavg())
        if args.floor:
            floor_runs.append(floor_run(tree))
            print(
                f"round {number} floor wall_s={floor_runs[-1].wall_s} cpu_s={floor_runs[-1].cpu_s}"
            )
        fresh_stock_repository(args.stock_fqrn, log)
        stock = timed(
            ["cvmfs_server", "ingest", "-t", str(tarball), "-b", "/", args.stock_fqrn], log
        )
        fresh_repository(cli, ours_dir, keys, args.compression, log)
        ours = timed(
            [cli, "repo", "import", str(ours_dir), str(tarball), "--keys-dir", str(keys)], log
        )
        stock_runs.append(stock)
        our_runs.append(ours)
        print(
            f"round {number} (load {load}): stock wall_s={stock.wall_s} cpu_s={stock.cpu_s} "
            f"peak_rss_mib={stock.peak_rss_mib} | ours ({args.compression}) wall_s={ours.wall_s} "
            f"cpu_s={ours.cpu_s} peak_rss_mib={ours.peak_rss_mib} | "
            f"ratio wall {ours.wall_s / stock.wall_s:.2f} cpu {ours.cpu_s / stock.cpu_s:.2f}"
        )
        if args.floor:
            floor = floor_runs[-1]
            print(
                f"round {number} wall / floor's: stock {stock.wall_s / floor.wall_s:.2f}, "
                f"ours {ours.wall_s / floor.wall_s:.2f}"
            )
    subprocess.run(["cvmfs_server", "rmfs", "-f", args.stock_fqrn], capture_output=True)
    shutil.rmtree(ours_dir, ignore_errors=True)

    def median(runs: list[Run], field: str) -> float:
        return statistics.median(getattr(run, field) for run in runs)

    wall_ratios = [o.wall_s / s.wall_s for o, s in zip(our_runs, stock_runs, strict=True)]
    cpu_ratios = [o.cpu_s / s.cpu_s for o, s in zip(our_runs, stock_runs, strict=True)]
    print(f"load average at end: {' '.join(f'{x:.1f}' for x in os.getloadavg())}")
    print()
    print("| command | wall s (median) | CPU s (median) | peak RSS MiB (median) |")
    print("|---|---|---|---|")
    for name, runs in (
        ("stock `cvmfs_server ingest`", stock_runs),
        ("`cvmfs-svc repo import`", our_runs),
    ):
        print(
            f"| {name} | {median(runs, 'wall_s')} | {median(runs, 'cpu_s')} "
            f"| {median(runs, 'peak_rss_mib')} |"
        )
    print(
        f"ours/stock per pair: wall median {statistics.median(wall_ratios):.2f} "
        f"({min(wall_ratios):.2f}-{max(wall_ratios):.2f}), CPU median "
        f"{statistics.median(cpu_ratios):.2f} ({min(cpu_ratios):.2f}-{max(cpu_ratios):.2f})"
    )
    if floor_runs:
        for name, runs in (("stock", stock_runs), ("ours", our_runs)):
            ratios = [r.wall_s / f.wall_s for r, f in zip(runs, floor_runs, strict=True)]
            print(
                f"{name} wall / the same round's floor: median {statistics.median(ratios):.2f} "
                f"({min(ratios):.2f}-{max(ratios):.2f}); floor median "
                f"{median(floor_runs, 'wall_s')} s wall, {median(floor_runs, 'cpu_s')} s CPU"
            )


if __name__ == "__main__":
    main()
