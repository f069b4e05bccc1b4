"""Two "hosts" on one machine for the scale-out test and bench: network namespaces, each with
its own address, running the service's processes against the shared stack of the root namespace.

Topology (all inside this machine): a Linux bridge `cvbr<offset>` in the root namespace with
10.213.<n>.1/24; namespace `cvh<offset><a|b>` has 10.213.<n>.11/.12 on a veth whose other end
is on the bridge. The stack keeps listening on 127.0.0.1 only; a socat forwarder per shared
port listens on 10.213.<n>.1 and connects to 127.0.0.1 (what a host's settings name as
rabbitmq/ceph/vault/prefect/postgres `.host`). Cutting a host's network is setting its
veth end on the bridge down. Everything is created by this module, recorded, and removed by it.
"""

from __future__ import annotations

import contextlib
import json
import os
import random
import re
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import pika

from bridge.amqp import connection_parameters
from buckets.s3_clients import demo_s3
from cvmfs.fsck import fsck
from cvmfs.reader import RepositoryReader
from service.client_config import stratum0_url
from service.keystore import KeyOwner, KeyStore
from service.repositories import RepositoryRegistry
from service.settings import Settings
from stack import procs
from tests.conftest import settings_env

PROJECT_DIR = Path(__file__).resolve().parents[1]
# A host's runner: `serve-deployments` (the embedded default), or `worker` on the work pool
# prefect.work_pool (the production layout); then the bridge and the API.
OTHER_HOST_COMMANDS = ("bridge", "api")
HOST_NAMES = ("a", "b")
POLL_S = 0.5


def _ip(*argv: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["ip", *argv], capture_output=True, text=True, check=check)


@dataclass
class Network:
    """The bridge, the namespaces and their veths of one port offset."""

    offset: int
    created: bool = False

    @property
    def prefix(self) -> str:
        return f"10.213.{(self.offset // 10) % 250}"

    @property
    def shared_ip(self) -> str:
        return f"{self.prefix}.1"

    @property
    def bridge(self) -> str:
        return f"cvbr{self.offset}"

    def namespace(self, host: str) -> str:
        return f"cvh{self.offset}{host}"

    def host_ip(self, host: str) -> str:
        return f"{self.prefix}.{11 + HOST_NAMES.index(host)}"

    def veth(self, host: str) -> tuple[str, str]:
        """(end on the bridge, end in the namespace)."""
        return f"cv{self.offset}{host}0", f"cv{self.offset}{host}1"

    def create(self) -> None:
        self.remove()  # leftovers of a killed run
        self.created = True
        _ip("link", "add", self.bridge, "type", "bridge")
        _ip("addr", "add", f"{self.shared_ip}/24", "dev", self.bridge)
        _ip("link", "set", self.bridge, "up")
        for host in HOST_NAMES:
            namespace = self.namespace(host)
            outer, inner = self.veth(host)
            _ip("netns", "add", namespace)
            _ip("link", "add", outer, "type", "veth", "peer", "name", inner)
            _ip("link", "set", inner, "netns", namespace)
            _ip("link", "set", outer, "master", self.bridge, "up")
            _ip("-n", namespace, "addr", "add", f"{self.host_ip(host)}/24", "dev", inner)
            _ip("-n", namespace, "link", "set", inner, "up")
            _ip("-n", namespace, "link", "set", "lo", "up")

    def cut(self, host: str) -> None:
        _ip("link", "set", self.veth(host)[0], "down")

    def restore(self, host: str) -> None:
        _ip("link", "set", self.veth(host)[0], "up")

    def remove(self) -> None:
        for host in HOST_NAMES:
            _ip("link", "del", self.veth(host)[0], check=False)
            _ip("netns", "del", self.namespace(host), check=False)
        _ip("link", "del", self.bridge, check=False)


class Forwarders:
    """One socat per shared port: <shared_ip>:<port> → 127.0.0.1:<port>."""

    def __init__(self, listen_ip: str, ports: list[int], log_dir: Path) -> None:
        self.listen_ip = listen_ip
        self.ports = ports
        self.log_dir = log_dir
        self.processes: list[subprocess.Popen[bytes]] = []

    def start(self) -> None:
        self.log_dir.mkdir(parents=True, exist_ok=True)
        for port in self.ports:
            with (self.log_dir / f"socat-{port}.log").open("wb") as log:
                self.processes.append(
                    subprocess.Popen(
                        [
                            "socat",
                            f"TCP-LISTEN:{port},bind={self.listen_ip},fork,reuseaddr,backlog=256",
                            f"TCP:127.0.0.1:{port}",
                        ],
                        stdout=log,
                        stderr=subprocess.STDOUT,
                        start_new_session=True,
                    )
                )
        deadline = time.monotonic() + 10
        for port in self.ports:
            while not _listening(self.listen_ip, port):
                if time.monotonic() > deadline:
                    raise TimeoutError(f"socat did not listen on {self.listen_ip}:{port}")
                time.sleep(0.1)

    def stop(self) -> None:
        for process in self.processes:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(process.pid, signal.SIGTERM)
        for process in self.processes:
            with contextlib.suppress(subprocess.TimeoutExpired):
                process.wait(timeout=5)
        self.processes.clear()


def _listening(host: str, port: int) -> bool:
    import socket

    with socket.socket() as sock:
        sock.settimeout(0.5)
        return sock.connect_ex((host, port)) == 0


def shared_ports(settings: Settings) -> list[int]:
    return [
        settings.rabbitmq.port,
        settings.rabbitmq.management_port,
        settings.ceph.rgw_port,
        settings.vault.port,
        settings.prefect.port,
        settings.postgres.port,
    ]


def host_settings(base: Settings, network: Network, host: str, data_dir: Path) -> Settings:
    """What a host's processes are configured with: the shared services at the bridge address."""
    shared = network.shared_ip
    return base.model_copy(
        update={
            "data_dir": data_dir,
            "rabbitmq": base.rabbitmq.model_copy(update={"host": shared}),
            "ceph": base.ceph.model_copy(update={"host": shared}),
            "vault": base.vault.model_copy(update={"host": shared}),
            "prefect": base.prefect.model_copy(update={"host": shared}),
            "postgres": base.postgres.model_copy(update={"host": shared}),
            "api": base.api.model_copy(update={"bind_host": network.host_ip(host)}),
            "gateway": base.gateway.model_copy(update={"bind_host": network.host_ip(host)}),
        }
    )


@dataclass
class Host:
    """One host: its namespace, its settings, and the processes it runs (bridge, runner, API)."""

    name: str
    network: Network
    settings: Settings
    log_dir: Path
    processes: dict[str, subprocess.Popen[bytes]] = field(default_factory=dict)
    starts: int = 0

    @property
    def runner(self) -> str:
        return "serve-deployments" if self.settings.prefect.work_pool is None else "worker"

    @property
    def commands(self) -> tuple[str, ...]:
        return (self.runner, *OTHER_HOST_COMMANDS)

    @property
    def api_url(self) -> str:
        return f"http://{self.network.host_ip(self.name)}:{self.settings.api.port}"

    def environment(self) -> dict[str, str]:
        base = {
            key: value
            for key, value in os.environ.items()
            if not key.startswith(("PREFECT_", "CVMFS_SVC_"))
        }
        home = self.settings.absolute_data_dir / "home"
        home.mkdir(parents=True, exist_ok=True)
        return {**base, **settings_env(self.settings), "HOME": str(home)}

    def log(self, command: str) -> Path:
        return self.log_dir / f"{self.name}-{command}-{self.starts}.log"

    def start(self) -> None:
        self.starts += 1
        self.log_dir.mkdir(parents=True, exist_ok=True)
        env = self.environment()
        for command in self.commands:
            with self.log(command).open("wb") as out:
                self.processes[command] = subprocess.Popen(
                    [
                        "ip",
                        "netns",
                        "exec",
                        self.network.namespace(self.name),
                        sys.executable,
                        "-m",
                        "service.cli",
                        command,
                    ],
                    env=env,
                    cwd=PROJECT_DIR,
                    stdout=out,
                    stderr=subprocess.STDOUT,
                    start_new_session=True,
                )

    def wait_ready(self, timeout_s: float = 180.0) -> None:
        """The API answers at the host's address and its runner has registered the deployments."""
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            for command, process in self.processes.items():
                if process.poll() is not None:
                    tail = self.log(command).read_text(errors="replace")[-2000:]
                    raise RuntimeError(f"host {self.name}: {command} exited: {tail}")
            with contextlib.suppress(httpx.HTTPError):
                if httpx.get(f"{self.api_url}/openapi.json", timeout=5).is_success and (
                    "deployment" in self.log(self.runner).read_text(errors="replace")
                    or self.starts > 1
                ):
                    return
            time.sleep(POLL_S)
        raise TimeoutError(f"host {self.name} not ready within {timeout_s:.0f} s")

    def pids(self) -> list[int]:
        found: list[int] = []
        for process in self.processes.values():
            if process.poll() is None:
                found += [process.pid, *procs.descendants(process.pid)]
        return found

    def kill(self) -> int:
        """SIGKILL every process of the host (flow-run children included); how many."""
        pids = self.pids()
        for pid in pids:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        for process in self.processes.values():
            process.wait(timeout=10)
        procs.wait_gone(pids, 10)
        self.processes.clear()
        return len(pids)

    def stop(self) -> None:
        for process in self.processes.values():
            if process.poll() is None:
                process.terminate()
        deadline = time.monotonic() + 20
        for process in self.processes.values():
            try:
                process.wait(timeout=max(deadline - time.monotonic(), 0.1))
            except subprocess.TimeoutExpired:
                self.kill()
                break
        self.processes.clear()

    def cpu_s(self) -> dict[str, float]:
        """CPU seconds so far per process of this start (`<command>`: its own; `<command>
        children`: of the children it reaped, which for the runner are the finished flow runs)."""
        used: dict[str, float] = {}
        for command, process in self.processes.items():
            own, children = process_cpu_s(process.pid)
            used[command] = own
            used[f"{command} children"] = children
        return used

    def flow_runs_in_progress(self) -> int:
        """Flow runs executing in this host's runner now: begun (the run's "Beginning flow
        run" line, logged once it is Running) and not finished in the runner's log, and at most
        the runner's live `python -m prefect.engine` children (serve and worker alike).

        The process count alone also counts runs still starting (Pending), whose rescue leaves
        run_count at 1 (seen: 0 runs counted as rescued); the log count alone drifted over a
        long bench (it read -19 after some 500 runs).
        """
        runner = self.processes.get(self.runner)
        if runner is None or runner.poll() is not None:
            return 0
        text = self.log(self.runner).read_text("utf-8", "replace")
        begun = len(re.findall(r"Flow run '[^']+' - Beginning flow run", text))
        finished = len(re.findall(r"Flow run '[^']+' - Finished in state", text))
        processes = sum(
            1 for pid in procs.descendants(runner.pid) if "prefect.engine" in procs.cmdline(pid)
        )
        return min(begun - finished, processes)

    def kill_while_running(self, wait_s: float = 180.0) -> tuple[int, int]:
        """Wait (bounded) until the host executes a flow run, then SIGKILL all its processes
        and cut its network; (flow runs in progress, processes killed)."""
        deadline = time.monotonic() + wait_s
        while self.flow_runs_in_progress() <= 0 and time.monotonic() < deadline:
            time.sleep(0.1)
        in_progress = self.flow_runs_in_progress()
        killed = self.kill()
        self.network.cut(self.name)
        return in_progress, killed

    def flow_runs_finished(self, start: int) -> int:
        """Flow runs that finished in this host's runner during its `start`-th start (the
        flow-run processes log to the runner's output)."""
        path = self.log_dir / f"{self.name}-{self.runner}-{start}.log"
        if not path.exists():
            return 0
        return len(
            re.findall(r"Flow run '[^']+' - Finished in state", path.read_text("utf-8", "replace"))
        )


def process_cpu_s(pid: int) -> tuple[float, float]:
    """(user + system CPU seconds of `pid`, of its reaped children), from /proc/<pid>/stat."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except FileNotFoundError:
        return 0.0, 0.0
    fields = stat.rpartition(")")[2].split()  # after the command name, which may hold spaces
    ticks = os.sysconf("SC_CLK_TCK")
    utime, stime, cutime, cstime = (int(f) for f in fields[11:15])
    return (utime + stime) / ticks, (cutime + cstime) / ticks


@dataclass(frozen=True)
class Repo:
    fqrn: str
    bucket: str


def provision_repositories(settings: Settings, count: int, tag: str) -> list[Repo]:
    """Legacy requests from a trusted producer (user_id guest) on the events exchange; the
    hosts' bridges and runners provision them. Waits until every one is ready."""
    repos = [
        Repo(f"{tag}{n:02d}-personal.{settings.repository_domain}", f"{tag}{n:02d}-personal")
        for n in range(count)
    ]
    s3 = demo_s3(settings)
    for repo in repos:
        s3.create_bucket(Bucket=repo.bucket)
    connection = pika.BlockingConnection(connection_parameters(settings.rabbitmq))
    try:
        channel = connection.channel()
        for repo in repos:
            user = repo.fqrn.partition("-")[0]
            channel.basic_publish(
                settings.rabbitmq.events_exchange,
                "repository.request",
                f"{user},sub-{user},{repo.fqrn},P".encode(),
                pika.BasicProperties(delivery_mode=2, user_id=settings.rabbitmq.username),
            )
    finally:
        connection.close()
    registry = RepositoryRegistry.open(settings)
    try:
        until(
            lambda: all(
                (r := registry.get(repo.fqrn)) is not None and r.status == "ready" for repo in repos
            ),
            f"{count} repositories provisioned",
            600,
        )
        # Ready is not enough: a bucket that is `foreign` (another S3 account owns it, as the
        # demo user does here unless provisioning.require_bucket_owner is off) is never
        # wired, and its uploads reach no queue. Say so now rather than time out later.
        states = registry.bucket_states([repo.fqrn for repo in repos])
        unwired = {
            fqrn: f"{state.state}: {state.message}"
            for fqrn, state in states.items()
            if state.state != "wired"
        }
        if unwired or len(states) < len(repos):
            raise RuntimeError(f"buckets not wired after provisioning: {unwired}")
    finally:
        registry.close()
    return repos


def until(condition: Callable[[], bool], what: str, timeout_s: float) -> float:
    """Poll `condition`; the seconds it took."""
    began = time.monotonic()
    last_error: Exception | None = None
    while time.monotonic() - began < timeout_s:
        try:
            if condition():
                return time.monotonic() - began
        except Exception as error:  # not published yet: read again
            last_error = error
        time.sleep(POLL_S)
    raise TimeoutError(f"{what} not within {timeout_s:.0f} s (last error: {last_error!r})")


class Repositories:
    """Reads the published repositories back over HTTP with the verifying reader."""

    def __init__(self, settings: Settings, key_dir: Path) -> None:
        self.settings = settings
        self.key_dir = key_dir
        key_dir.mkdir(parents=True, exist_ok=True)
        self._manifests: dict[str, bytes] = {}
        self._files: dict[str, dict[str, bytes]] = {}

    def key_file(self, fqrn: str) -> Path:
        path = self.key_dir / f"{fqrn}.pub"
        if not path.exists():
            registry = RepositoryRegistry.open(self.settings)
            try:
                repository = registry.require(fqrn)
            finally:
                registry.close()
            owner = KeyOwner.for_repository(
                repository.kind, repository.owner_subject, repository.group
            )
            pem = KeyStore.from_settings(self.settings.vault).read(owner, fqrn).master_public_pem
            path.write_text(pem)
        return path

    @contextlib.contextmanager
    def reader(self, fqrn: str) -> Iterator[RepositoryReader]:
        url = stratum0_url(self.settings, fqrn)
        with RepositoryReader.open(url, fqrn, [self.key_file(fqrn)]) as reader:
            yield reader

    def files(self, fqrn: str) -> dict[str, bytes]:
        with self.reader(fqrn) as reader:
            return {e.path: reader.read(e.path) for e in reader.walk() if e.is_regular}

    def revision(self, fqrn: str) -> int:
        with self.reader(fqrn) as reader:
            return reader.manifest.revision

    def equal(self, fqrn: str, expected: dict[str, bytes]) -> bool:
        """Whether the published tree is `expected`; re-read only when the manifest changed."""
        url = f"{stratum0_url(self.settings, fqrn)}/.cvmfspublished"
        manifest = httpx.get(url, timeout=10).content
        if self._manifests.get(fqrn) != manifest:
            self._files[fqrn] = self.files(fqrn)
            self._manifests[fqrn] = manifest
        return self._files[fqrn] == expected

    def revisions_are_whole_and_distinct(self, fqrn: str) -> tuple[int, list[str]]:
        """(revisions checked, problems): every tagged revision passes fsck (no half
        publish) and no two consecutive revisions hold the same files (no batch twice)."""
        problems: list[str] = []
        with self.reader(fqrn) as reader:
            report = fsck(reader, all_revisions=True, workers=2)
            if not report.ok:
                problems.append(f"{fqrn}: fsck: {report.problems[:3]}")
            tags = sorted({t.revision: t for t in reader.tags()}.values(), key=lambda t: t.revision)
            previous: dict[str, bytes] | None = None
            for tag in tags:
                view = reader.at_root_hash(tag.root_hash, tag.size or None)
                tree = {e.path: e.content_hash.digest for e in view.walk() if e.is_regular}
                if previous is not None and tree == previous:
                    problems.append(f"{fqrn}: revision {tag.revision} repeats the one before")
                previous = tree
        return len(tags), problems


@dataclass
class Upload:
    repo: Repo
    key: str
    body: bytes


def upload_all(
    settings: Settings,
    uploads: list[Upload],
    clients: int,
    at_half: Callable[[], None] | None = None,
) -> float:
    """PUT every upload from `clients` threads; `at_half` runs once half are done. Seconds."""
    lock = threading.Lock()
    done = 0
    half_fired = threading.Event()
    queue = list(uploads)
    errors: list[BaseException] = []

    def client() -> None:
        nonlocal done
        s3 = demo_s3(settings)
        while True:
            with lock:
                if not queue or errors:
                    return
                item = queue.pop(0)
            try:
                s3.put_object(Bucket=item.repo.bucket, Key=item.key, Body=item.body)
            except BaseException as error:
                errors.append(error)
                return
            fire = False
            with lock:
                done += 1
                if at_half is not None and done >= len(uploads) // 2 and not half_fired.is_set():
                    half_fired.set()
                    fire = True
            if fire and at_half is not None:
                at_half()

    began = time.monotonic()
    threads = [threading.Thread(target=client, name=f"client-{n}") for n in range(clients)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    if errors:
        raise errors[0]
    return time.monotonic() - began


def make_uploads(repos: list[Repo], per_repo: int, phase: str, seed: int) -> list[Upload]:
    rng = random.Random(seed)
    uploads = [
        Upload(repo, f"cvmfs/{phase}/f{n:03d}.txt", f"{repo.fqrn} {phase} {n}\n".encode())
        for repo in repos
        for n in range(per_repo)
    ]
    rng.shuffle(uploads)
    return uploads


def expected_after(expected: dict[str, dict[str, bytes]], uploads: list[Upload]) -> None:
    for item in uploads:
        expected.setdefault(item.repo.fqrn, {})["/" + item.key.removeprefix("cvmfs/")] = item.body


@dataclass
class Figures:
    label: str
    uploads: int
    upload_s: float
    visible_s: float
    publishes: int

    def line(self) -> str:
        return (
            f"{self.label}: {self.uploads} uploads in {self.upload_s:.1f} s; all visible "
            f"{self.visible_s:.1f} s after the first; {self.uploads / self.visible_s:.1f} "
            f"uploads/s visible; {self.publishes} publishes, "
            f"{self.publishes / self.visible_s:.2f} publishes/s"
        )

    def as_json(self) -> str:
        return json.dumps(self.__dict__)


def load_and_measure(
    settings: Settings,
    repositories: Repositories,
    repos: list[Repo],
    expected: dict[str, dict[str, bytes]],
    uploads: list[Upload],
    clients: int,
    label: str,
    timeout_s: float,
    at_half: Callable[[], None] | None = None,
) -> Figures:
    """Upload, then wait until every repository equals its bucket; figures of the round."""
    before = {repo.fqrn: repositories.revision(repo.fqrn) for repo in repos}
    began = time.monotonic()
    upload_s = upload_all(settings, uploads, clients, at_half)
    expected_after(expected, uploads)
    until(
        lambda: all(repositories.equal(r.fqrn, expected[r.fqrn]) for r in repos),
        f"{label}: every repository equal to its bucket",
        timeout_s,
    )
    visible_s = time.monotonic() - began
    publishes = sum(repositories.revision(r.fqrn) - before[r.fqrn] for r in repos)
    return Figures(label, len(uploads), upload_s, visible_s, publishes)


def rescued_by_automation(settings: Settings, runs: list[dict[str, object]]) -> int:
    """How many of `runs` the rescue automation scheduled again (deployments/rescue.py): an
    AwaitingRetry with its message in their state history. run_count alone misses a run
    killed before it was Running (rescued, it runs once)."""
    rescued = 0
    for run in runs:
        answer = httpx.get(
            f"{settings.prefect.api_url}/flow_run_states/",
            params={"flow_run_id": str(run["id"])},
            timeout=30,
        )
        answer.raise_for_status()
        if any(
            state.get("name") == "AwaitingRetry" and "no heartbeat" in (state.get("message") or "")
            for state in answer.json()
        ):
            rescued += 1
    return rescued


def flow_runs(settings: Settings, flow_names: list[str]) -> list[dict[str, object]]:
    """Every flow run of these flows (id, name, state type, run_count)."""
    found: list[dict[str, object]] = []
    offset = 0
    while True:
        answer = httpx.post(
            f"{settings.prefect.api_url}/flow_runs/filter",
            json={
                "flows": {"name": {"any_": flow_names}},
                "limit": 200,
                "offset": offset,
            },
            timeout=30,
        )
        answer.raise_for_status()
        page = answer.json()
        found += page
        if len(page) < 200:
            return found
        offset += 200
