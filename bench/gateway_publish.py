"""Publishing through the gateway: one small file, and the 10,000-file / 1 GiB tree, each
against a native publish of the same change; peak RSS of the gateway process.

Runs OpenBao and the Prefect server on the test ports (dev + `--offset`, holding that test
stack's lock) in a temporary directory, a local stratum-0, and the gateway as its own process
(`cvmfs-svc gateway`, as `./svc up` runs it). The publisher is `gateway.publisher` (the stock
publisher's HTTP exchange; catalogs and objects from the cvmfs/ writer on a capture).

    .venv/bin/python -m bench.gateway_publish [--repeat 5] [--tree DIR] [--scale 1.0] [--offset 100]

Small file: publish start (lease request) → the new revision in stratum-0's manifest; split
into the publisher's own work (catalogs, objects) and the gateway's (lease, payload, commit).
Tree: `bench.tree` generated into DIR (or reused), imported by the publisher, sent in 200 MiB
packs (the stock publisher's limit) and committed; the native figure is the same import
published by the writer directly.
"""

from __future__ import annotations

import argparse
import os
import re
import socket
import statistics
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import httpx

from bench.private_stack import private_data_dir, running
from cvmfs.keys import KeySet, generate_keyset, parse_gateway_key
from cvmfs.storage import LocalStorage, Storage
from cvmfs.tarball import import_directory
from cvmfs.writer import RepositoryWriter, create_repository
from gateway.publisher import Publisher, prepare, publisher_transaction, send_objects
from service.settings import Settings

COMPONENTS = ("openbao", "prefect")


def child_env(settings: Settings) -> dict[str, str]:
    """What the gateway process needs to rebuild these settings with `Settings.load()`."""
    token = settings.vault.token
    assert token is not None
    return {
        **{
            k: v
            for k, v in os.environ.items()
            if not k.startswith("CVMFS_SVC_") and k != "PREFECT_LOGGING_LEVEL"
        },
        "CVMFS_SVC_DATA_DIR": str(settings.absolute_data_dir),
        "CVMFS_SVC_VAULT__PORT": str(settings.vault.port),
        "CVMFS_SVC_VAULT__TOKEN": token.get_secret_value(),
        "CVMFS_SVC_PREFECT__PORT": str(settings.prefect.port),
        "CVMFS_SVC_GATEWAY__PORT": str(settings.gateway.port),
        "PREFECT_API_URL": settings.prefect.api_url,
        "PREFECT_LOGGING_LEVEL": "WARNING",
    }


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def cpu_seconds(pid: int) -> float:
    """User + system CPU of a process so far (/proc/<pid>/stat fields 14 and 15)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def peak_rss_mib(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def wait_for(url: str, timeout_s: float = 60) -> None:
    deadline = time.monotonic() + timeout_s
    while True:
        try:
            httpx.get(url, timeout=2).raise_for_status()
            return
        except httpx.HTTPError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.2)


@contextmanager
def bench_stack(
    offset: int, components: tuple[str, ...], name: str
) -> Iterator[tuple[Settings, Path]]:
    """`components` on the test ports + `offset` (bench/private_stack.py); Prefect's client in
    this process is pointed at them. Yields the settings (with OpenBao's root token) and the
    data directory."""
    with private_data_dir(offset, name) as (settings, data_dir):
        os.environ["PREFECT_API_URL"] = settings.prefect.api_url
        os.environ["PREFECT_HOME"] = str(data_dir / "prefect-home")
        os.environ["PREFECT_LOGGING_LEVEL"] = "WARNING"
        with running(settings, components) as settings:
            yield settings, data_dir


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeat", type=int, default=5)
    parser.add_argument("--tree", type=Path, help="the bench.tree directory (made if missing)")
    parser.add_argument("--scale", type=float, default=1.0, help="1.0 = 10,000 files, 1 GiB")
    parser.add_argument("--offset", type=int, default=100, help="test stack port offset")
    parser.add_argument(
        "--against",
        type=Path,
        help="another source tree (e.g. `git archive main | tar -x -C DIR`): its gateway runs "
        "beside this one and the small-file rounds alternate between the two",
    )
    args = parser.parse_args()

    with bench_stack(args.offset, COMPONENTS, "bench-gw") as (settings, data_dir):
        gateway: subprocess.Popen[bytes] | None = None
        against: subprocess.Popen[bytes] | None = None
        try:
            fqrn, keys = provision(settings)
            log = (data_dir / "gateway.log").open("wb")
            gateway = subprocess.Popen(
                [sys.executable, "-m", "service.cli", "gateway"],
                env=child_env(settings),
                stdout=log,
                stderr=subprocess.STDOUT,
            )
            api_url = f"http://127.0.0.1:{settings.gateway.port}/api/v1"
            wait_for(api_url)
            print(f"gateway pid={gateway.pid} rss_after_start_mib={peak_rss_mib(gateway.pid):.0f}")
            gateways = {"this tree": api_url}
            if args.against is not None:
                other = settings.model_copy(
                    update={"gateway": settings.gateway.model_copy(update={"port": free_port()})}
                )
                other_log = (data_dir / "gateway-against.log").open("wb")
                # `-m` puts the working directory first on sys.path: the other tree's code
                against = subprocess.Popen(
                    [sys.executable, "-m", "service.cli", "gateway"],
                    env=child_env(other),
                    cwd=args.against,
                    stdout=other_log,
                    stderr=subprocess.STDOUT,
                )
                gateways[str(args.against)] = f"http://127.0.0.1:{other.gateway.port}/api/v1"
                wait_for(gateways[str(args.against)])
            pids = {"this tree": gateway.pid}
            if against is not None:
                pids[str(args.against)] = against.pid
            cpu_before = {label: cpu_seconds(pid) for label, pid in pids.items()}
            small_file(settings, fqrn, keys, gateways, args.repeat)
            time.sleep(3)  # each run's bookkeeping after its reply ends within ~1 s
            for label, pid in pids.items():
                used = cpu_seconds(pid) - cpu_before[label]
                print(
                    f"gateway CPU [{label}] pid {pid}: {used:.2f} s for {args.repeat + 1} commits "
                    f"({used / (args.repeat + 1):.3f} s each, user + system, from /proc)"
                )
            print_phases(data_dir / "gateway.log")
            if against is not None:
                print_phases(data_dir / "gateway-against.log", f" ({args.against})")
            print(f"gateway peak_rss_mib={peak_rss_mib(gateway.pid):.0f} (after small files)")
            if args.tree is not None:
                tree(settings, fqrn, keys, api_url, args.tree, args.scale, data_dir)
                print(f"gateway peak_rss_mib={peak_rss_mib(gateway.pid):.0f} (after the tree)")
        finally:
            for process in (gateway, against):
                if process is not None:
                    process.terminate()
                    process.wait(timeout=30)


def provision(settings: Settings) -> tuple[str, KeySet]:
    # Imported here: Prefect reads PREFECT_API_URL / PREFECT_HOME, set by main() first.
    from prefect import get_client

    from deployments.rescue import ensure_rescue_automation
    from service.keystore import KeyOwner, KeyStore
    from service.repositories import RepositoryClaim, RepositoryRegistry
    from tasks.locks import create_publish_lock
    from tasks.storage import repository_storage

    fqrn = f"bench-gw-{uuid.uuid4().hex[:6]}.{settings.repository_domain}"
    subject = str(uuid.uuid4())
    registry = RepositoryRegistry.open(settings)
    registry.claim(
        RepositoryClaim(
            fqrn=fqrn,
            kind="personal",
            owner_subject=subject,
            owner_username="bench",
            bucket=f"bench-{uuid.uuid4().hex[:8]}",
        )
    )
    keys, _ = KeyStore.from_settings(settings.vault).store_if_absent(
        KeyOwner.personal(subject), fqrn, generate_keyset(fqrn, gateway_key_id=fqrn)
    )
    _writer, result = create_repository(repository_storage(settings, fqrn), fqrn, keys)
    registry.record_publish(fqrn, result.revision)
    registry.set_status(fqrn, "ready")
    registry.close()
    create_publish_lock(fqrn)
    # As every runner does at start: with it, each flow-run event is a write on the Prefect
    # server, which is what made the publish lock's acquisition collide (bench/lease_wait.py).
    with get_client(sync_client=True) as client:
        ensure_rescue_automation(client, settings)
    return fqrn, keys


def _publisher(api_url: str, keys: KeySet) -> Publisher:
    key_id, secret = parse_gateway_key(keys.gateway_key or "")
    return Publisher(api_url, key_id, secret)


@dataclass
class SmallFileFigures:
    total: list[float] = field(default_factory=list)
    own: list[float] = field(default_factory=list)
    gateway: list[float] = field(default_factory=list)
    lease: list[float] = field(default_factory=list)
    payload: list[float] = field(default_factory=list)
    commit: list[float] = field(default_factory=list)
    native: list[float] = field(default_factory=list)


def small_file(
    settings: Settings, fqrn: str, keys: KeySet, gateways: dict[str, str], repeat: int
) -> None:
    """`repeat` rounds per gateway; with two, A B then B A, ... on the same repository."""
    from tasks.storage import repository_storage

    storage = repository_storage(settings, fqrn)
    writer = RepositoryWriter.open(storage, fqrn, keys)
    figures = {label: SmallFileFigures() for label in gateways}
    labels = list(gateways)
    for attempt in range(repeat + 1):  # the first round warms up Prefect and the caches
        for label in labels if attempt % 2 == 0 else labels[::-1]:
            publisher = _publisher(gateways[label], keys)
            name = f"{attempt}-{labels.index(label)}"
            one_small_file(
                publisher, storage, writer, fqrn, name, figures[label] if attempt else None
            )

    def p50(values: list[float]) -> str:
        return f"{statistics.median(values):.3f}"

    for label, f in figures.items():
        print(
            f"small file x{repeat} [{label}]: publish-to-visible p50={p50(f.total)} s "
            f"(max {max(f.total):.3f}); publisher's own work p50={p50(f.own)} s; gateway calls "
            f"p50={p50(f.gateway)} s (lease {p50(f.lease)}, payload {p50(f.payload)}, commit "
            f"{p50(f.commit)}); native publish of the same change p50={p50(f.native)} s; "
            f"gateway overhead over native p50="
            f"{statistics.median(t - n for t, n in zip(f.total, f.native, strict=True)):.3f} s"
        )
    if len(labels) == 2:
        a, b = figures[labels[0]], figures[labels[1]]
        pairs = list(zip(a.commit, b.commit, strict=True))
        print(
            f"commit call, pair by pair [{labels[0]}] - [{labels[1]}]: median "
            f"{statistics.median(x - y for x, y in pairs):+.3f} s, ratio median "
            f"{statistics.median(x / y for x, y in pairs):.2f}"
        )


def one_small_file(
    publisher: Publisher,
    storage: Storage,
    writer: RepositoryWriter,
    fqrn: str,
    name: str,
    figures: SmallFileFigures | None,
) -> None:
    """One file through the gateway, then the same change published natively."""
    content = f"small file {name} {uuid.uuid4()}\n".encode()
    began = time.perf_counter()
    token = publisher.acquire_token(f"{fqrn}/small")
    leased = time.perf_counter()
    with publisher_transaction(storage, fqrn) as txn:
        txn.add_file(f"/small/file-{name}", content)
        prepared = prepare(txn)
    built = time.perf_counter()
    send_objects(publisher, token, prepared.capture)
    sent = time.perf_counter()
    reply = publisher.commit(token, prepared.old_root_hash, prepared.new_root_hash)
    committed = time.perf_counter()
    assert reply.get("status") == "ok", reply
    while writer.current_manifest().revision < reply["final_revision"]:
        time.sleep(0.01)
    visible = time.perf_counter()
    started_native = time.perf_counter()
    with writer.transaction() as direct:
        direct.add_file(f"/native/file-{name}", content)
        direct.publish()
    native_s = time.perf_counter() - started_native
    if figures is None:
        return
    figures.total.append(visible - began)
    figures.own.append(built - leased)
    figures.lease.append(leased - began)
    figures.payload.append(sent - built)
    figures.commit.append(committed - sent)
    figures.gateway.append((leased - began) + (sent - built) + (committed - sent))
    figures.native.append(native_s)


def print_phases(log: Path, label: str = "") -> None:
    """Medians of the phases the gateway logs per commit (flow and merge)."""
    text = log.read_text(errors="replace")
    for name in ("lock_s", "task_s", "report_s", "merge_s"):
        values = [float(v) for v in re.findall(rf"{name}=([0-9.]+)", text)]
        if values:
            print(
                f"  commit phase {name}{label}: p50={statistics.median(values):.3f} s "
                f"(n={len(values)})"
            )


def tree(
    settings: Settings,
    fqrn: str,
    keys: KeySet,
    api_url: str,
    tree_dir: Path,
    scale: float,
    data_dir: Path,
) -> None:
    from bench.tree import TreeSpec, generate_tree
    from tasks.storage import repository_storage

    publisher = _publisher(api_url, keys)
    if not tree_dir.exists():
        files, size = generate_tree(tree_dir, TreeSpec(1, scale))
        print(f"tree generated files={files} bytes={size}")
    storage = repository_storage(settings, fqrn)
    scratch = LocalStorage(data_dir / "publisher-scratch")
    began = time.perf_counter()
    token = publisher.acquire_token(f"{fqrn}/tree")
    with publisher_transaction(storage, fqrn, scratch) as txn:
        stats = import_directory(txn, tree_dir, "/tree")
        prepared = prepare(txn)
    built = time.perf_counter()
    packs = send_objects(publisher, token, prepared.capture)
    sent = time.perf_counter()
    reply = publisher.commit(token, prepared.old_root_hash, prepared.new_root_hash)
    committed = time.perf_counter()
    assert reply.get("status") == "ok", reply
    objects = len(prepared.capture.keys)
    stored = sum((scratch.root / key).stat().st_size for key in prepared.capture.keys)
    print(
        f"tree via gateway: {stats} objects={objects} stored_bytes={stored} packs={packs}; "
        f"publisher import+catalogs {built - began:.1f} s, payloads {sent - built:.1f} s "
        f"({stored / max(sent - built, 1e-9) / 2**20:.0f} MiB/s), commit {committed - sent:.1f} s, "
        f"total {committed - began:.1f} s"
    )
    native_dir = data_dir / "native-repo"
    native_writer, _ = create_repository(LocalStorage(native_dir), fqrn, keys)
    started = time.perf_counter()
    with native_writer.transaction() as txn:
        import_directory(txn, tree_dir, "/tree")
        txn.publish()
    print(
        f"tree native publish (same import, writer direct): {time.perf_counter() - started:.1f} s"
    )


if __name__ == "__main__":
    main()
