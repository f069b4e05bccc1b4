"""Speed of the xor32 chunker alone on 100 MiB in memory: random and all-zero data.

Usage: .venv/bin/python -m bench.chunker [--mib N] [--repeat K]
"""

from __future__ import annotations

import argparse
import io
import random
import time

from cvmfs.chunking import iter_chunks

MIB = 1024 * 1024


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--mib", type=int, default=100)
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args()
    size = args.mib * MIB
    samples = {"random": random.Random(1).randbytes(size), "zeros": bytes(size)}
    for name, data in samples.items():
        for _ in range(args.repeat):
            started = time.perf_counter()
            chunks = sum(1 for _ in iter_chunks(io.BytesIO(data)))
            wall = time.perf_counter() - started
            print(
                f"data={name} mib={args.mib} chunks={chunks} wall_s={wall:.3f} "
                f"s_per_100mib={wall * 100 / args.mib:.3f}"
            )


if __name__ == "__main__":
    main()
