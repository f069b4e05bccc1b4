"""Ceph for the local stack: one mon, one bluestore OSD and radosgw (civetweb) in one directory.

Creates, restarts, stops and health-checks that cluster and keeps the service's and the demo
user's S3 keys in place; the recipe and its measured pitfalls are services-notes.md §2.
"""

from __future__ import annotations

import contextlib
import fcntl
import logging
import os
import shutil
import signal
import socket
import subprocess
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import boto3
from botocore.config import Config
from botocore.exceptions import ClientError
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from service.settings import LOOPBACK, Settings
from stack import packages, probe, procs
from stack.component import Health
from stack.errors import PackageError, PortInUseError, StackError, StartError
from stack.idp_users import DEMO_USERS

log = logging.getLogger(__name__)

SERVICE_USER = "cvmfs-svc"
BUCKET_AGENT_USER = "cvmfs-svc-buckets"
REQUIRED_PACKAGES = ("ceph-mon", "ceph-osd", "radosgw", "ceph-common", "uuid-runtime")

MON_ID = "a"
RGW_NAME = "client.rgw.svc"
# A Unix socket path (the admin sockets under run/) must fit in sockaddr_un.sun_path.
_MAX_SOCKET_PATH = 107
_POLL_S = 0.5
_MON_TIMEOUT_S = 60.0
_OSD_TIMEOUT_S = 120.0
# RGW creates its pools on first start: 14-19 s measured on an idle 2-core box.
_RGW_TIMEOUT_S = 180.0
_STOP_TIMEOUT_S = 10.0
_CLI_TIMEOUT_S = 60.0


class CephError(StackError):
    """The local Ceph cluster or its S3 users could not be set up or administered."""


class ClusterRecord(BaseModel):
    """What creation decided once and every restart must reuse (stored as cluster.json)."""

    fsid: str
    osd_id: int
    osd_uuid: str
    osd_size_gib: int
    mon_port_v2: int
    mon_port_v1: int


class _S3Key(BaseModel):
    model_config = ConfigDict(extra="ignore")

    user: str
    access_key: str
    secret_key: str


class _RgwUser(BaseModel):
    model_config = ConfigDict(extra="ignore")

    user_id: str
    keys: list[_S3Key] = Field(default_factory=list)
    system: str = "false"


class _OsdState(BaseModel):
    model_config = ConfigDict(extra="ignore", populate_by_name=True)

    osd: int
    up: int
    in_: int = Field(alias="in")
    up_from: int = 0


class _OsdDump(BaseModel):
    model_config = ConfigDict(extra="ignore")

    epoch: int
    osds: list[_OsdState] = Field(default_factory=list)


@dataclass(frozen=True)
class CephLayout:
    """Where every file of one cluster lives; nothing goes to /etc/ceph."""

    base: Path

    @property
    def conf(self) -> Path:
        return self.base / "ceph.conf"

    @property
    def record(self) -> Path:
        return self.base / "cluster.json"

    @property
    def admin_keyring(self) -> Path:
        return self.base / "keyring"

    @property
    def mon_keyring(self) -> Path:
        return self.base / "mon.keyring"

    @property
    def monmap(self) -> Path:
        return self.base / "monmap"

    @property
    def run_dir(self) -> Path:
        return self.base / "run"

    @property
    def log_dir(self) -> Path:
        return self.base / "log"

    @property
    def rgw_dir(self) -> Path:
        return self.base / "rgw"

    @property
    def lock_file(self) -> Path:
        return self.base / ".lock"

    def osd_dir(self, osd_id: int) -> Path:
        return self.base / "osd" / f"ceph-{osd_id}"

    def pid_file(self, daemon: str) -> Path:
        return self.run_dir / f"{daemon}.pid"

    def log_file(self, daemon: str) -> Path:
        return self.log_dir / f"{daemon}.log"

    def launch_log(self, daemon: str) -> Path:
        """stdout/stderr of the launch command, where errors before daemonizing land."""
        return self.log_dir / f"{daemon}.launch.log"

    def created_entries(self) -> list[Path]:
        """Everything creation writes; an incomplete cluster is discarded by removing these."""
        names = ["ceph.conf", "cluster.json", "keyring", "mon.keyring", "monmap"]
        dirs = ["run", "log", "mon", "osd", "rgw", "crash"]
        return [self.base / n for n in names + dirs]


@dataclass(frozen=True)
class _Daemon:
    name: str  # Ceph entity name, also the pid and log file name
    binary: str
    args: tuple[str, ...]


class Ceph:
    """The stack's Ceph cluster; `base_dir` is this component's own directory (…/ceph)."""

    name = "ceph"

    def __init__(self, settings: Settings, base_dir: Path) -> None:
        self._settings = settings
        self._ceph = settings.ceph
        self.layout = CephLayout(base_dir.resolve())

    # ----------------------------------------------------------------- Component interface

    def missing_packages(self) -> list[str]:
        return packages.missing_debian(REQUIRED_PACKAGES)

    def start(self) -> None:
        """Create, restart or leave alone the cluster, then make sure both S3 users exist."""
        missing = self.missing_packages()
        if missing:
            raise PackageError(
                f"Debian packages missing: {' '.join(missing)}; `stack up` installs them, or run "
                f"`apt-get install -y --no-install-recommends {' '.join(missing)}`"
            )
        self.layout.base.mkdir(parents=True, exist_ok=True)
        self._check_socket_path_length()
        started = time.monotonic()
        with self._locked():
            record = self._read_record()
            if record is None:
                self._discard_incomplete()
                record = self._create()
                action = "created"
            elif self._running_daemons(record) == self._daemons(record) and self._answers():
                action = "already running"
            else:
                self._restart(record)
                action = "restarted"
            self._ensure_users()
        log.info(
            "ceph %s fsid=%s s3=%s took_s=%.1f",
            action,
            record.fsid,
            self._ceph.s3_endpoint,
            time.monotonic() - started,
        )

    def stop(self) -> None:
        """SIGTERM rgw, osd, mon (in that order) by pid file; SIGKILL after 10 s."""
        if not self.layout.base.exists():
            return
        with self._locked():
            record = self._read_record()
            osd_id = record.osd_id if record else 0
            for daemon in reversed(self._daemons_for(osd_id)):
                self._stop_daemon(daemon)

    def health(self) -> Health:
        url = self._ceph.s3_endpoint
        record = self._read_record()
        if record is None:
            return Health(self.name, False, url, f"no cluster in {self.layout.base}")
        problems = [
            f"{d.name} not running" for d in self._daemons(record) if self._pid_of(d) is None
        ]
        if not self._mon_answers():
            problems.append(f"mon does not answer on {LOOPBACK}:{self._ceph.mon_port_v2}")
        if not self._rgw_answers():
            problems.append(f"radosgw does not answer HTTP on {url}")
        if problems:
            return Health(self.name, False, url, "; ".join(problems))
        return Health(self.name, True, url, f"fsid={record.fsid} mon, osd, radosgw up")

    # ------------------------------------------------------------------ beyond the protocol

    def purge(self) -> None:
        """Stop the cluster and delete every file it wrote (its data included)."""
        self.stop()
        with self._locked():
            self._remove_created_entries()

    def record(self) -> ClusterRecord | None:
        """The cluster's fixed facts (fsid, OSD), or None when no cluster was created."""
        return self._read_record()

    def running_pids(self) -> dict[str, int]:
        """Pid of each daemon of this cluster that runs now, by Ceph entity name."""
        record = self._read_record()
        daemons = self._daemons(record) if record else self._daemons_for(0)
        pids = {d.name: self._pid_of(d) for d in daemons}
        return {name: pid for name, pid in pids.items() if pid is not None}

    # ------------------------------------------------------------------------- creation

    def _create(self) -> ClusterRecord:
        c, lay = self._ceph, self.layout
        self._require_free_ports([c.mon_port_v2, c.mon_port_v1, c.rgw_port])
        for d in (lay.run_dir, lay.log_dir, lay.base / "mon", lay.rgw_dir, lay.base / "crash"):
            d.mkdir(parents=True, exist_ok=True)
        fsid = _uuidgen()
        self._write_conf(fsid, c.osd_size_gib)
        log.info("ceph creating cluster fsid=%s dir=%s", fsid, lay.base)

        conf = ["--conf", str(lay.conf)]
        authtool = ["ceph-authtool", "--create-keyring"]
        self._run(
            [*authtool, str(lay.mon_keyring), "--gen-key", "-n", "mon.", "--cap", "mon", "allow *"]
        )
        admin_caps = _caps("--cap", mon="allow *", osd="allow *", mgr="allow *", mds="allow *")
        self._run(
            [*authtool, str(lay.admin_keyring), "--gen-key", "-n", "client.admin", *admin_caps]
        )
        self._run(
            ["ceph-authtool", str(lay.mon_keyring), "--import-keyring", str(lay.admin_keyring)]
        )
        monmap = ["--addv", MON_ID, self._mon_addrs(), str(lay.monmap)]
        self._run(["monmaptool", "--create", "--clobber", "--fsid", fsid, *monmap])
        mon_keys = ["--monmap", str(lay.monmap), "--keyring", str(lay.mon_keyring)]
        self._run(["ceph-mon", *conf, "--mkfs", "-i", MON_ID, *mon_keys])
        mon, _, _ = self._daemons_for(0)
        self._launch(mon)
        self._wait_mon(mon)

        osd_uuid = _uuidgen()
        osd_id = int(self._ceph_cli(["osd", "new", osd_uuid]).strip())
        osd_dir = lay.osd_dir(osd_id)
        osd_dir.mkdir(parents=True, exist_ok=True)
        # --no-mon-config: without it mkfs fails with "failed to fetch mon config" (§2.3).
        mkfs = ["--mkfs", "--mkkey", "--osd-uuid", osd_uuid, "--no-mon-config"]
        self._run(["ceph-osd", *conf, "-i", str(osd_id), *mkfs])
        osd_caps = _caps(osd="allow *", mon="allow profile osd", mgr="allow profile osd")
        self._ceph_cli(["auth", "add", f"osd.{osd_id}", *osd_caps, "-i", str(osd_dir / "keyring")])
        rgw_caps = _caps(mon="allow rw", osd="allow rwx", mgr="allow rw")
        rgw_keyring = str(lay.rgw_dir / "keyring")
        self._ceph_cli(["auth", "get-or-create", RGW_NAME, *rgw_caps, "-o", rgw_keyring])
        record = ClusterRecord(
            fsid=fsid,
            osd_id=osd_id,
            osd_uuid=osd_uuid,
            osd_size_gib=c.osd_size_gib,
            mon_port_v2=c.mon_port_v2,
            mon_port_v1=c.mon_port_v1,
        )
        # Written once every on-disk piece exists: from here on the cluster is restartable.
        lay.record.write_text(record.model_dump_json(indent=2) + "\n")
        _, osd, rgw = self._daemons(record)
        self._start_osd(osd)
        self._launch(rgw)
        self._wait_rgw(rgw)
        return record

    def _restart(self, record: ClusterRecord) -> None:
        c = self._ceph
        if (record.mon_port_v2, record.mon_port_v1) != (c.mon_port_v2, c.mon_port_v1):
            raise CephError(
                f"the cluster in {self.layout.base} was created with mon ports "
                f"{record.mon_port_v2}/{record.mon_port_v1} but the settings say "
                f"{c.mon_port_v2}/{c.mon_port_v1}; restore those settings or purge the cluster "
                f"(stack down, then delete {self.layout.base})"
            )
        # Re-rendered so that a changed RGW port takes effect; fsid and OSD size are fixed.
        self._write_conf(record.fsid, record.osd_size_gib)
        mon, osd, rgw = self._daemons(record)
        if self._pid_of(mon) is None:
            self._require_free_ports([c.mon_port_v2, c.mon_port_v1])
            self._launch(mon)
        self._wait_mon(mon)
        if self._pid_of(osd) is None:
            self._start_osd(osd)
        if self._pid_of(rgw) is None:
            self._require_free_ports([c.rgw_port])
            self._launch(rgw)
        self._wait_rgw(rgw)

    def _start_osd(self, osd: _Daemon) -> None:
        # up_from must exceed the epoch seen before the start: after a restart the osdmap can
        # still say "up" for the previous OSD process until the new one boots.
        before = self._osd_dump().epoch
        osd_id = int(osd.name.split(".")[1])
        self._launch(osd)

        def booted() -> bool:
            for state in self._osd_dump().osds:
                if state.osd == osd_id:
                    return bool(state.up and state.in_ and state.up_from > before)
            return False

        self._wait(booted, osd, _OSD_TIMEOUT_S, f"osd.{osd_id} up and in")

    def _write_conf(self, fsid: str, osd_size_gib: int) -> None:
        self.layout.conf.write_text(
            _render_conf(self.layout.base, fsid, self._settings, osd_size_gib)
        )

    def _discard_incomplete(self) -> None:
        leftovers = [p for p in self.layout.created_entries() if p.exists()]
        if not leftovers:
            return
        log.warning("ceph discarding an incompletely created cluster dir=%s", self.layout.base)
        for daemon in reversed(self._daemons_for(0)):
            self._stop_daemon(daemon)
        self._remove_created_entries()

    def _remove_created_entries(self) -> None:
        for path in self.layout.created_entries():
            if path.is_dir():
                shutil.rmtree(path)
            else:
                path.unlink(missing_ok=True)

    # -------------------------------------------------------------------------- daemons

    def _daemons_for(self, osd_id: int) -> tuple[_Daemon, _Daemon, _Daemon]:
        conf = ("--conf", str(self.layout.conf))
        return (
            _Daemon(f"mon.{MON_ID}", "ceph-mon", (*conf, "-i", MON_ID)),
            _Daemon(f"osd.{osd_id}", "ceph-osd", (*conf, "-i", str(osd_id))),
            _Daemon(RGW_NAME, "radosgw", (*conf, "-n", RGW_NAME)),
        )

    def _daemons(self, record: ClusterRecord) -> tuple[_Daemon, _Daemon, _Daemon]:
        return self._daemons_for(record.osd_id)

    def _running_daemons(self, record: ClusterRecord) -> tuple[_Daemon, ...]:
        return tuple(d for d in self._daemons(record) if self._pid_of(d) is not None)

    def _launch(self, daemon: _Daemon) -> None:
        """Run the daemon's command (it forks into the background) and wait for its pid file."""
        launch_log = self.layout.launch_log(daemon.name)
        with launch_log.open("ab") as out:
            try:
                # Its own session: Ctrl-C in the terminal that ran `up` must not reach it.
                result = subprocess.run(
                    [daemon.binary, *daemon.args],
                    stdin=subprocess.DEVNULL,
                    stdout=out,
                    stderr=out,
                    timeout=_CLI_TIMEOUT_S,
                    start_new_session=True,
                    check=False,
                )
            except subprocess.TimeoutExpired as exc:
                raise StartError(self._failure(daemon, f"{daemon.binary} did not return")) from exc
        if result.returncode != 0:
            raise StartError(
                self._failure(daemon, f"{daemon.binary} exited with {result.returncode}")
            )
        self._wait(lambda: self._pid_of(daemon) is not None, None, 30.0, f"{daemon.name} pid")
        log.info("ceph started daemon=%s pid=%s", daemon.name, self._pid_of(daemon))

    def _pid_of(self, daemon: _Daemon) -> int | None:
        """The daemon's pid when its pid file names a live process of this cluster."""
        # This cluster's ceph.conf in the command line tells our daemon from a recycled pid
        # (zombies count as gone: nothing reaps the daemonized processes here).
        return procs.running_pid(self.layout.pid_file(daemon.name), str(self.layout.conf))

    def _stop_daemon(self, daemon: _Daemon) -> None:
        pid = self._pid_of(daemon)
        if pid is not None:
            # suppress: the daemon may exit on its own between the check and the signal.
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGTERM)
            if procs.wait_gone([pid], _STOP_TIMEOUT_S):
                log.warning("ceph daemon=%s pid=%d ignored SIGTERM; SIGKILL", daemon.name, pid)
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)
                procs.wait_gone([pid], _STOP_TIMEOUT_S)
            log.info("ceph stopped daemon=%s pid=%d", daemon.name, pid)
        self.layout.pid_file(daemon.name).unlink(missing_ok=True)

    # ------------------------------------------------------------------------ readiness

    def _wait_mon(self, mon: _Daemon) -> None:
        self._wait(lambda: self._ceph_cli_ok(["mon", "stat"]), mon, _MON_TIMEOUT_S, "mon answering")

    def _wait_rgw(self, rgw: _Daemon) -> None:
        self._wait(self._rgw_answers, rgw, _RGW_TIMEOUT_S, f"radosgw on {self._ceph.s3_endpoint}")

    def _wait(
        self,
        ready: Callable[[], bool],
        daemon: _Daemon | None,
        timeout_s: float,
        what: str,
    ) -> None:
        deadline = time.monotonic() + timeout_s
        while not ready():
            if daemon is not None and self._pid_of(daemon) is None:
                raise StartError(self._failure(daemon, f"{daemon.name} died waiting for {what}"))
            if time.monotonic() > deadline:
                name = daemon.name if daemon else "ceph"
                raise StartError(
                    self._failure(daemon, f"{name}: no {what} after {timeout_s:.0f} s")
                )
            time.sleep(_POLL_S)

    def _answers(self) -> bool:
        return self._mon_answers() and self._rgw_answers()

    def _mon_answers(self) -> bool:
        # The msgr2 banner is what a mon sends first on its v2 port: cheap and unambiguous.
        try:
            with socket.create_connection((LOOPBACK, self._ceph.mon_port_v2), timeout=2) as s:
                return s.recv(8) == b"ceph v2\n"
        except OSError:
            return False

    def _rgw_answers(self) -> bool:
        # Anonymous GET / lists the buckets of nobody: 200 and an empty list.
        return probe.http("GET", self._ceph.s3_endpoint + "/", timeout_s=2.0).status == 200

    def _osd_dump(self) -> _OsdDump:
        try:
            return _OsdDump.model_validate_json(self._ceph_cli(["osd", "dump", "--format", "json"]))
        except ValidationError as exc:
            raise CephError(f"unexpected `ceph osd dump` output: {exc}") from exc

    def _failure(self, daemon: _Daemon | None, what: str) -> str:
        if daemon is None:
            return what
        tails = [
            _tail(self.layout.launch_log(daemon.name)),
            _tail(self.layout.log_file(daemon.name)),
        ]
        detail = "\n".join(t for t in tails if t)
        return (
            f"{what}; see {self.layout.log_file(daemon.name)} and "
            f"{self.layout.launch_log(daemon.name)}, then `stack down` and `stack up` again"
            + (f"\n--- last log lines ---\n{detail}" if detail else "")
        )

    # -------------------------------------------------------------------------- S3 users

    def _ensure_users(self) -> None:
        c = self._ceph
        self._ensure_user(
            SERVICE_USER,
            "CVMFS distribution service",
            c.service_access_key,
            c.service_secret_key.get_secret_value(),
        )
        self._ensure_user(
            BUCKET_AGENT_USER,
            "CVMFS distribution service: bucket agent",
            c.bucket_agent_access_key,
            c.bucket_agent_secret_key.get_secret_value(),
        )
        self._ensure_system_flag(SERVICE_USER, system=False)
        self._ensure_system_flag(BUCKET_AGENT_USER, system=True)
        self._ensure_user(
            c.demo_user, "Demo user", c.demo_access_key, c.demo_secret_key.get_secret_value()
        )
        # One RGW user per identity of the local identity provider (uid = username), so each
        # demo user owns their buckets as themselves, with keys that do not expire (what
        # aws cli, s3cmd and rclone users are used to). Not RGW's STS
        # AssumeRoleWithWebIdentity: on 16.2 it needs the STS key, an OIDC provider entity
        # with the issuer's TLS thumbprint, roles and role policies, and gives credentials
        # that expire with the token, so every upload tool would need refreshing.
        for user in DEMO_USERS:
            self._ensure_user(
                user.s3_uid,
                f"{user.name} (demo identity)",
                user.s3_access_key,
                user.s3_secret_key.get_secret_value(),
            )

    def _ensure_user(self, uid: str, display_name: str, access_key: str, secret: str) -> None:
        if self._s3_keys_work(access_key, secret):
            return
        user = self._rgw_user(uid)
        if user is None:
            self._radosgw_admin(
                [
                    "user",
                    "create",
                    f"--uid={uid}",
                    f"--display-name={display_name}",
                    f"--access-key={access_key}",
                    f"--secret-key={secret}",
                ],
                secret,
            )
            log.info("ceph created s3 user uid=%s access_key=%s", uid, access_key)
        elif not any(k.access_key == access_key and k.secret_key == secret for k in user.keys):
            self._radosgw_admin(
                [
                    "key",
                    "create",
                    f"--uid={uid}",
                    "--key-type=s3",
                    f"--access-key={access_key}",
                    f"--secret-key={secret}",
                ],
                secret,
            )
            log.info("ceph set s3 key uid=%s access_key=%s", uid, access_key)
        if not self._s3_keys_work(access_key, secret):
            raise CephError(
                f"S3 user {uid} exists but {self._ceph.s3_endpoint} refuses its key "
                f"{access_key}; check `radosgw-admin --conf {self.layout.conf} user info "
                f"--uid={uid}`"
            )

    def _ensure_system_flag(self, uid: str, *, system: bool) -> None:
        """The bucket agent reads users' buckets and manages their notifications.

        RGW 16.2 ignores bucket policies for the notification API (GetBucketNotification is
        AccessDenied even when the policy grants it), so the agent is a system user; system
        users get HTTP 500 on CreateBucket, so the service user that owns buckets is not one.
        """
        user = self._rgw_user(uid)
        wanted = "true" if system else "false"
        if user is not None and user.system != wanted:
            self._run(self._admin_cmd(["user", "modify", f"--uid={uid}", f"--system={wanted}"]))
            log.info("ceph set s3 user uid=%s system=%s", uid, wanted)

    def _s3_keys_work(self, access_key: str, secret: str) -> bool:
        s3 = boto3.client(
            "s3",
            endpoint_url=self._ceph.s3_endpoint,
            aws_access_key_id=access_key,
            aws_secret_access_key=secret,
            region_name=self._ceph.region,
            config=Config(retries={"max_attempts": 1}, connect_timeout=5, read_timeout=10),
        )
        try:
            s3.list_buckets()
        except ClientError as exc:
            if exc.response.get("Error", {}).get("Code") in (
                "InvalidAccessKeyId",
                "SignatureDoesNotMatch",
                "AccessDenied",
            ):
                return False
            raise CephError(f"S3 check against {self._ceph.s3_endpoint} failed: {exc}") from exc
        return True

    def _rgw_user(self, uid: str) -> _RgwUser | None:
        result = self._run_raw(self._admin_cmd(["user", "info", f"--uid={uid}"]))
        if result.returncode != 0:
            # ENOENT from radosgw-admin: "could not fetch user info: no user info saved".
            if "no user info saved" in result.stderr:
                return None
            raise CephError(f"radosgw-admin user info --uid={uid} failed: {result.stderr.strip()}")
        try:
            return _RgwUser.model_validate_json(result.stdout)
        except ValidationError as exc:
            raise CephError(f"unexpected radosgw-admin user info output: {exc}") from exc

    def _radosgw_admin(self, args: list[str], secret: str) -> str:
        cmd = self._admin_cmd(args)
        result = self._run_raw(cmd)
        if result.returncode == 0:
            return result.stdout
        # The secret is on the command line; it must not reach a log or a terminal.
        shown = " ".join(cmd).replace(secret, "***")
        raise CephError(f"`{shown}` failed: {result.stderr.strip().replace(secret, '***')}")

    def _admin_cmd(self, args: list[str]) -> list[str]:
        return ["radosgw-admin", "--conf", str(self.layout.conf), *args]

    # ----------------------------------------------------------------------- subprocesses

    def _ceph_cli(self, args: Sequence[str]) -> str:
        return self._run(["ceph", "--conf", str(self.layout.conf), "--connect-timeout", "5", *args])

    def _ceph_cli_ok(self, args: Sequence[str]) -> bool:
        cmd = ["ceph", "--conf", str(self.layout.conf), "--connect-timeout", "3", *args]
        return self._run_raw(cmd).returncode == 0

    def _run(self, cmd: list[str]) -> str:
        result = self._run_raw(cmd)
        if result.returncode != 0:
            raise CephError(
                f"`{' '.join(cmd)}` exited with {result.returncode}: {result.stderr.strip()}; "
                f"logs are in {self.layout.log_dir}"
            )
        return result.stdout

    def _run_raw(self, cmd: list[str]) -> subprocess.CompletedProcess[str]:
        env = {**os.environ, "CEPH_CONF": str(self.layout.conf)}
        try:
            return subprocess.run(
                cmd,
                stdin=subprocess.DEVNULL,
                capture_output=True,
                text=True,
                env=env,
                timeout=_CLI_TIMEOUT_S,
                check=False,
            )
        except FileNotFoundError as exc:
            raise CephError(f"{cmd[0]} is not installed; run `stack up` to install it") from exc
        except subprocess.TimeoutExpired as exc:
            raise CephError(f"`{cmd[0]} {cmd[1] if len(cmd) > 1 else ''}` hung") from exc

    # ---------------------------------------------------------------------------- helpers

    def _read_record(self) -> ClusterRecord | None:
        try:
            return ClusterRecord.model_validate_json(self.layout.record.read_text())
        except FileNotFoundError:
            return None
        except ValidationError as exc:
            raise CephError(
                f"{self.layout.record} is unreadable ({exc}); purge the cluster "
                f"(stack down, then delete {self.layout.base})"
            ) from exc

    def _mon_addrs(self) -> str:
        c = self._ceph
        return f"[v2:{LOOPBACK}:{c.mon_port_v2},v1:{LOOPBACK}:{c.mon_port_v1}]"

    def _check_socket_path_length(self) -> None:
        longest = self.layout.run_dir / f"{RGW_NAME}.asok"
        if len(str(longest)) > _MAX_SOCKET_PATH:
            raise CephError(
                f"{longest} is longer than a Unix socket path may be ({_MAX_SOCKET_PATH}); "
                "use a shorter data directory"
            )

    def _require_free_ports(self, ports: list[int]) -> None:
        busy = {port: probe.listener_pids(port) for port in ports if probe.is_listening(port)}
        if busy:
            raise PortInUseError(
                f"ports already in use on {LOOPBACK} (port: pids): {busy}; stop that process or "
                "move this stack to other ports (settings.ceph)"
            )

    @contextlib.contextmanager
    def _locked(self) -> Iterator[None]:
        """Serialise start/stop of this cluster across processes (two `up`s at once)."""
        self.layout.base.mkdir(parents=True, exist_ok=True)
        with self.layout.lock_file.open("w") as fh:
            fcntl.flock(fh, fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(fh, fcntl.LOCK_UN)


def _render_conf(base: Path, fsid: str, settings: Settings, osd_size_gib: int) -> str:
    c = settings.ceph
    mon_host = f"[v2:{LOOPBACK}:{c.mon_port_v2},v1:{LOOPBACK}:{c.mon_port_v1}]"
    # $name and $id are Ceph metavariables, expanded by each daemon.
    return f"""\
# Written by stack/ceph.py on every start; edits are lost.
[global]
fsid = {fsid}
mon_host = {mon_host}
public_addr = {LOOPBACK}
cluster_addr = {LOOPBACK}
auth_cluster_required = cephx
auth_service_required = cephx
auth_client_required = cephx
keyring = {base}/keyring
run_dir = {base}/run
crash_dir = {base}/crash
admin_socket = {base}/run/$name.asok
pid_file = {base}/run/$name.pid
log_file = {base}/log/$name.log
mon_cluster_log_file = {base}/log/cluster.log
osd_pool_default_size = 1
osd_pool_default_min_size = 1
mon_allow_pool_size_one = true
mon_warn_on_pool_no_redundancy = false
osd_pool_default_pg_num = 8
osd_pool_default_pgp_num = 8
osd_pool_default_pg_autoscale_mode = off
mon_max_pg_per_osd = 1000
osd_crush_chooseleaf_type = 0
mon_allow_pool_delete = true
auth_allow_insecure_global_id_reclaim = false
ms_bind_ipv6 = false

[mon]
mon_data = {base}/mon/ceph-$id
mon_data_avail_warn = 1
mon_data_avail_crit = 0

[osd]
osd_data = {base}/osd/ceph-$id
keyring = {base}/osd/ceph-$id/keyring
osd_objectstore = bluestore
bluestore_block_create = true
# A sparse file: only what is written takes disk space.
bluestore_block_size = {osd_size_gib * 1024**3}
bluestore_cache_autotune = false
bluestore_cache_size = 134217728
osd_memory_target = 939524096
osd_op_num_shards = 1
osd_op_num_threads_per_shard = 2

[{RGW_NAME}]
keyring = {base}/rgw/keyring
rgw_data = {base}/rgw
# civetweb, not beast: beast aborts on DeleteObjects when the bucket has AMQP notifications
# (services-notes §2.7 pitfall 2). Topics must use amqp-ack-level=none (see
# buckets/bucket_wiring.AMQP_ACK_LEVEL): with broker acks this radosgw segfaults.
rgw_frontends = civetweb port={LOOPBACK}:{c.rgw_port} num_threads=64
rgw_thread_pool_size = 64
rgw_enable_usage_log = false
"""


def _caps(flag: str | None = None, **caps: str) -> list[str]:
    """Capability arguments: kind, grant, ... (each pair preceded by `flag` when given)."""
    prefix = [flag] if flag else []
    return [arg for kind, grant in caps.items() for arg in (*prefix, kind, grant)]


def _uuidgen() -> str:
    try:
        return subprocess.run(
            ["uuidgen"], capture_output=True, text=True, check=True, timeout=10
        ).stdout.strip()
    except (FileNotFoundError, subprocess.CalledProcessError) as exc:
        raise CephError(
            "uuidgen failed; install it with `apt-get install -y uuid-runtime`"
        ) from exc


def _tail(path: Path, lines: int = 15) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except FileNotFoundError:
        return ""
