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
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

import httpx

from cvmfs.keys import KeySet, generate_keyset, parse_gateway_key
from cvmfs.storage import LocalStorage
from cvmfs.tarball import import_directory
from cvmfs.writer import RepositoryWriter, create_repository
from gateway.publisher import Publisher, prepare, publisher_transaction, send_objects
from service.settings import Settings
from stack.locks import exclusive, lock_path_for_test_stack
from stack.manager import Stack
from stack.openbao import root_token

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


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeat", type=int, default=5)
    parser.add_argument("--tree", type=Path, help="the bench.tree directory (made if missing)")
    parser.add_argument("--scale", type=float, default=1.0, help="1.0 = 10,000 files, 1 GiB")
    parser.add_argument("--offset", type=int, default=100, help="test stack port offset")
    args = parser.parse_args()

    with exclusive(lock_path_for_test_stack(args.offset), wait_s=900, what="The test stack"):
        data_dir = Path(tempfile.mkdtemp(prefix="cvmfs-svc-test-bench-gw-"))
        data_dir.chmod(0o755)
        base = Settings.load().with_port_offset(args.offset, data_dir)
        settings = base.model_copy(
            update={
                "vault": base.vault.model_copy(update={"mode": "dev", "token": None}),
                "prefect": base.prefect.model_copy(update={"database_url": None}),
            }
        )
        stack = Stack(settings)
        os.environ["PREFECT_API_URL"] = settings.prefect.api_url
        os.environ["PREFECT_HOME"] = str(data_dir / "prefect-home")
        os.environ["PREFECT_LOGGING_LEVEL"] = "WARNING"
        gateway: subprocess.Popen[bytes] | None = None
        try:
            stack.up(COMPONENTS)
            vault = settings.vault.model_copy(update={"token": root_token(settings)})
            settings = settings.model_copy(update={"vault": vault})
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
            small_file(settings, fqrn, keys, api_url, args.repeat)
            print_phases(data_dir / "gateway.log")
            print(f"gateway peak_rss_mib={peak_rss_mib(gateway.pid):.0f} (after small files)")
            if args.tree is not None:
                tree(settings, fqrn, keys, api_url, args.tree, args.scale, data_dir)
                print(f"gateway peak_rss_mib={peak_rss_mib(gateway.pid):.0f} (after the tree)")
        finally:
            if gateway is not None:
                gateway.terminate()
                gateway.wait(timeout=30)
            stack.down(COMPONENTS)
            shutil.rmtree(data_dir, ignore_errors=True)


def provision(settings: Settings) -> tuple[str, KeySet]:
    # Imported here: Prefect reads PREFECT_API_URL / PREFECT_HOME, set by main() first.
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
    return fqrn, keys


def _publisher(api_url: str, keys: KeySet) -> Publisher:
    key_id, secret = parse_gateway_key(keys.gateway_key or "")
    return Publisher(api_url, key_id, secret)


def small_file(settings: Settings, fqrn: str, keys: KeySet, api_url: str, repeat: int) -> None:
    from tasks.storage import repository_storage

    publisher = _publisher(api_url, keys)
    storage = repository_storage(settings, fqrn)
    writer = RepositoryWriter.open(storage, fqrn, keys)
    total: list[float] = []
    own: list[float] = []
    gateway_s: list[float] = []
    lease_s: list[float] = []
    payload_s: list[float] = []
    commit_s: list[float] = []
    native: list[float] = []
    for attempt in range(repeat + 1):  # the first round warms up Prefect and the caches
        content = f"small file {attempt} {uuid.uuid4()}\n".encode()
        began = time.perf_counter()
        token = publisher.acquire_token(f"{fqrn}/small")
        leased = time.perf_counter()
        with publisher_transaction(storage, fqrn) as txn:
            txn.add_file(f"/small/file-{attempt}", content)
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
            direct.add_file(f"/native/file-{attempt}", content)
            direct.publish()
        native_s = time.perf_counter() - started_native
        if attempt == 0:
            continue
        total.append(visible - began)
        own.append(built - leased)
        lease_s.append(leased - began)
        payload_s.append(sent - built)
        commit_s.append(committed - sent)
        gateway_s.append((leased - began) + (sent - built) + (committed - sent))
        native.append(native_s)

    def p50(values: list[float]) -> str:
        return f"{statistics.median(values):.3f}"

    print(
        f"small file x{repeat}: publish-to-visible p50={p50(total)} s (max {max(total):.3f}); "
        f"publisher's own work p50={p50(own)} s; gateway calls p50={p50(gateway_s)} s "
        f"(lease {p50(lease_s)}, payload {p50(payload_s)}, commit {p50(commit_s)}); "
        f"native publish of the same change p50={p50(native)} s; "
        f"gateway overhead over native p50="
        f"{statistics.median(t - n for t, n in zip(total, native, strict=True)):.3f} s"
    )


def print_phases(log: Path) -> None:
    """Medians of the phases the gateway logs per commit (flow and merge)."""
    text = log.read_text(errors="replace")
    for name in ("lock_s", "task_s", "report_s", "merge_s"):
        values = [float(v) for v in re.findall(rf"{name}=([0-9.]+)", text)]
        if values:
            print(f"  commit phase {name}: p50={statistics.median(values):.3f} s (n={len(values)})")


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
