"""Push-to-visible time of an image in an unpacked repository; prints the figures.

An image of about 100 MiB in 3 layers is built with umoci, pushed with skopeo, then resolved and
unpacked by `images.unpacker` into a local repository; "visible" = the new manifest is in the
stratum-0 (a client would see it at its next TTL check). Then a second tag of the same image.

Usage: .venv/bin/python -m bench.unpack_push [--mib 100] [--work DIR]
Uses the dev registry (settings defaults) if it answers, else starts one in `<work>/registry`.
"""

from __future__ import annotations

import argparse
import os
import random
import resource
import shutil
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import httpx

from cvmfs.keys import generate_keyset
from cvmfs.storage import LocalStorage
from cvmfs.writer import create_repository
from images.registry import ImageReference, RegistryClient
from images.unpacker import UnpackOutcome, unpack_image
from service.settings import Settings
from stack.registry import Registry
from tests.test_images_support import OciLayout

FQRN = "unpacked.bench.example.org"
LAYERS = 3


def fill_layer(size_bytes: int, seed: int) -> Callable[[Path], None]:
    """Files of 4 KiB..1 MiB; half random (incompressible), half text-like (compressible)."""

    def change(rootfs: Path) -> None:
        rng = random.Random(seed)
        directory = rootfs / f"opt/layer{seed}"
        written = 0
        index = 0
        while written < size_bytes:
            sub = directory / f"d{index // 100:03d}"
            sub.mkdir(parents=True, exist_ok=True)
            size = min(rng.randint(4 << 10, 1 << 20), size_bytes - written)
            if index % 2:
                data = rng.randbytes(size)
            else:
                words = [f"word{rng.randint(0, 5000)}" for _ in range(size // 8 + 1)]
                data = " ".join(words).encode()[:size]
            (sub / f"f{index:05d}").write_bytes(data)
            written += size
            index += 1

    return change


def timed(what: str, action: Callable[[], object]) -> float:
    started = time.monotonic()
    action()
    took = time.monotonic() - started
    print(f"{what:<46} {took:7.2f} s", flush=True)
    return took


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--mib", type=int, default=100, help="image size (uncompressed)")
    parser.add_argument("--work", type=Path, default=None)
    args = parser.parse_args()
    work = args.work or Path(tempfile.mkdtemp(prefix="bench-unpack-"))
    work.mkdir(parents=True, exist_ok=True)
    settings = Settings().with_port_offset(0, work)
    registry_component = None
    try:
        httpx.get(f"{settings.registry.url}/v2/", timeout=2).raise_for_status()
        print(f"using the running registry at {settings.registry.url}")
    except httpx.HTTPError:
        registry_component = Registry(settings, work / "registry")
        registry_component.start()
        print(f"started a registry at {settings.registry.url} in {work / 'registry'}")
    host = settings.registry.url.split("://", 1)[1]
    repository = f"unpacked/bench-{os.getpid()}"
    try:
        layout = OciLayout(work / "layout")
        layout.new("img")
        layer_bytes = args.mib * (1 << 20) // LAYERS
        build = time.monotonic()
        for number in range(LAYERS):
            layout.layer("img", fill_layer(layer_bytes, number))
        print(f"{'build image (umoci, not timed below)':<46} {time.monotonic() - build:7.2f} s")

        storage = LocalStorage(work / "stratum0")
        writer, _ = create_repository(storage, FQRN, generate_keyset(FQRN))
        outcomes: list[UnpackOutcome] = []

        def resolve_and_unpack(tag: str) -> None:
            with RegistryClient(host) as client:
                image = client.resolve(ImageReference.parse(f"{host}/{repository}:{tag}"))
                outcomes.append(unpack_image(writer, client, image))

        cpu_before = resource.getrusage(resource.RUSAGE_SELF)
        push1 = timed("push 1.0 (skopeo)", lambda: layout.push("img", host, repository, "1.0"))
        unpack1 = timed("resolve + unpack + publish 1.0", lambda: resolve_and_unpack("1.0"))
        cpu_after = resource.getrusage(resource.RUSAGE_SELF)
        push2 = timed(
            "push 1.1, same image (skopeo)", lambda: layout.push("img", host, repository, "1.1")
        )
        unpack2 = timed("resolve + relink + publish 1.1", lambda: resolve_and_unpack("1.1"))
        again = timed(
            "same digest again (1.1): nothing published", lambda: resolve_and_unpack("1.1")
        )
        first, second, third = outcomes
        print(
            f"\nimage {args.mib} MiB in {LAYERS} layers, {first.files} files "
            f"({first.bytes / (1 << 20):.0f} MiB unpacked), actions "
            f"{first.action}/{second.action}/{third.action}, revisions "
            f"{first.revision}/{second.revision}/{third.revision}"
        )
        print(f"push-to-visible, first tag:  {push1 + unpack1:7.2f} s (unpack {unpack1:.2f} s)")
        print(f"push-to-visible, second tag: {push2 + unpack2:7.2f} s (relink {unpack2:.2f} s)")
        print(f"unchanged re-check:          {again:7.2f} s")
        cpu = (cpu_after.ru_utime - cpu_before.ru_utime) + (
            cpu_after.ru_stime - cpu_before.ru_stime
        )
        print(
            f"unpack CPU (this process, first tag): {cpu:.1f} s; peak RSS "
            f"{resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024:.0f} MiB; "
            f"load average {os.getloadavg()[0]:.1f}"
        )
    finally:
        if registry_component is not None:
            registry_component.stop()
        if args.work is None:
            shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
