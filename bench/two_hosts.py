"""Two hosts, one service: throughput with one host and with two, and what happens when one
host is SIGKILLed and cut off midway (tests/test_two_hosts.py is the reduced CI version).

Starts a private stack (RabbitMQ, Ceph, OpenBao in dev mode, PostgreSQL, Prefect on PostgreSQL)
at the dev ports + --port-offset under /tmp, two network namespaces as hosts (tests/two_hosts.py:
bridge 10.213.<n>.1, hosts .11/.12, socat forwarders to the stack), each running a bridge, a
runner and the API; provisions --repos repositories through them; then, from --clients upload
threads, rounds of --uploads files per repository:

1. warm-up (not counted: RGW picks up a new topic's queue on a 30 s scan),
2. one host (host b stopped), 3. two hosts, 4. two hosts with host a SIGKILLed and cut midway,
5. host a restarted (rejoins by itself).

Prints per round: uploads, seconds until every repository equals its bucket (read back over
HTTP with the verifying reader), uploads/s visible, publishes and publishes/s; then the checks
(fsck of every revision, no revision repeating the one before, every flow run completed, runs
rescued after the kill). Run as root:

    .venv/bin/python -m bench.two_hosts --repos 20 --uploads 10 --clients 4 [--runner worker]
"""

from __future__ import annotations

import argparse
import os
import shutil
import tempfile
import time
import uuid
from pathlib import Path

from service.settings import Settings
from stack.manager import Stack
from stack.openbao import root_token
from tests.two_hosts import (
    HOST_NAMES,
    Forwarders,
    Host,
    Network,
    Repositories,
    flow_runs,
    host_settings,
    load_and_measure,
    make_uploads,
    provision_repositories,
    shared_ports,
)

COMPONENTS = ["postgres", "rabbitmq", "ceph", "openbao", "prefect"]


def bench_settings(offset: int, data_dir: Path, work_pool: str | None = None) -> Settings:
    base = Settings().with_port_offset(offset, data_dir)
    return base.model_copy(
        update={
            "vault": base.vault.model_copy(update={"mode": "dev", "token": None}),
            "postgres": base.postgres.model_copy(update={"enabled": True}),
            "prefect": base.prefect.model_copy(
                update={"database_url": None, "work_pool": work_pool}
            ),
            "stratum0": base.stratum0.model_copy(
                update={"backend": "s3", "bucket": "stratum0-bench"}
            ),
            "provisioning": base.provisioning.model_copy(
                # The clients upload as the demo S3 user into buckets of many identities, as
                # the test suite's settings do: with the owner check on, every bucket was
                # `foreign`, never wired, and no upload reached RabbitMQ (the first runs).
                update={
                    "trusted_legacy_user_ids": [base.rabbitmq.username],
                    "require_bucket_owner": False,
                }
            ),
        }
    )


def cpu_line(
    hosts: dict[str, Host], before: dict[str, tuple[int, dict[str, float]]], publishes: int
) -> str:
    """CPU seconds the round cost on the hosts whose processes lived through it, by process;
    the runner's reaped children are its finished flow runs."""
    used: dict[str, float] = {}
    skipped = []
    for name, host in hosts.items():
        starts, start_cpu = before[name]
        if host.starts != starts or not host.processes:
            skipped.append(name)
            continue
        for key, value in host.cpu_s().items():
            used[key] = used.get(key, 0.0) + value - start_cpu.get(key, 0.0)
    runs_key = next((k for k in used if k.endswith(" children") and "bridge" not in k), None)
    per_publish = (
        f"; flow-run CPU per publish {used[runs_key] / publishes:.1f} s"
        if runs_key and publishes
        else ""
    )
    parts = ", ".join(f"{k} {v:.1f}" for k, v in sorted(used.items()) if v >= 0.05)
    note = f" (not counted: host {', '.join(skipped)}, stopped or killed)" if skipped else ""
    return f"CPU s: {parts or 'none'}{per_publish}{note}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--repos", type=int, default=20)
    parser.add_argument("--uploads", type=int, default=10, help="files per repository per round")
    parser.add_argument("--clients", type=int, default=4)
    parser.add_argument("--port-offset", type=int, default=770)
    parser.add_argument("--timeout", type=float, default=900.0, help="per round, seconds")
    parser.add_argument("--keep", action="store_true", help="leave the stack and logs")
    parser.add_argument(
        "--runner",
        choices=["serve", "worker"],
        default="serve",
        help="each host's runner: serve-deployments, or ./svc worker on a work pool",
    )
    args = parser.parse_args()

    data_dir = Path(tempfile.mkdtemp(prefix=f"cvmfs-svc-two-hosts-{args.port_offset}-"))
    data_dir.chmod(0o755)
    settings = bench_settings(
        args.port_offset, data_dir, "cvmfs-bench" if args.runner == "worker" else None
    )
    stack = Stack(settings)
    network = Network(args.port_offset)
    forwarders = Forwarders(network.shared_ip, shared_ports(settings), data_dir / "logs")
    hosts: dict[str, Host] = {}
    try:
        began = time.monotonic()
        stack.up(COMPONENTS)
        settings = settings.model_copy(
            update={"vault": settings.vault.model_copy(update={"token": root_token(settings)})}
        )
        print(f"stack up in {time.monotonic() - began:.0f} s ({data_dir})", flush=True)
        network.create()
        forwarders.start()
        for name in HOST_NAMES:
            hosts[name] = Host(
                name,
                network,
                host_settings(settings, network, name, data_dir / f"host-{name}"),
                data_dir / "logs",
            )
            hosts[name].start()
        for host in hosts.values():
            host.wait_ready()
        a, b = hosts["a"], hosts["b"]
        began = time.monotonic()
        repos = provision_repositories(settings, args.repos, f"b{uuid.uuid4().hex[:4]}")
        print(f"{args.repos} repositories provisioned in {time.monotonic() - began:.1f} s")
        repositories = Repositories(settings, data_dir / "keys")
        expected: dict[str, dict[str, bytes]] = {}

        def round_(label: str, phase: str, seed: int, **kwargs: object) -> None:
            uploads = make_uploads(repos, args.uploads, phase, seed)
            before = {name: (host.starts, host.cpu_s()) for name, host in hosts.items()}
            load = os.getloadavg()[0]
            figures = load_and_measure(
                settings, repositories, repos, expected, uploads, args.clients, label,
                args.timeout, **kwargs,  # type: ignore[arg-type]
            )  # fmt: skip
            print(f"{figures.line()} (load {load:.1f} -> {os.getloadavg()[0]:.1f})", flush=True)
            print("  " + cpu_line(hosts, before, figures.publishes), flush=True)

        warm = make_uploads(repos, 1, "warm", 0)
        load_and_measure(
            settings, repositories, repos, expected, warm, args.clients, "warm-up", args.timeout
        )
        b.stop()
        round_("one host", "one", 1)
        b.start()
        b.wait_ready()
        round_("two hosts", "two", 2)

        def kill_host_a() -> None:
            in_progress, killed = a.kill_while_running()
            print(
                f"  host a: {killed} processes SIGKILLed with {in_progress} flow runs in "
                "progress, network cut",
                flush=True,
            )

        round_("two hosts, host a killed midway", "kill", 3, at_half=kill_host_a)
        network.restore("a")
        a.start()
        a.wait_ready()
        round_("host a rejoined", "rejoin", 4)
        print(f"  host a ran {a.flow_runs_finished(a.starts)} flow runs after its restart")

        problems: list[str] = []
        revisions = 0
        for repo in repos:
            checked, found = repositories.revisions_are_whole_and_distinct(repo.fqrn)
            revisions += checked
            problems += found
        runs = flow_runs(settings, ["sync", "provision"])
        unfinished = [r for r in runs if (r.get("state") or {}).get("type") != "COMPLETED"]
        rescued = sum(1 for r in runs if int(str(r.get("run_count") or 0)) > 1)
        print(
            f"checks: {revisions} revisions fsck'd, problems: {problems or 'none'}; "
            f"{len(runs)} sync/provision runs, {len(unfinished)} not completed, "
            f"{rescued} ran more than once"
        )
        for run in unfinished:
            state = run.get("state") or {}
            assert isinstance(state, dict)
            print(
                f"  not completed: {run.get('name')} {run.get('id')} {state.get('type')} "
                f"({state.get('name')}): {str(state.get('message') or '')[:300]}"
            )
    finally:
        for host in hosts.values():
            host.stop()
        forwarders.stop()
        network.remove()
        if not args.keep:
            stack.down()
            shutil.rmtree(data_dir, ignore_errors=True)


if __name__ == "__main__":
    main()
