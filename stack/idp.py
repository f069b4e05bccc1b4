"""The local OIDC identity provider: panva's `oidc-provider` (npm) run by our stack/idp/server.mjs.

Authorization code + PKCE (S256), the device authorization grant (RFC 8628) for
`cvmfs-svc login`, discovery, JWKS, JWT access tokens for the service's audience
with `groups` as INDIGO IAM sends them, logout; the demo users of stack/idp_users.py log in on
its own login page. Its signing keys live in `<data_dir>/idp/`, so tokens survive a restart.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
from pathlib import Path

from stack import packages, probe
from stack.daemon import Daemon
from stack.idp_users import DEMO_USERS, DemoUser

SERVER_DIR = Path(__file__).resolve().parent / "idp"
# Access tokens name this resource indicator (RFC 8707); the provider maps it to the audience.
RESOURCE_INDICATOR = "urn:cvmfs-distribution-service:api"
RESOURCE_SCOPE = "cvmfs"
DEVICE_CODE_GRANT = "urn:ietf:params:oauth:grant-type:device_code"


def npm_install_stamp() -> Path:
    """Exists when `npm ci` installed exactly the committed package-lock.json (packages.npm_ci)."""
    digest = hashlib.sha256((SERVER_DIR / "package-lock.json").read_bytes()).hexdigest()[:16]
    return SERVER_DIR / "node_modules" / f".cvmfs-svc-npm-ci-{digest}"


def _password_record(user: DemoUser) -> dict[str, str]:
    # scrypt (n=2**14, r=8, p=1), checked by server.mjs; the salt is per user and fixed, so
    # the config file does not change between starts.
    salt = hashlib.sha256(f"cvmfs-svc-idp:{user.username}".encode()).digest()[:16]
    digest = hashlib.scrypt(
        user.password.get_secret_value().encode(), salt=salt, n=2**14, r=8, p=1, dklen=32
    )
    return {"password_salt": salt.hex(), "password_scrypt": digest.hex()}


class IdentityProvider(Daemon):
    name = "idp"
    start_timeout_s = 30.0

    @property
    def url(self) -> str:
        return self.settings.idp.issuer_url

    @property
    def config_file(self) -> Path:
        return self.base_dir / "config.json"

    def ports(self) -> list[int]:
        return [self.settings.idp.port]

    def argv(self) -> list[str]:
        node = shutil.which("node") or "node"
        return [node, str(SERVER_DIR / "server.mjs"), str(self.config_file)]

    def missing_packages(self) -> list[str]:
        missing = packages.missing_debian(["nodejs"])
        # NodeSource's nodejs ships npm; Debian's does not.
        if shutil.which("npm") is None and "npm" not in missing:
            missing.append("npm")
        if not npm_install_stamp().exists():
            missing.append(packages.NPM_CI_PREFIX + str(SERVER_DIR))
        return missing

    def clients(self) -> list[dict[str, object]]:
        """The dashboard, registered with the URLs of the service's public address, and the
        command line (`cvmfs-svc login`), a public client of the device authorization grant."""
        oidc, api = self.settings.oidc, self.settings.api
        command_line: dict[str, object] = {
            "client_id": oidc.cli_client_id,
            "client_name": "cvmfs-svc command line",
            "grant_types": [DEVICE_CODE_GRANT, "refresh_token"],
            "response_types": [],
            "redirect_uris": [],
            "token_endpoint_auth_method": "none",
        }
        client: dict[str, object] = {
            "client_id": oidc.client_id,
            "client_name": "CVMFS distribution service dashboard",
            "redirect_uris": [api.dashboard_redirect_uri],
            "post_logout_redirect_uris": [api.dashboard_url],
            "grant_types": ["authorization_code", "refresh_token"],
            "response_types": ["code"],
        }
        if oidc.client_secret is None:
            client["token_endpoint_auth_method"] = "none"
        else:
            client["client_secret"] = oidc.client_secret.get_secret_value()
            client["token_endpoint_auth_method"] = "client_secret_basic"
        return [client, command_line]

    def config(self) -> dict[str, object]:
        return {
            "issuer": self.settings.idp.issuer_url,
            "port": self.settings.idp.port,
            "audience": self.settings.oidc.audience,
            "resource_indicator": RESOURCE_INDICATOR,
            "resource_scope": RESOURCE_SCOPE,
            "access_token_ttl_s": self.settings.idp.access_token_ttl_s,
            "device_code_ttl_s": self.settings.idp.device_code_ttl_s,
            "behind_proxy": False,
            "clients": self.clients(),
            "users": [
                {
                    "username": user.username,
                    "subject": user.subject,
                    "name": user.name,
                    "email": user.email,
                    "groups": list(user.groups),
                    **_password_record(user),
                }
                for user in DEMO_USERS
            ],
        }

    def extra_env(self) -> dict[str, str]:
        return {"NODE_ENV": "production"}

    def prepare(self) -> None:
        # The file holds the client secret and password hashes: its owner only.
        fd = os.open(self.config_file, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as out:
            json.dump(self.config(), out, indent=1)

    def probe(self) -> tuple[bool, str]:
        url = self.settings.idp.issuer_url.rstrip("/") + "/.well-known/openid-configuration"
        answer = probe.http("GET", url)
        if answer.status != 200:
            return False, f"GET {url} -> {answer.status or answer.error}"
        issuer = (answer.json() or {}).get("issuer")
        if issuer != self.settings.idp.issuer_url:
            return False, f"discovery names issuer {issuer!r}, not {self.settings.idp.issuer_url!r}"
        return True, "GET /.well-known/openid-configuration -> 200"
