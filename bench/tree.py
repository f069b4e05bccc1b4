"""Deterministic synthetic software tree for the import benchmarks (docs/performance.md).

Usage: .venv/bin/python -m bench.tree DEST [--seed N] [--scale F] [--tarball PATH]
"""

from __future__ import annotations

import argparse
import hashlib
import os
import random
import tarfile
import time
import zlib
from dataclasses import dataclass
from pathlib import Path

import numpy as np

GIB = 1024**3
MIB = 1024**2
FULL_FILES = 10_000
FULL_BYTES = GIB
FULL_LARGE = 10
FULL_SYMLINKS = 200
LARGE_MIN, LARGE_MAX = 16 * MIB, 40 * MIB
SMALL_MIN, SMALL_MAX = 100, 2 * MIB
# Truncated power law (Pareto) exponent: median ~1.5 KB and mean ~78 KB once scaled to the
# byte budget; ~44 % < 1 KiB, ~41 % 1-64 KiB, ~12 % 64 KiB-1 MiB, ~2 % 1-2 MiB.
PARETO_ALPHA = 0.24
EXECUTABLE_FRACTION = 0.05
MTIME = 1_700_000_000  # all mtimes equal
POOL_BYTES = 8 * MIB
# Share of each content kind in a file; tuned so zlib level 6 gives ~2.5x over the tree.
CONTENT_MIX = {"random": 0.09, "code": 0.20, "text": 0.43, "pattern": 0.28}
PACKAGES = 40


@dataclass(frozen=True)
class TreeSpec:
    """What to generate: counts and bytes at a given scale (1.0 = the performance.md tree)."""

    seed: int = 1
    scale: float = 1.0

    @property
    def files(self) -> int:
        return max(20, round(FULL_FILES * self.scale))

    @property
    def total_bytes(self) -> int:
        return max(self.files * 4096, round(FULL_BYTES * self.scale))

    @property
    def large_files(self) -> int:
        return max(1, round(FULL_LARGE * self.scale))

    @property
    def symlinks(self) -> int:
        return max(2, round(FULL_SYMLINKS * self.scale))


@dataclass(frozen=True)
class PlannedFile:
    path: str
    size: int
    executable: bool
    kind: str  # "so", "dat", "py", "h", "txt", "bin", ...


class _ContentPools:
    """Pools of low-entropy "machine code", word text and repeated patterns to slice from."""

    def __init__(self, rng: np.random.Generator) -> None:
        self.code = self._code(rng)
        self.text = self._text(rng)
        self.pattern = self._pattern(rng)

    @staticmethod
    def _code(rng: np.random.Generator) -> bytes:
        # Opcode-like stream: a skewed byte distribution plus frequent common instruction bytes.
        values = np.minimum(rng.geometric(0.09, POOL_BYTES), 255).astype(np.uint8)
        common = np.frombuffer(b"\x48\x89\xe5\x8b\x45\xfc\x00\x00\xc3\xe8\x0f\x1f", np.uint8)
        mask = rng.random(POOL_BYTES) < 0.35
        values[mask] = common[rng.integers(0, common.size, int(mask.sum()))]
        return values.tobytes()

    @staticmethod
    def _text(rng: np.random.Generator) -> bytes:
        letters = np.frombuffer(b"etaoinshrdlucmfwypvbgkqjxz", np.uint8)
        vocabulary = [
            bytes(letters[rng.integers(0, 26, int(rng.integers(2, 11)))]) for _ in range(3000)
        ]
        words = rng.zipf(1.3, POOL_BYTES // 5) % len(vocabulary)
        separators = [b" "] * 11 + [b"\n", b", ", b". ", b"_", b"(", b")"]
        picks = rng.integers(0, len(separators), words.size)
        out = bytearray()
        for word, separator in zip(words.tolist(), picks.tolist(), strict=True):
            out += vocabulary[word]
            out += separators[separator]
        return bytes(out[:POOL_BYTES])

    @staticmethod
    def _pattern(rng: np.random.Generator) -> bytes:
        out = bytearray()
        while len(out) < POOL_BYTES:
            unit = rng.bytes(int(rng.integers(4, 64)))
            out += unit * int(rng.integers(20, 400))
        return bytes(out[:POOL_BYTES])


def _small_sizes(rng: random.Random, count: int, budget: int) -> list[int]:
    """Truncated power-law sizes in [SMALL_MIN, SMALL_MAX], rescaled to sum to `budget`."""
    c = (SMALL_MIN / SMALL_MAX) ** PARETO_ALPHA
    raw = [SMALL_MIN * (1 - rng.random() * (1 - c)) ** (-1 / PARETO_ALPHA) for _ in range(count)]
    factor = budget / sum(raw)
    for _ in range(50):  # rescale until clamping stops moving the sum
        sizes = [min(SMALL_MAX, max(SMALL_MIN, round(x * factor))) for x in raw]
        total = sum(sizes)
        if total == budget:
            break
        factor *= budget / total
    remainder = budget - sum(sizes)
    order = sorted(range(count), key=lambda i: sizes[i])
    index = len(order) // 2
    while remainder != 0:  # spread the rounding rest over mid-sized files, one byte at a time
        i = order[index % len(order)]
        step = 1 if remainder > 0 else -1
        if SMALL_MIN <= sizes[i] + step <= SMALL_MAX:
            sizes[i] += step
            remainder -= step
        index += 1
    return sizes


def plan_tree(spec: TreeSpec) -> tuple[list[str], list[PlannedFile], list[tuple[str, str]]]:
    """(directories, files, symlinks as (link path, relative target)), all deterministic."""
    rng = random.Random(spec.seed)
    packages = [f"pkg{i:02d}" for i in range(max(2, round(PACKAGES * min(1.0, spec.scale * 4))))]
    large_count = spec.large_files
    large_scale = min(1.0, spec.scale)
    large_sizes = [
        round(rng.randint(LARGE_MIN, LARGE_MAX) * large_scale) for _ in range(large_count)
    ]
    small_count = spec.files - large_count
    small_sizes = _small_sizes(rng, small_count, spec.total_bytes - sum(large_sizes))

    directories: set[str] = set()
    files: list[PlannedFile] = []
    used: set[str] = set()

    def add(path: str, size: int, executable: bool, kind: str) -> None:
        base, dot, extension = path.rpartition(".")
        candidate, n = path, 1
        while candidate in used:
            candidate = f"{base}-{n}{dot}{extension}" if dot else f"{path}-{n}"
            n += 1
        used.add(candidate)
        parent = candidate.rpartition("/")[0]
        while parent:
            directories.add(parent)
            parent = parent.rpartition("/")[0]
        files.append(PlannedFile(candidate, size, executable, kind))

    for i, size in enumerate(large_sizes):
        package = rng.choice(packages)
        if i % 2 == 0:
            add(f"lib/lib{package}-big{i}.so", size, False, "so")
        else:
            add(f"share/{package}/data/table{i}.dat", size, False, "dat")

    executables = round(spec.files * EXECUTABLE_FRACTION)
    modules = ["core", "util", "io", "net", "math", "plot", "tests", "cli", "data", "ext"]
    for i, size in enumerate(small_sizes):
        package = rng.choice(packages)
        if i < executables:
            if i % 3 == 0:
                add(f"bin/{package}-tool{i}", size, True, "bin")
            else:
                add(f"libexec/{package}/helper{i}", size, True, "bin")
            continue
        roll = rng.random()
        if roll < 0.55:
            depth = rng.randint(0, 2)
            sub = "/".join(rng.choice(modules) for _ in range(depth))
            folder = f"lib/python3.11/site-packages/{package}" + (f"/{sub}" if sub else "")
            add(f"{folder}/mod{i}.py", size, False, "py")
        elif roll < 0.70:
            add(f"include/{package}/{rng.choice(modules)}/header{i}.h", size, False, "h")
        elif roll < 0.80:
            add(f"lib/lib{package}_{i}.so.1", size, False, "so")
        elif roll < 0.92:
            area = rng.choice(["doc", "man/man1", f"{package}/data"])
            add(f"share/{area}/{package}-{i}.txt", size, False, "txt")
        else:
            add(f"etc/{package}/conf{i}.conf", size, False, "txt")

    symlinks: list[tuple[str, str]] = []
    targets = [f for f in files if f.kind in ("so", "bin", "py")]
    for i in range(spec.symlinks):
        target = targets[rng.randrange(len(targets))].path
        # Even: a sibling alias (like libfoo.so -> libfoo.so.1); odd: a link from bin/.
        link = f"{target.rpartition('/')[0]}/alias{i}" if i % 2 == 0 else f"bin/link{i}"
        if link in used:
            continue
        used.add(link)
        relative = os.path.relpath(target, os.path.dirname(link) or ".")
        symlinks.append((link, relative))
    return sorted(directories), files, symlinks


def _content(plan: PlannedFile, rng: np.random.Generator, pools: _ContentPools) -> bytes:
    """Bytes of one file: a unique header, then segments of the four content kinds."""
    header = f"# {plan.path} generated by bench/tree.py\n".encode()
    out = bytearray(header[: plan.size])
    kinds = list(CONTENT_MIX)
    weights = list(CONTENT_MIX.values())
    while len(out) < plan.size:
        kind = kinds[int(rng.choice(len(kinds), p=weights))]
        length = min(plan.size - len(out), int(rng.integers(256, 256 * 1024)))
        if kind == "random":
            out += rng.bytes(length)
            continue
        pool = getattr(pools, kind)
        while length > 0:
            start = int(rng.integers(0, len(pool) - 1))
            piece = pool[start : start + length]
            out += piece
            length -= len(piece)
    return bytes(out)


def generate_tree(dest: Path, spec: TreeSpec) -> tuple[int, int]:
    """Write the tree below `dest` (which must not exist); return (files, bytes)."""
    directories, files, symlinks = plan_tree(spec)
    dest.mkdir(parents=True)
    rng = np.random.default_rng(spec.seed)
    pools = _ContentPools(rng)
    for directory in directories:
        (dest / directory).mkdir(parents=True, exist_ok=True)
    total = 0
    for plan in files:
        path = dest / plan.path
        path.write_bytes(_content(plan, rng, pools))
        path.chmod(0o755 if plan.executable else 0o644)
        total += plan.size
    for link, target in symlinks:
        (dest / link).symlink_to(target)
    for path in [dest, *(dest / d for d in directories), *(dest / f.path for f in files)]:
        os.utime(path, (MTIME, MTIME))
    for link, _ in symlinks:
        os.utime(dest / link, (MTIME, MTIME), follow_symlinks=False)
    return len(files), total


def write_tarball(tree: Path, tarball: Path) -> None:
    """Uncompressed POSIX pax tarball of `tree`: parents before children, uid/gid 0."""

    def owner_root(info: tarfile.TarInfo) -> tarfile.TarInfo:
        info.uid = info.gid = 0
        info.uname = info.gname = "root"
        return info

    with tarfile.open(tarball, "w", format=tarfile.PAX_FORMAT) as archive:
        for directory, subdirectories, names in os.walk(tree):
            subdirectories.sort()
            relative = os.path.relpath(directory, tree)
            if relative != ".":
                archive.add(directory, arcname=relative, recursive=False, filter=owner_root)
            for name in sorted(names):
                archive.add(
                    os.path.join(directory, name),
                    arcname=os.path.normpath(os.path.join(relative, name)),
                    recursive=False,
                    filter=owner_root,
                )


def describe_tree(tree: Path) -> dict[str, object]:
    """The figures performance.md asks of the tree, measured on disk (zlib level 6)."""
    sizes: list[int] = []
    compressed = executables = symlinks = depth = 0
    digests: set[bytes] = set()
    for path in sorted(tree.rglob("*")):
        depth = max(depth, len(path.relative_to(tree).parts) - 1)
        if path.is_symlink():
            symlinks += 1
            if not path.exists():
                raise SystemExit(f"dangling symlink {path}")
        elif path.is_file():
            data = path.read_bytes()
            sizes.append(len(data))
            compressed += len(zlib.compress(data, 6))
            digests.add(hashlib.sha1(data).digest())
            executables += bool(path.stat().st_mode & 0o111)
    small = sorted(s for s in sizes if s <= SMALL_MAX)
    total = sum(sizes)

    def share(low: int, high: int) -> float:
        return round(100 * sum(low <= s < high for s in small) / len(small), 1)

    return {
        "files": len(sizes),
        "bytes": total,
        "distinct_contents": len(digests),
        "zlib6_ratio": round(total / compressed, 2),
        "large_files": sum(s > SMALL_MAX for s in sizes),
        "small_median": small[len(small) // 2],
        "small_mean": round(sum(small) / len(small)),
        "pct_lt_1KiB": share(0, 1024),
        "pct_1_64KiB": share(1024, 65536),
        "pct_64KiB_1MiB": share(65536, MIB),
        "pct_1_2MiB": share(MIB, SMALL_MAX + 1),
        "executables": executables,
        "symlinks": symlinks,
        "max_dir_depth": depth,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("dest", type=Path)
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--scale", type=float, default=1.0, help="1.0 = 10,000 files, 1 GiB")
    parser.add_argument("--tarball", type=Path, help="also write the tree as a pax tarball")
    parser.add_argument("--describe", action="store_true", help="measure an existing tree")
    args = parser.parse_args()
    if args.describe:
        print(" ".join(f"{k}={v}" for k, v in describe_tree(args.dest).items()))
        return
    started = time.perf_counter()
    files, size = generate_tree(args.dest, TreeSpec(args.seed, args.scale))
    print(f"tree={args.dest} files={files} bytes={size} wall_s={time.perf_counter() - started:.1f}")
    if args.tarball:
        started = time.perf_counter()
        write_tarball(args.dest, args.tarball)
        print(
            f"tarball={args.tarball} bytes={args.tarball.stat().st_size} "
            f"wall_s={time.perf_counter() - started:.1f}"
        )


if __name__ == "__main__":
    main()
