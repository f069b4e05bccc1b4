"""Cost of deciding a sync plan with the bucket rules, without S3 or a repository.

Every sync decides its batch together with every key the registry knows (published or refused),
so the planner's time grows with the repository. This measures `plan_changes` on N published
keys (a deep install-prefix layout with a few tarballs, collisions and odd names) for a batch of
10 new keys, and for a reconcile of all of them.

Usage: .venv/bin/python -m bench.plan_rules [--keys N] [--repeat K]
"""

from __future__ import annotations

import argparse
import random
import time

from buckets.bucket_rules import target_of
from buckets.bucket_sync import BucketObject, PlanInputs, plan_changes
from service.repositories import FileProvenance

FQRN = "bench.example.org"


def bucket_keys(count: int, rng: random.Random) -> list[str]:
    dirs = ["bin", "lib", "share/doc", "lib/python3.11/site-packages", "include", "etc"]
    keys = [f"cvmfs/sw/v{n % 7}/{rng.choice(dirs)}/pkg{n % 97}/file-{n}.dat" for n in range(count)]
    keys += [f"cvmfs/tarballs/t{n}.cvmfs.tar.gz" for n in range(20)]
    keys += ["cvmfs/sw/v1/bin", "cvmfs/caf\u00e9/x", "cvmfs/cafe\u0301/y"]  # two collisions
    return keys


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--keys", type=int, default=25_000)
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args()
    rng = random.Random(1)
    keys = bucket_keys(args.keys, rng)
    published = {}
    for key in keys:
        path = target_of(key)[0]
        published[path] = FileProvenance(
            path=path, s3_key=key, etag="e", version_id=None, size_bytes=10, revision=2
        )
    objects = {k: BucketObject(key=k, etag="e", size=10, last_modified=0) for k in keys}
    batch = {f"cvmfs/new/{n}.txt": BucketObject(f"cvmfs/new/{n}.txt", "n", 5, 0) for n in range(10)}
    for name, truth in (("batch of 10", batch), (f"reconcile of {len(keys)}", objects)):
        for _ in range(args.repeat):
            inputs = PlanInputs(fqrn=FQRN, truth=dict(truth), published=dict(published))
            started = time.perf_counter()
            plan = plan_changes(inputs)
            wall = time.perf_counter() - started
            print(
                f"case={name!r} known_keys={len(keys)} wall_s={wall:.3f} "
                f"changes={len(plan.changes)} refused={len(plan.refused)} "
                f"unchanged={plan.unchanged}"
            )


if __name__ == "__main__":
    main()
