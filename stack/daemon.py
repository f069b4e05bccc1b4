"""The common shape of a stack component that runs one daemon spawned by the stack itself.

Subclasses say how to configure, launch and probe it; this class does pid files, idempotent
start, port checks, stop of exactly the recorded process tree, and health.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

from service.settings import Settings
from stack import probe, procs
from stack.component import Health
from stack.errors import PortInUseError, StartError


class Daemon:
    """One spawned process (plus the children it starts), recorded in `<base_dir>/<name>.pid`."""

    name = "daemon"
    start_timeout_s = 60.0

    def __init__(self, settings: Settings, base_dir: Path) -> None:
        self.settings = settings
        self.base_dir = base_dir

    # -- what subclasses provide -------------------------------------------------------
    @property
    def url(self) -> str:
        raise NotImplementedError

    def ports(self) -> list[int]:
        """The TCP ports (on 127.0.0.1) the daemon listens on."""
        raise NotImplementedError

    def argv(self) -> list[str]:
        raise NotImplementedError

    def extra_env(self) -> dict[str, str]:
        return {}

    def prepare(self) -> None:
        """Write configuration and directories before the first launch."""

    def probe(self) -> tuple[bool, str]:
        """(healthy, detail) from the daemon's own health endpoint."""
        raise NotImplementedError

    def check(self) -> tuple[bool, str]:
        """(healthy, detail) for `status`; by default the readiness probe."""
        return self.probe()

    def after_start(self) -> None:
        """Run once the daemon answers (initialise, unseal, declare, ...); idempotent."""

    def missing_packages(self) -> list[str]:
        return []

    # -- shared behaviour ------------------------------------------------------------------
    @property
    def pid_file(self) -> Path:
        return self.base_dir / f"{self.name}.pid"

    @property
    def log_file(self) -> Path:
        return self.base_dir / f"{self.name}.log"

    def owns(self, pid: int) -> bool:
        """Whether live process `pid` is this instance (guards against recycled pids).

        Compares the arguments after the program: a console script shows up as
        `python <script> ...`, and `bao` execs its real binary, so argv[0] differs.
        """
        args = self.recorded_args()
        return procs.cmdline(pid)[-len(args) :] == args

    @property
    def args_file(self) -> Path:
        return self.base_dir / f"{self.name}.args.json"

    def recorded_args(self) -> list[str]:
        """The arguments the running instance was started with (recorded beside its pid).

        Recorded rather than recomputed, so that `stop` still finds the process after the
        settings changed.
        """
        try:
            recorded = json.loads(self.args_file.read_text())
        except (FileNotFoundError, ValueError):
            return self.argv()[1:]
        return [str(arg) for arg in recorded]

    def running_pid(self) -> int | None:
        pid = procs.read_pid(self.pid_file)
        if pid is None or not procs.is_alive(pid):
            return None
        return pid if self.owns(pid) else None

    def pids(self) -> list[int]:
        """The recorded process and its descendants, if it runs."""
        pid = self.running_pid()
        return [] if pid is None else [pid, *procs.descendants(pid)]

    def start(self) -> None:
        pid = self.running_pid()
        if pid is None:
            self.check_ports_free()
            self.base_dir.mkdir(parents=True, exist_ok=True)
            self.prepare()
            env = {**os.environ, **self.extra_env()}
            argv = self.argv()
            self.args_file.write_text(json.dumps(argv[1:]))
            pid = procs.spawn(argv, log_file=self.log_file, env=env, cwd=self.base_dir)
            procs.write_pid(self.pid_file, pid)
        elif self.recorded_args() != self.argv()[1:]:
            raise StartError(
                f"{self.name} runs (pid {pid}) with other settings than the current ones; "
                f"stop it first (`cvmfs-svc stack down {self.name}`), then start it again."
            )
        started = pid
        procs.wait_until(
            lambda: self.probe()[0],
            timeout_s=self.start_timeout_s,
            what=f"{self.name} at {self.url}",
            hint=f"Read {self.log_file}.",
            alive=lambda: procs.is_alive(started),
        )
        self.after_start()

    def check_ports_free(self) -> None:
        for port in self.ports():
            holders = probe.listener_pids(port)
            if holders or probe.is_listening(port):
                who = ", ".join(f"pid {p} ({' '.join(procs.cmdline(p))[:80]})" for p in holders)
                raise PortInUseError(
                    f"{self.name}: port {port} is already in use by {who or 'another process'}"
                    f", not by the instance recorded in {self.pid_file}. Stop that process "
                    f"(if it is another stack: `cvmfs-svc stack down` with its settings) "
                    f"and retry."
                )

    def stop(self) -> None:
        pid = self.running_pid()
        if pid is not None:
            procs.terminate_tree(pid)
        self.pid_file.unlink(missing_ok=True)
        self.args_file.unlink(missing_ok=True)

    def health(self) -> Health:
        if self.running_pid() is None:
            detail = f"not running (no live pid in {self.pid_file})"
            return Health(self.name, False, self.url, detail)
        healthy, detail = self.check()
        return Health(self.name, healthy, self.url, detail)
