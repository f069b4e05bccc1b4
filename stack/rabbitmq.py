"""RabbitMQ for the local stack: Debian's rabbitmq-server, management plugin, loopback only.

Each stack (dev, test) runs its own node name and ports; epmd on 127.0.0.1:4369 is shared.
"""

from __future__ import annotations

import contextlib
import os
import pwd
import shutil
import stat
import subprocess
import urllib.parse
from pathlib import Path

from stack import packages, probe, procs
from stack.daemon import Daemon
from stack.errors import StartError

EPMD_PORT = 4369
DIST_ARGS = "-kernel inet_dist_use_interface {127,0,0,1}"


class RabbitMQ(Daemon):
    name = "rabbitmq"
    start_timeout_s = 120.0

    @property
    def url(self) -> str:
        return self.settings.rabbitmq.management_url

    @property
    def pid_file(self) -> Path:
        # Written by rabbitmq-server itself (RABBITMQ_PID_FILE): the beam.smp pid.
        return self.base_dir / "rabbit.pid"

    @property
    def epmd_pid_file(self) -> Path:
        return self.base_dir / "epmd.pid"

    def ports(self) -> list[int]:
        mq = self.settings.rabbitmq
        return [mq.port, mq.management_port, mq.dist_port]

    def owns(self, pid: int) -> bool:
        # beam.smp gets its node name and directories through the environment, not argv.
        return procs.environ(pid).get("RABBITMQ_MNESIA_BASE") == str(self.base_dir / "mnesia")

    def missing_packages(self) -> list[str]:
        return packages.missing_debian(["rabbitmq-server"])

    def env(self) -> dict[str, str]:
        base = self.base_dir
        return {
            **os.environ,
            "RABBITMQ_NODENAME": self.settings.rabbitmq.node_name,
            "RABBITMQ_MNESIA_BASE": str(base / "mnesia"),
            "RABBITMQ_LOG_BASE": str(base / "log"),
            "RABBITMQ_CONFIG_FILE": str(base / "rabbitmq"),  # ".conf" is appended
            "RABBITMQ_ENABLED_PLUGINS_FILE": str(base / "enabled_plugins"),
            "RABBITMQ_CONF_ENV_FILE": str(base / "rabbitmq-env.conf"),
            "RABBITMQ_PID_FILE": str(self.pid_file),
            "RABBITMQ_DIST_PORT": str(self.settings.rabbitmq.dist_port),
            "RABBITMQ_SERVER_ADDITIONAL_ERL_ARGS": DIST_ARGS,
            "RABBITMQ_CTL_ERL_ARGS": DIST_ARGS,
            "ERL_EPMD_ADDRESS": "127.0.0.1",
        }

    def prepare(self) -> None:
        mq = self.settings.rabbitmq
        base = self.base_dir
        for sub in ("mnesia", "log"):
            (base / sub).mkdir(parents=True, exist_ok=True)
        (base / "rabbitmq.conf").write_text(
            f"listeners.tcp.default = 127.0.0.1:{mq.port}\n"
            "management.tcp.ip = 127.0.0.1\n"
            f"management.tcp.port = {mq.management_port}\n"
            "loopback_users.guest = true\n"
        )
        (base / "enabled_plugins").write_text("[rabbitmq_management].\n")
        (base / "rabbitmq-env.conf").write_text("# empty: everything comes from the environment\n")
        self._hand_to_rabbitmq_user()

    def _hand_to_rabbitmq_user(self) -> None:
        """The Debian wrapper runs the node as user rabbitmq: it must own and reach its dir."""
        user = pwd.getpwnam("rabbitmq")
        for path in [self.base_dir, *self.base_dir.rglob("*")]:
            os.chown(path, user.pw_uid, user.pw_gid)
        for parent in self.base_dir.parents:
            mode = parent.stat().st_mode
            if parent.stat().st_uid != user.pw_uid and not mode & stat.S_IXOTH:
                raise StartError(
                    f"rabbitmq: user rabbitmq cannot enter {parent} (mode {oct(mode & 0o777)}). "
                    f"Choose a data directory whose parents are world-executable "
                    f"(chmod o+x {parent})."
                )

    def start(self) -> None:
        if self.running_pid() is None:
            self.check_ports_free()
            self.base_dir.mkdir(parents=True, exist_ok=True)
            self.prepare()
            log = self.base_dir / "log" / "startup.log"
            with log.open("ab") as out:
                result = subprocess.run(
                    ["rabbitmq-server", "-detached"],
                    env=self.env(),
                    stdin=subprocess.DEVNULL,
                    stdout=out,
                    stderr=subprocess.STDOUT,
                    check=False,
                    start_new_session=True,
                )
            if result.returncode != 0:
                raise StartError(f"rabbitmq: rabbitmq-server -detached failed; read {log}.")
        procs.wait_until(
            lambda: self.probe()[0],
            timeout_s=self.start_timeout_s,
            what=f"rabbitmq at {self.url}",
            hint=f"Read {self.base_dir / 'log'}.",
        )
        self._record_epmd()
        self._declare_events_exchange()

    def _record_epmd(self) -> None:
        # epmd is daemonised by the first Erlang node and outlives it; record its pid so the
        # last node of this machine to stop can stop it too.
        for pid in probe.listener_pids(EPMD_PORT):
            if procs.command_name(pid) == "epmd":
                procs.write_pid(self.epmd_pid_file, pid)
                return

    def _declare_events_exchange(self) -> None:
        """RGW never declares its exchange and breaks for good if it is missing (§2.7 p.3)."""
        mq = self.settings.rabbitmq
        vhost = urllib.parse.quote(mq.vhost, safe="")
        answer = probe.http(
            "PUT",
            f"{self.url}/api/exchanges/{vhost}/{urllib.parse.quote(mq.events_exchange, safe='')}",
            body={"type": "topic", "durable": True},
            basic_auth=(mq.username, mq.password.get_secret_value()),
        )
        if answer.status not in (201, 204):
            raise StartError(
                f"rabbitmq: declaring exchange {mq.events_exchange} failed "
                f"({answer.status or answer.error})."
            )

    def probe(self) -> tuple[bool, str]:
        mq = self.settings.rabbitmq
        answer = probe.http(
            "GET",
            f"{self.url}/api/overview",
            basic_auth=(mq.username, mq.password.get_secret_value()),
        )
        if answer.status != 200:
            return False, f"GET /api/overview -> {answer.status or answer.error}"
        node = answer.json().get("node")
        if node != mq.node_name:
            return False, f"the management API on this port belongs to node {node}"
        return True, f"node {node} up"

    def pids(self) -> list[int]:
        pid = self.running_pid()
        found = [] if pid is None else [pid, *procs.descendants(pid)]
        epmd = procs.running_pid(self.epmd_pid_file, "epmd")
        return found + ([epmd] if epmd is not None and epmd not in found else [])

    def stop(self) -> None:
        pid = self.running_pid()
        if pid is not None:
            family = procs.descendants(pid)
            # A clean stop flushes queues to disk; SIGTERM below is the fallback.
            with contextlib.suppress(subprocess.TimeoutExpired):
                subprocess.run(
                    ["rabbitmqctl", "-n", self.settings.rabbitmq.node_name, "stop"],
                    env=self.env(),
                    capture_output=True,
                    check=False,
                    timeout=60,
                )
            left = procs.wait_gone([pid], 30.0)
            if left:
                procs.terminate_tree(pid)
            procs.wait_gone(family, 5.0)
        self.pid_file.unlink(missing_ok=True)
        self._stop_epmd_if_unused()

    def _stop_epmd_if_unused(self) -> None:
        epmd = procs.running_pid(self.epmd_pid_file, "epmd")
        if epmd is not None and not self._epmd_names():
            procs.terminate_tree(epmd, grace_s=5.0)
        self.epmd_pid_file.unlink(missing_ok=True)

    def _epmd_names(self) -> list[str]:
        """Nodes still registered with epmd (other stacks' RabbitMQ, for instance)."""
        epmd = shutil.which("epmd") or "epmd"
        result = subprocess.run(
            [epmd, "-names"], capture_output=True, text=True, check=False, timeout=10
        )
        # "name cvmfs-svc at port 25672" per registered node
        return [line.split()[1] for line in result.stdout.splitlines() if line.startswith("name ")]
