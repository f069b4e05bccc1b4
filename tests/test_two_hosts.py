"""Two hosts, one service (the reduced CI version of bench/two_hosts.py).

Two network namespaces, each a host with its own address running a bridge, a runner (a Prefect
process worker on the work pool, `./svc worker`, as production runs them) and the API, against
the shared RabbitMQ, Ceph RGW (the stratum-0 is the S3 backend), OpenBao and PostgreSQL
(registry of repositories and the Prefect server) of the root namespace (tests/two_hosts.py says
how they reach them). Repositories are provisioned through the hosts; several clients upload;
midway every process of host a is SIGKILLed and its network cut. Then: every repository equals
its bucket, every revision is whole and none repeats the one before, every flow run completed,
host b carried on alone, and host a, restarted, takes work again.
"""

from __future__ import annotations

import shutil
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from service.settings import Settings
from stack.postgres import Postgres
from stack.prefect_server import PrefectServer
from tests.conftest import TEST_PORT_OFFSET
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
    rescued_by_automation,
    shared_ports,
)

# Ten minutes (the default) were used up by the rounds plus the session teardown at load 26.
pytestmark = [pytest.mark.stack, pytest.mark.slow, pytest.mark.timeout(900)]
REPOSITORIES = 6
CLIENTS = 3
# The stack's own Prefect server (SQLite) holds prefect.port; the hosts' one runs on PostgreSQL.
PREFECT_ON_POSTGRES_PORT_SHIFT = 2
# Short, so the test sees runs of the killed host rescued within its budget (defaults 30 / 90 s).
HEARTBEAT_S = 30  # Prefect refuses less
RESCUE_AFTER_S = 45


def _needs_root_tools() -> None:
    for tool in ("ip", "socat"):
        if shutil.which(tool) is None:
            pytest.fail(f"{tool} is missing: `./svc stack install --for-tests` installs it")


@pytest.fixture(scope="module")
def shared(vault: Settings, ceph: Settings, rabbitmq: Settings) -> Iterator[Settings]:
    """The shared services: the stack's, plus PostgreSQL and a Prefect server on it."""
    _needs_root_tools()
    settings = vault.model_copy(
        update={
            "postgres": vault.postgres.model_copy(update={"enabled": True}),
            "prefect": vault.prefect.model_copy(
                update={
                    "port": vault.prefect.port + PREFECT_ON_POSTGRES_PORT_SHIFT,
                    "heartbeat_s": HEARTBEAT_S,
                    "rescue_after_s": RESCUE_AFTER_S,
                    # The production layout: deployments in a work pool, a worker per host.
                    "work_pool": "cvmfs-two-hosts",
                }
            ),
            "stratum0": vault.stratum0.model_copy(
                update={"backend": "s3", "bucket": f"stratum0-2h-{uuid.uuid4().hex[:6]}"}
            ),
            "provisioning": vault.provisioning.model_copy(
                update={"trusted_legacy_user_ids": [vault.rabbitmq.username]}
            ),
        }
    )
    postgres = Postgres(settings, settings.absolute_data_dir / Postgres.name)
    prefect = PrefectServer(settings, settings.absolute_data_dir / "prefect-two-hosts")
    try:
        postgres.start()
        prefect.start()
        yield settings
    finally:
        prefect.stop()
        postgres.stop()


@pytest.fixture(scope="module")
def hosts(shared: Settings, tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Host]]:
    work = tmp_path_factory.mktemp("two-hosts")
    network = Network(TEST_PORT_OFFSET)
    forwarders = Forwarders(network.shared_ip, shared_ports(shared), work / "logs")
    started: dict[str, Host] = {}
    try:
        network.create()
        forwarders.start()
        for name in HOST_NAMES:
            settings = host_settings(shared, network, name, work / f"host-{name}")
            started[name] = Host(name, network, settings, work / "logs")
            started[name].start()
        for host in started.values():
            host.wait_ready()
        yield started
    finally:
        for host in started.values():
            host.stop()
        forwarders.stop()
        network.remove()


def test_two_hosts_converge_when_one_is_killed_and_it_rejoins(
    shared: Settings, hosts: dict[str, Host], tmp_path: Path
) -> None:
    a, b = hosts["a"], hosts["b"]
    tag = f"h{uuid.uuid4().hex[:4]}"
    repos = provision_repositories(shared, REPOSITORIES, tag)
    repositories = Repositories(shared, tmp_path / "keys")
    expected: dict[str, dict[str, bytes]] = {}

    both = load_and_measure(
        shared, repositories, repos, expected, make_uploads(repos, 4, "both", 1), CLIENTS,
        "two hosts", 300,
    )  # fmt: skip
    print(both.line())

    killed: list[tuple[int, int]] = []

    def kill_host_a() -> None:  # once half the uploads are in, while a flow run executes on a
        killed.append(a.kill_while_running())

    survivor = load_and_measure(
        shared, repositories, repos, expected, make_uploads(repos, 8, "kill", 2), CLIENTS,
        "host a killed midway", 420, at_half=kill_host_a,
    )  # fmt: skip
    print(survivor.line())
    assert killed, "host a was not killed"
    in_progress, processes = killed[0]
    print(f"host a killed: {processes} processes, {in_progress} flow runs in progress")
    assert processes > len(a.commands)  # flow-run children too
    assert in_progress > 0
    assert all(process.poll() is None for process in b.processes.values()), "host b died"

    a.network.restore("a")
    a.start()
    a.wait_ready()
    rejoined = load_and_measure(
        shared, repositories, repos, expected, make_uploads(repos, 4, "rejoin", 3), CLIENTS,
        "host a rejoined", 300,
    )  # fmt: skip
    print(rejoined.line())
    assert a.flow_runs_finished(a.starts) > 0, "the restarted host a ran no flow run"

    problems: list[str] = []
    for repo in repos:
        checked, found = repositories.revisions_are_whole_and_distinct(repo.fqrn)
        assert checked >= 2
        problems += found
    assert problems == []
    runs = flow_runs(shared, ["sync", "provision"])
    unfinished = [
        (run["name"], (run.get("state") or {}).get("type"))
        for run in runs
        if (run.get("state") or {}).get("type") != "COMPLETED"
    ]
    assert unfinished == []
    rescued = rescued_by_automation(shared, runs)
    again = sum(1 for run in runs if int(str(run.get("run_count") or 0)) > 1)
    print(f"flow runs: {len(runs)} sync/provision, {rescued} rescued, {again} ran twice")
    assert rescued >= 1  # what host a was executing was scheduled again, and ran elsewhere
