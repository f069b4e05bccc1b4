"""The local stack as a whole, on the test ports: every component healthy, idempotent `up`,
loopback-only listeners, `stack status` on the CLI, and a `down` that leaves nothing behind.
"""

from __future__ import annotations

import ipaddress
import re
import signal
import stat
import subprocess
import sys
import threading
import time
import urllib.parse
from pathlib import Path

import hvac
import pytest
import yaml

from service.settings import Settings
from stack import packages, probe, procs
from stack.errors import StartError
from stack.idp_users import DEMO_USERS
from stack.manager import Stack, component_classes
from stack.openbao import OpenBao, root_token, secrets_file

pytestmark = [pytest.mark.stack, pytest.mark.slow]

ALL = [cls.name for cls in component_classes()]
CLI = str(Path(sys.executable).parent / "cvmfs-svc")
# A cold provision + first upload through RGW (its 30 s topic scan) on a loaded machine.
DEMO_WAIT_S = 300.0


@pytest.fixture(scope="module")
def stack(
    rabbitmq: Settings,
    ceph: Settings,
    vault: Settings,
    registry: Settings,
    prefect_server: Settings,
    stratum0_http: Settings,
    idp: Settings,
    stack_settings: Settings,
) -> Stack:
    """The whole test stack, started through the session fixtures."""
    return Stack(stack_settings)


def expected_ports(settings: Settings) -> dict[str, list[int]]:
    mq, ceph = settings.rabbitmq, settings.ceph
    return {
        "rabbitmq": [mq.port, mq.management_port, mq.dist_port],
        "ceph": [ceph.mon_port_v2, ceph.mon_port_v1, ceph.rgw_port],
        "openbao": [settings.vault.port, settings.vault.cluster_port],
        "registry": [settings.registry.port],
        "prefect": [settings.prefect.port],
        "stratum0-http": [settings.stratum0.http_port],
        "idp": [settings.idp.port],
    }


def stack_pids(stack: Stack) -> dict[str, list[int]]:
    return {c.name: stack.recorded_pids(c) for c in stack.components}


def test_the_stack_has_every_component_in_start_order() -> None:
    assert ALL == ["rabbitmq", "ceph", "openbao", "registry", "prefect", "stratum0-http", "idp"]


@pytest.mark.parametrize("name", ALL)
def test_component_runs_healthy_with_recorded_pids(stack: Stack, name: str) -> None:
    (health,) = stack.status([name])
    assert health.healthy, health.detail
    (component,) = stack.select([name])
    pids = stack.recorded_pids(component)
    assert pids, f"{name} runs but recorded no pid under {stack.component_dir(component)}"
    assert all(procs.is_alive(pid) for pid in pids)
    assert stack.rss_bytes(component) > 0


def test_status_reports_every_component_with_its_url(stack: Stack) -> None:
    s = stack.settings
    urls = {h.name: h.url for h in stack.status()}
    assert list(urls) == ALL
    assert urls["rabbitmq"] == f"http://127.0.0.1:{s.rabbitmq.management_port}"
    assert urls["openbao"] == f"http://127.0.0.1:{s.vault.port}"
    assert urls["registry"] == f"http://127.0.0.1:{s.registry.port}"
    assert urls["prefect"] == f"http://127.0.0.1:{s.prefect.port}"
    assert urls["stratum0-http"] == f"http://127.0.0.1:{s.stratum0.http_port}/cvmfs"
    assert urls["idp"] == f"http://127.0.0.1:{s.idp.port}/"


def test_up_again_is_a_no_op(stack: Stack) -> None:
    before = stack_pids(stack)
    healths = stack.up()
    assert all(h.healthy for h in healths), [h for h in healths if not h.healthy]
    assert stack_pids(stack) == before


def test_every_listener_of_the_stack_is_on_loopback(stack: Stack) -> None:
    ours = {pid for pids in stack_pids(stack).values() for pid in pids}
    listeners: dict[int, set[int]] = {}  # port -> pids of the stack listening on it
    out = subprocess.run(["ss", "-ltnpH"], capture_output=True, text=True, check=True).stdout
    for line in out.splitlines():
        local = line.split()[3]
        host, _, port_text = local.rpartition(":")
        pids = {int(p) for p in re.findall(r"pid=(\d+)", line)} & ours
        if not pids:
            continue
        address = ipaddress.ip_address(host.strip("[]").split("%")[0])
        assert address.is_loopback, f"stack process {pids} listens on {local}: {line}"
        listeners.setdefault(int(port_text), set()).update(pids)
    for name, ports in expected_ports(stack.settings).items():
        for port in ports:
            assert port in listeners, f"{name}: nothing of the stack listens on {port}"


def test_cli_stack_status_reports_the_test_stack(stack: Stack, stack_env: dict[str, str]) -> None:
    assert Settings.model_validate(stack.settings.model_dump()) == stack.settings
    result = subprocess.run(
        [CLI, "stack", "status"], env=stack_env, capture_output=True, text=True, timeout=120
    )
    assert result.returncode == 0, result.stdout + result.stderr
    lines = result.stdout.splitlines()
    for health in stack.status():
        assert any(line.split()[:3] == [health.name, "healthy", health.url] for line in lines), (
            result.stdout
        )


def test_cli_stack_status_fails_for_a_stack_that_does_not_run(
    tmp_path: Path, stack_env: dict[str, str]
) -> None:
    # Same ports (answering), another data dir: nothing of *that* stack runs.
    env = {**stack_env, "CVMFS_SVC_DATA_DIR": str(tmp_path / "nothing")}
    result = subprocess.run(
        [CLI, "stack", "status", "registry", "prefect"],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 1, result.stdout + result.stderr
    assert "UNHEALTHY" in result.stdout
    # What to do next, for an operator who just saw it (before: only the table).
    assert "next: `./svc stack up registry prefect` starts what is not running" in result.stdout
    assert f"read its log under {tmp_path / 'nothing'}/<component>/" in result.stdout


def _start_up(stack_env: dict[str, str]) -> subprocess.Popen[str]:
    """`cvmfs-svc up` as a user starts it, its output (stdout and stderr) line by line."""
    return subprocess.Popen(
        [CLI, "up"],
        env={**stack_env, "PYTHONUNBUFFERED": "1"},
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )


def test_cli_up_prints_the_endpoints_and_ctrl_c_leaves_the_stack_running(
    stack: Stack, stack_env: dict[str, str]
) -> None:
    before = stack_pids(stack)
    proc = _start_up(stack_env)
    assert proc.stdout is not None
    lines: list[str] = []
    try:
        for line in proc.stdout:
            lines.append(line)
            if line.startswith("service: running"):
                break
    finally:
        proc.send_signal(signal.SIGINT)
        rest, _ = proc.communicate(timeout=60)
    output = "".join(lines) + rest
    assert proc.returncode == 0, output
    s = stack.settings
    assert f"Prefect UI      http://127.0.0.1:{s.prefect.port}" in output
    assert "  operate: ./svc dead-letters, ./svc sync|reconcile" in output
    assert f"S3 endpoint     {s.ceph.s3_endpoint}" in output
    assert s.ceph.demo_access_key in output
    assert s.ceph.demo_secret_key.get_secret_value() in output
    assert f"OCI registry    {s.registry.url}" in output
    assert f"runner :{s.metrics.runner_port})" in output
    assert f"Dashboard       http://127.0.0.1:{s.api.port}/dashboard/" in output
    assert f"OIDC issuer     http://127.0.0.1:{s.idp.port}/" in output
    for user in DEMO_USERS:
        assert user.password.get_secret_value() in output
        assert f"S3 access key {user.s3_access_key}" in output
        assert user.s3_secret_key.get_secret_value() in output
    assert f"stratum-0       http://127.0.0.1:{s.stratum0.http_port}/cvmfs/" in output
    assert "service: stopped" in output
    assert all(h.healthy for h in stack.status())
    assert stack_pids(stack) == before


def test_cli_up_runs_the_demo_through_the_whole_path(
    stack: Stack, stack_env: dict[str, str]
) -> None:
    """The embedded default job: `up` provisions the demo repository through the served
    deployment (which registers a few seconds after the processes start), uploads a file and
    reports the revision that serves it."""
    proc = _start_up(stack_env)
    assert proc.stdout is not None
    lines: list[str] = []
    outcome: list[str] = []

    def read() -> None:
        assert proc.stdout is not None
        for line in proc.stdout:
            lines.append(line)
            if line.startswith(("demo: demo-", "demo: failed")):
                outcome.append(line)

    reader = threading.Thread(target=read, daemon=True)
    reader.start()
    deadline = time.monotonic() + DEMO_WAIT_S
    try:
        while not outcome and time.monotonic() < deadline and proc.poll() is None:
            time.sleep(1.0)
    finally:
        proc.send_signal(signal.SIGINT)
        proc.wait(timeout=60)
        reader.join(timeout=10)
    output = "".join(lines)
    assert outcome, f"no demo outcome in {DEMO_WAIT_S:.0f} s:\n{output[-4000:]}"
    assert re.match(r"demo: demo-\S+ revision \d+ serves /hello/README.txt", outcome[0]), output
    # Before the demo: the moment the dashboard answers (its URL is printed before it does).
    ready = f"dashboard: ready at {stack.settings.api.dashboard_url}\n"
    assert ready in lines and lines.index(ready) < lines.index(outcome[0]), output


def test_missing_packages_are_detected_for_debian_and_python() -> None:
    assert packages.missing_debian(["dpkg", "cvmfs-svc-no-such-package"]) == [
        "cvmfs-svc-no-such-package"
    ]
    assert packages.missing_python(["pika", "cvmfs-svc-no-such-dist"]) == [
        "pypi:cvmfs-svc-no-such-dist"
    ]


def test_rabbitmq_has_the_events_exchange_for_rgw(rabbitmq: Settings) -> None:
    mq = rabbitmq.rabbitmq
    name = urllib.parse.quote(mq.events_exchange, safe="")
    answer = probe.http(
        "GET",
        f"{mq.management_url}/api/exchanges/%2F/{name}",
        basic_auth=(mq.username, mq.password.get_secret_value()),
    )
    assert answer.status == 200
    assert answer.json()["type"] == "topic"
    assert answer.json()["durable"] is True


def test_openbao_token_file_is_private_and_kv2_is_mounted(vault: Settings) -> None:
    path = secrets_file(vault)
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert vault.vault.token is not None
    assert (
        root_token(
            vault.model_copy(update={"vault": vault.vault.model_copy(update={"token": None})})
        )
        == vault.vault.token
    )
    client = hvac.Client(url=vault.vault.addr, token=vault.vault.token.get_secret_value())
    mounts = client.sys.list_mounted_secrets_engines()["data"]
    assert mounts[f"{vault.vault.kv_mount}/"]["options"]["version"] == "2"
    client.secrets.kv.v2.create_or_update_secret(
        path="stack-test", secret={"x": "1"}, mount_point=vault.vault.kv_mount
    )
    read = client.secrets.kv.v2.read_secret_version(
        path="stack-test", mount_point=vault.vault.kv_mount, raise_on_deleted_version=True
    )
    assert read["data"]["data"] == {"x": "1"}


def test_registry_config_is_private_loopback_and_notifies_the_service(registry: Settings) -> None:
    config_file = registry.absolute_data_dir / "registry" / "config.yml"
    assert stat.S_IMODE(config_file.stat().st_mode) == 0o600
    config = yaml.safe_load(config_file.read_text())
    assert config["http"]["addr"] == f"127.0.0.1:{registry.registry.port}"
    assert config["storage"]["delete"] == {"enabled": True}
    (endpoint,) = config["notifications"]["endpoints"]
    assert endpoint["url"] == f"http://127.0.0.1:{registry.api.port}/webhooks/registry"
    secret = registry.registry.webhook_secret.get_secret_value()
    assert endpoint["headers"]["Authorization"] == [f"Bearer {secret}"]
    assert probe.http("GET", f"{registry.registry.url}/v2/").status == 200


def test_a_running_component_is_still_recognised_after_its_settings_changed(
    vault: Settings,
) -> None:
    # The test stack's OpenBao runs in dev mode; the same directory with mode "raft" gives
    # another command line. It must still be found (so `down` stops it), and `up` must refuse
    # to take it for the new configuration.
    raft = vault.model_copy(update={"vault": vault.vault.model_copy(update={"mode": "raft"})})
    running = OpenBao(vault, vault.absolute_data_dir / OpenBao.name).running_pid()
    changed = OpenBao(raft, raft.absolute_data_dir / OpenBao.name)
    assert running is not None
    assert changed.running_pid() == running
    with pytest.raises(StartError, match="other settings"):
        changed.start()
    assert changed.running_pid() == running


def test_prefect_clients_of_the_tests_point_at_the_test_server(prefect_server: Settings) -> None:
    from prefect.settings import PREFECT_API_URL, PREFECT_HOME

    assert PREFECT_API_URL.value() == prefect_server.prefect.api_url
    assert "cvmfs-svc-prefect-home-" in str(PREFECT_HOME.value())
    assert probe.http("GET", f"{prefect_server.prefect.api_url}/health").status == 200


@pytest.mark.disrupts_stack
def test_down_leaves_no_process_then_up_restarts_everything(stack: Stack) -> None:
    """Runs last in the session (see conftest): stops the stack, then brings it back."""
    before = stack_pids(stack)
    token_before = root_token(stack.settings)
    stack.down()
    for health in stack.status():
        assert not health.healthy, f"{health.name} still healthy after down"
    for name, pids in before.items():
        left = [pid for pid in pids if procs.is_alive(pid)]
        if name == "rabbitmq":
            # epmd is shared by every Erlang node of the machine: it stays while another
            # node (a development stack's RabbitMQ) is registered with it.
            other_nodes = subprocess.run(
                ["epmd", "-names"], capture_output=True, text=True, check=False
            ).stdout
            if "name " in other_nodes:
                left = [pid for pid in left if procs.command_name(pid) != "epmd"]
        assert not left, f"{name}: processes {left} survived down"

    healths = stack.up()
    assert all(h.healthy for h in healths), [h for h in healths if not h.healthy]
    # The dev-mode OpenBao keeps its root token across restarts, so the `vault` fixture's
    # settings stay valid for the rest of the session.
    assert root_token(stack.settings) == token_before
