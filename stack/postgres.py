"""The stack's PostgreSQL: Debian's server binaries run directly as user postgres.

One cluster in `<data_dir>/postgres/cluster` (initdb on first start), listening on 127.0.0.1 and
a socket in `<data_dir>/postgres/run`; no systemd, no pg_ctlcluster. After start it makes the
service's role and its two databases (registry of repositories, Prefect server), idempotently.
Started only when settings.postgres.enabled (SQLite stays the embedded default).
"""

from __future__ import annotations

import contextlib
import os
import pwd
import re
import signal
import stat
import subprocess
from pathlib import Path

from stack import packages, probe, procs
from stack.daemon import Daemon
from stack.errors import StartError

POSTGRES_USER = "postgres"
PG_ROOT = Path("/usr/lib/postgresql")
# A fast shutdown (SIGINT) ends client sessions; SIGTERM would wait for every client
# (the Prefect server keeps a pool open) until the stack's grace period ran out.
FAST_SHUTDOWN_WAIT_S = 30.0
# Two hosts' processes, each with a connection pool (registry: 5 + 10 overflow per process;
# the Prefect server more), stay below this with room to spare.
MAX_CONNECTIONS = 300


def server_bin_dir(root: Path = PG_ROOT) -> Path:
    """The newest installed major version's bin directory (Debian: /usr/lib/postgresql/<v>/bin)."""
    versions = [p for p in root.glob("*/bin/postgres") if p.parent.parent.name.isdigit()]
    if not versions:
        return root / "<version>" / "bin"
    return max(versions, key=lambda p: int(p.parent.parent.name)).parent


def _identifier(name: str) -> str:
    if not re.fullmatch(r"[a-z_][a-z0-9_]{0,62}", name):
        raise StartError(
            f"postgres: {name!r} is not a plain lower-case SQL name; choose another "
            "postgres.user / postgres.*_database"
        )
    return name


def _literal(value: str) -> str:
    return "'" + value.replace("'", "''") + "'"


class Postgres(Daemon):
    name = "postgres"
    # initdb plus the first start: a few seconds alone, longer on a busy 2-core machine.
    start_timeout_s = 120.0

    @property
    def url(self) -> str:
        pg = self.settings.postgres
        return f"postgresql://127.0.0.1:{pg.port}/"

    @property
    def cluster_dir(self) -> Path:
        return self.base_dir / "cluster"

    @property
    def socket_dir(self) -> Path:
        return self.base_dir / "run"

    def ports(self) -> list[int]:
        return [self.settings.postgres.port]

    def missing_packages(self) -> list[str]:
        return packages.missing_debian(["postgresql"])

    def _as_postgres(self) -> list[str]:
        return ["setpriv", f"--reuid={POSTGRES_USER}", f"--regid={POSTGRES_USER}", "--init-groups"]

    def server_args(self) -> list[str]:
        return [
            "-D",
            str(self.cluster_dir),
            "-p",
            str(self.settings.postgres.port),
            "-k",
            str(self.socket_dir),
            "-c",
            "listen_addresses=127.0.0.1",
            "-c",
            f"max_connections={MAX_CONNECTIONS}",
        ]

    def argv(self) -> list[str]:
        return [*self._as_postgres(), str(server_bin_dir() / "postgres"), *self.server_args()]

    def owns(self, pid: int) -> bool:
        # setpriv execs the server, so the live command line starts at the postgres binary.
        args = self.server_args()
        return procs.cmdline(pid)[-len(args) :] == args

    def prepare(self) -> None:
        user = pwd.getpwnam(POSTGRES_USER)
        for parent in self.base_dir.parents:
            mode = parent.stat().st_mode
            if parent.stat().st_uid != user.pw_uid and not mode & stat.S_IXOTH:
                raise StartError(
                    f"postgres: user postgres cannot enter {parent} (mode {oct(mode & 0o777)}). "
                    f"Allow it (chmod o+x {parent}) or choose another data directory."
                )
        self.socket_dir.mkdir(parents=True, exist_ok=True)
        for path in (self.base_dir, self.socket_dir):
            os.chown(path, user.pw_uid, user.pw_gid)
            path.chmod(0o700)
        if (self.cluster_dir / "PG_VERSION").exists():
            return
        password_file = self.base_dir / "initdb-password"
        # initdb reads the superuser's password from a file; it is removed right after.
        fd = os.open(password_file, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as out:
            out.write(os.urandom(24).hex())
        os.chown(password_file, user.pw_uid, user.pw_gid)
        try:
            result = subprocess.run(
                [
                    *self._as_postgres(),
                    str(server_bin_dir() / "initdb"),
                    "-D",
                    str(self.cluster_dir),
                    "-U",
                    POSTGRES_USER,
                    f"--pwfile={password_file}",
                    "--auth-local=peer",
                    "--auth-host=scram-sha-256",
                    "--encoding=UTF8",
                    "--locale=C.UTF-8",
                ],
                capture_output=True,
                text=True,
                check=False,
                cwd=self.base_dir,
            )
        finally:
            password_file.unlink(missing_ok=True)
        if result.returncode != 0:
            tail = " | ".join((result.stderr or result.stdout).strip().splitlines()[-5:])
            raise StartError(f"postgres: initdb failed (exit {result.returncode}): {tail}")

    def probe(self) -> tuple[bool, str]:
        port = self.settings.postgres.port
        if not probe.is_listening(port):
            return False, f"nothing accepts connections on 127.0.0.1:{port}"
        result = subprocess.run(
            [str(server_bin_dir() / "pg_isready"), "-h", "127.0.0.1", "-p", str(port), "-q"],
            capture_output=True,
            check=False,
        )
        return result.returncode == 0, f"pg_isready -> exit {result.returncode}"

    def after_start(self) -> None:
        """The service's role (its password as in the settings) and databases, idempotently."""
        pg = self.settings.postgres
        role = _identifier(pg.user)
        databases = [_identifier(pg.registry_database), _identifier(pg.prefect_database)]
        script = [
            f"SELECT 'CREATE ROLE {role} LOGIN' WHERE NOT EXISTS "
            f"(SELECT FROM pg_roles WHERE rolname = {_literal(role)})\\gexec",
            f"ALTER ROLE {role} PASSWORD {_literal(pg.password.get_secret_value())};",
        ]
        for database in databases:
            script.append(
                f"SELECT 'CREATE DATABASE {database} OWNER {role}' WHERE NOT EXISTS "
                f"(SELECT FROM pg_database WHERE datname = {_literal(database)})\\gexec"
            )
        # Through the socket as the postgres user (peer authentication); the password goes
        # in on stdin, never on a command line.
        result = subprocess.run(
            [
                *self._as_postgres(),
                str(server_bin_dir() / "psql"),
                "-h",
                str(self.socket_dir),
                "-p",
                str(pg.port),
                "-d",
                "postgres",
                "-v",
                "ON_ERROR_STOP=1",
                "-q",
            ],
            input="\n".join(script) + "\n",
            capture_output=True,
            text=True,
            check=False,
        )
        if result.returncode != 0:
            tail = " | ".join((result.stderr or result.stdout).strip().splitlines()[-5:])
            raise StartError(f"postgres: creating role and databases failed: {tail}")

    def stop(self) -> None:
        pid = self.running_pid()
        if pid is not None:
            family = procs.descendants(pid)
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGINT)
            for stuck in procs.wait_gone([pid, *family], FAST_SHUTDOWN_WAIT_S):
                with contextlib.suppress(ProcessLookupError):
                    os.kill(stuck, signal.SIGKILL)
        self.pid_file.unlink(missing_ok=True)
        self.args_file.unlink(missing_ok=True)
