"""One new 300 KB file published into the 10,000-file tree's repository through the CLI, end to
end: each round is a whole `cvmfs-svc repo import` process, timed from outside.

Usage: .venv/bin/python -m bench.cli_publish_one [--work DIR] [--rounds N] [--scale F]
           [--baseline CHECKOUT]
The repository is made once (kept under --work with its keys: the tree is generated, then
imported with `repo create` and `repo import`). Each round writes a new random file and runs
`python -m service.cli repo import REPO SRC -p /one --keys-dir KEYS`; it prints the wall time,
the CPU time (user + system, from the child's rusage) and the peak RSS of every round, then the
medians and the load average. `--baseline CHECKOUT` runs another checkout of the project (e.g.
`git worktree add /tmp/base <commit>`) in alternation, A B A B, with the same interpreter, and
prints the ratios of the medians. The stock `cvmfs_server` takes 0.46-0.47 s for the same
(performance.md).
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

FQRN = "bench-cli.example.org"
REPO_ROOT = Path(__file__).resolve().parent.parent
FILE_BYTES = 300_000


def run_cli(checkout: Path, args: list[str]) -> tuple[float, float, float]:
    """Run `python -m service.cli ARGS` from `checkout`; wall s, CPU s, peak RSS MiB."""
    env = dict(os.environ, PYTHONPATH=str(checkout))
    started = time.perf_counter()
    process = subprocess.Popen(
        [sys.executable, "-m", "service.cli", *args],
        cwd=checkout,
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    _pid, status, usage = os.wait4(process.pid, 0)
    wall = time.perf_counter() - started
    stderr = process.stderr.read().decode() if process.stderr else ""
    if status != 0:
        raise SystemExit(f"{' '.join(args)} failed ({status}): {stderr}")
    return wall, usage.ru_utime + usage.ru_stime, usage.ru_maxrss / 1024


def prepare(work: Path, scale: float) -> tuple[Path, Path]:
    """The imported tree's repository and its keys (made once, then reused)."""
    repo, keys = work / FQRN, work / "keys"
    if (repo / ".cvmfspublished").exists() and (keys / f"{FQRN}.key").exists():
        print(f"reusing {repo}")
        return repo, keys
    tree = work / "tree"
    if not tree.exists():
        # in a child: a child's peak RSS (rusage) counts its parent's at the fork
        generate = [sys.executable, "-m", "bench.tree", str(tree), "--scale", str(scale)]
        subprocess.run(generate, cwd=REPO_ROOT, check=True)
    started = time.perf_counter()
    create = ["repo", "create", str(repo), "--keys-dir", str(keys), "--generate-keys"]
    run_cli(REPO_ROOT, create)
    run_cli(REPO_ROOT, ["repo", "import", str(repo), str(tree), "--keys-dir", str(keys)])
    print(f"repository {repo}: tree imported in {time.perf_counter() - started:.1f} s")
    return repo, keys


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--work", type=Path, default=Path("/tmp/cvmfs-bench/cli-publish-one"))
    parser.add_argument("--rounds", type=int, default=9)
    parser.add_argument("--scale", type=float, default=1.0, help="of the benchmark tree")
    parser.add_argument("--baseline", type=Path, help="another checkout, run A B A B")
    args = parser.parse_args()

    args.work.mkdir(parents=True, exist_ok=True)
    repo, keys = prepare(args.work, args.scale)
    source = args.work / "src"
    source.mkdir(exist_ok=True)
    checkouts = {"this": REPO_ROOT}
    if args.baseline is not None:
        checkouts["baseline"] = args.baseline.resolve()
    command = ["repo", "import", str(repo), str(source), "-p", "/one", "--keys-dir", str(keys)]
    for checkout in checkouts.values():
        # Bytecode as an installed package has it: with PYTHONDONTWRITEBYTECODE set (as in
        # this workplace's shells) every run would compile the changed modules again.
        packages = [str(checkout / name) for name in ("cvmfs", "service", "stack")]
        subprocess.run([sys.executable, "-m", "compileall", "-q", *packages], check=True)
    for checkout in checkouts.values():  # warm-up: page cache
        (source / "new.bin").write_bytes(os.urandom(FILE_BYTES))
        run_cli(checkout, command)
    figures: dict[str, list[tuple[float, float, float]]] = {name: [] for name in checkouts}
    load_before = os.getloadavg()[0]
    for round_number in range(args.rounds):
        for name, checkout in checkouts.items():
            (source / "new.bin").write_bytes(os.urandom(FILE_BYTES))
            wall, cpu, rss = run_cli(checkout, command)
            figures[name].append((wall, cpu, rss))
            print(
                f"round {round_number + 1} {name}: wall {wall:.3f} s, CPU {cpu:.3f} s, "
                f"{rss:.1f} MiB"
            )
    load_after = os.getloadavg()[0]
    medians = {}
    for name, rows in figures.items():
        wall, cpu, rss = (statistics.median(column) for column in zip(*rows, strict=True))
        medians[name] = (wall, cpu)
        print(
            f"{name}: median wall {wall:.3f} s (best {min(r[0] for r in rows):.3f}), "
            f"median CPU {cpu:.3f} s, peak RSS {rss:.1f} MiB, {len(rows)} rounds"
        )
    if "baseline" in medians:
        (wall_a, cpu_a), (wall_b, cpu_b) = medians["this"], medians["baseline"]
        print(f"this / baseline: wall {wall_a / wall_b:.2f}, CPU {cpu_a / cpu_b:.2f}")
    print(f"load average {load_before:.1f} -> {load_after:.1f} (1 min)")


if __name__ == "__main__":
    main()
