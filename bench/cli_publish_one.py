"""One new 300 KB file published into the 10,000-file tree's repository through the CLI, end to
end: each round is a whole `cvmfs-svc repo import` process, timed from outside.

Usage: .venv/bin/python -m bench.cli_publish_one [--work DIR] [--rounds N] [--scale F]
           [--baseline CHECKOUT] [--stock FQRN]
The repository is made once (kept under --work with its keys: the tree is generated, then
imported with `repo create` and `repo import`). Each round writes a new random file and runs
`python -m service.cli repo import REPO SRC -p /one --keys-dir KEYS`; it prints the wall time,
the CPU time (user + system, from the child's rusage) and the peak RSS of every round, then the
medians and the load average. `--baseline CHECKOUT` runs another checkout of the project (e.g.
`git worktree add /tmp/base <commit>`) in alternation, A B A B, with the same interpreter, and
prints the ratios of the medians. `--stock FQRN` also runs, in the same alternation, the stock
publisher's `cvmfs_server transaction FQRN && cp NEW /cvmfs/FQRN/one/ && cvmfs_server publish
FQRN` on a stock repository holding the same tree (performance.md measured 0.46-0.47 s).
"""

from __future__ import annotations

import argparse
import functools
import os
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

FQRN = "bench-cli.example.org"
REPO_ROOT = Path(__file__).resolve().parent.parent
FILE_BYTES = 300_000


def timed(command: list[str], cwd: Path, env: dict[str, str]) -> tuple[float, float, float]:
    """Run `command` to its end; wall s, CPU s and peak RSS MiB of it and the children it
    waited for (wait4)."""
    with tempfile.TemporaryFile() as errors:
        started = time.perf_counter()
        process = subprocess.Popen(
            command, cwd=cwd, env=env, stdout=subprocess.DEVNULL, stderr=errors
        )
        _pid, status, usage = os.wait4(process.pid, 0)
        wall = time.perf_counter() - started
        if status != 0:
            errors.seek(0)
            raise SystemExit(f"{' '.join(command)} failed ({status}): {errors.read().decode()}")
    return wall, usage.ru_utime + usage.ru_stime, usage.ru_maxrss / 1024


def run_cli(checkout: Path, args: list[str]) -> tuple[float, float, float]:
    """`python -m service.cli ARGS` from `checkout`."""
    env = dict(os.environ, PYTHONPATH=str(checkout))
    return timed([sys.executable, "-m", "service.cli", *args], checkout, env)


def stock_publish(fqrn: str, new_file: Path) -> tuple[float, float, float]:
    """The stock publisher's one-file change: transaction, copy, publish (one shell)."""
    script = (
        f"cvmfs_server transaction {fqrn} && cp {new_file} /cvmfs/{fqrn}/one/new.bin && "
        f"cvmfs_server publish {fqrn}"
    )
    return timed(["sh", "-c", script], Path("/"), dict(os.environ))


def prepare_stock(fqrn: str, tree: Path) -> None:
    """A stock repository (`cvmfs_server mkfs`) holding the same tree, made once."""
    if Path(f"/cvmfs/{fqrn}/one").is_dir():
        print(f"reusing stock {fqrn}")
        return
    listed = subprocess.run(["cvmfs_server", "list"], capture_output=True, text=True).stdout
    if fqrn not in listed.split():
        subprocess.run(["cvmfs_server", "mkfs", "-o", "root", fqrn], check=True)
    started = time.perf_counter()
    subprocess.run(["cvmfs_server", "transaction", fqrn], check=True)
    subprocess.run(["cp", "-a", f"{tree}/.", f"/cvmfs/{fqrn}/"], check=True)
    Path(f"/cvmfs/{fqrn}/one").mkdir(exist_ok=True)
    subprocess.run(["cvmfs_server", "publish", fqrn], check=True, stdout=subprocess.DEVNULL)
    print(f"stock {fqrn}: tree published in {time.perf_counter() - started:.1f} s")


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
    parser.add_argument(
        "--stock",
        metavar="FQRN",
        help="also time the stock cvmfs_server on this repository, made and filled with the "
        "same tree if missing (root and the stock tools: docs/stock-tools.md)",
    )
    args = parser.parse_args()

    args.work.mkdir(parents=True, exist_ok=True)
    repo, keys = prepare(args.work, args.scale)
    if args.stock:
        prepare_stock(args.stock, args.work / "tree")
    source = args.work / "src"
    source.mkdir(exist_ok=True)
    new_file = source / "new.bin"
    checkouts = {"this": REPO_ROOT}
    if args.baseline is not None:
        checkouts["baseline"] = args.baseline.resolve()
    command = ["repo", "import", str(repo), str(source), "-p", "/one", "--keys-dir", str(keys)]
    for checkout in checkouts.values():
        # Bytecode as an installed package has it: with PYTHONDONTWRITEBYTECODE set (as in
        # this workplace's shells) every run would compile the changed modules again.
        packages = [str(checkout / name) for name in ("cvmfs", "service", "stack")]
        subprocess.run([sys.executable, "-m", "compileall", "-q", *packages], check=True)
    runners: dict[str, Callable[[], tuple[float, float, float]]] = {
        name: functools.partial(run_cli, checkout, command) for name, checkout in checkouts.items()
    }
    if args.stock:
        runners["stock"] = functools.partial(stock_publish, args.stock, new_file)
    for run in runners.values():  # warm-up: page cache
        new_file.write_bytes(os.urandom(FILE_BYTES))
        run()
    figures: dict[str, list[tuple[float, float, float]]] = {name: [] for name in runners}
    load_before = os.getloadavg()[0]
    for round_number in range(args.rounds):
        for name, run in runners.items():
            new_file.write_bytes(os.urandom(FILE_BYTES))
            wall, cpu, rss = run()
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
    wall_a, cpu_a = medians["this"]
    for other in ("baseline", "stock"):
        if other in medians:
            wall_b, cpu_b = medians[other]
            print(f"this / {other}: wall {wall_a / wall_b:.2f}, CPU {cpu_a / cpu_b:.2f}")
    print(f"load average {load_before:.1f} -> {load_after:.1f} (1 min)")


if __name__ == "__main__":
    main()
