"""Deflate implementations side by side on the benchmark tree: CPU per MB and ratio per level.

Usage: .venv/bin/python -m bench.codecs [TREE]   (default: the 1,000-file tree of --scale 0.1)
Needs `pip install zlib-ng deflate` besides the project's `isal` (not project dependencies:
they were measured and not chosen, see bench/README.md "Fast mode"). CPU is thread CPU time,
so the figures hold on a loaded machine; every output is checked to inflate with stdlib zlib.
"""

from __future__ import annotations

import sys
import time
import zlib
from collections.abc import Callable
from pathlib import Path

from isal import isal_zlib

DEFAULT_TREE = Path("/tmp/wave2-speed-bench/tree-seed1-scale0.1")


def candidates() -> list[tuple[str, int, Callable[[bytes], bytes]]]:
    import deflate
    from zlib_ng import zlib_ng

    found: list[tuple[str, int, Callable[[bytes], bytes]]] = []
    for level in (6, 1):
        found.append(("zlib", level, lambda d, lv=level: zlib.compress(d, lv)))
    for level in (1, 2, 3):
        found.append(("isal", level, lambda d, lv=level: isal_zlib.compress(d, lv)))
    for level in (1, 3, 6):
        found.append(("zlib-ng", level, lambda d, lv=level: zlib_ng.compress(d, lv)))
    for level in (1, 3, 6):
        found.append(("libdeflate", level, lambda d, lv=level: deflate.zlib_compress(d, lv)))
    return found


def main() -> None:
    tree = Path(sys.argv[1]) if len(sys.argv) > 1 else DEFAULT_TREE
    files = sorted(p for p in tree.rglob("*") if p.is_file() and not p.is_symlink())
    datas = [p.read_bytes() for p in files]
    total = sum(map(len, datas))
    for name, level, compress in candidates():
        started = time.thread_time()
        stored = sum(len(compress(d)) for d in datas)
        cpu = time.thread_time() - started
        assert all(zlib.decompress(compress(d)) == d for d in datas[:50])
        print(
            f"{name:10} level {level}: {total / 1e6 / cpu:6.1f} MB/s per core, "
            f"ratio {total / stored:.2f}x, {cpu / total * (1 << 30):5.1f} CPU s per GiB"
        )


if __name__ == "__main__":
    main()
