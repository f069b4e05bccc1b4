"""`cvmfs-svc login`, `token` and `logout` as a user runs them, against the stack's provider.

The CLI is a real subprocess; the test is the user's browser (httpx) on the URL it prints, and
the user API (served in-process) is what the printed token must open. A code that is denied
and one that expires (the test stack's device codes live DEVICE_CODE_TTL_S) end the CLI with
their message; the expired one waits in the background while the rest runs.
"""

from __future__ import annotations

import json
import stat
import time
import uuid
from pathlib import Path

import httpx
import pytest
from pydantic import SecretStr

from service.api import create_app
from service.repositories import RepositoryClaim, RepositoryRegistry
from service.settings import Settings
from stack.idp_users import demo_user
from tests.cli_login import finish, run_cli, start_login
from tests.conftest import DEVICE_CODE_TTL_S
from tests.idp_login import approve_device_code
from tests.test_api_support import ServedApp, free_port

pytestmark = [pytest.mark.stack]


def _listed(port: int, token: str) -> set[str]:
    answer = httpx.get(
        f"http://127.0.0.1:{port}/repositories",
        headers={"Authorization": f"Bearer {token}"},
        timeout=30,
    )
    assert answer.status_code == 200, answer.text
    return {r["fqrn"] for r in answer.json()["repositories"]}


def test_device_login_token_renewal_logout_denial_and_expiry(idp: Settings, tmp_path: Path) -> None:
    carol = demo_user("carol")
    password = carol.password.get_secret_value()
    # Started first: its code expires while the rest of the test runs.
    expiring, _, expiring_code = start_login(idp, tmp_path / "expiring")
    started = time.monotonic()

    denied, denied_url, denied_code = start_login(idp, tmp_path / "denied")
    denial = approve_device_code(denied_url, denied_code, carol.username, password, deny=True)
    assert "The sign-in was denied." in denial.text
    code, _, err = finish(denied, timeout_s=30)
    assert code != 0
    assert "was denied at the issuer; nothing was saved" in err
    assert "run `cvmfs-svc login` again" in err
    assert not (tmp_path / "denied" / "cvmfs-svc" / "token.json").exists()

    home = tmp_path / "carol"
    login, url, user_code = start_login(idp, home)
    signed_in = approve_device_code(url, user_code, carol.username, password)
    assert signed_in.status_code == 200 and "is signed in" in signed_in.text, signed_in.text
    code, out, err = finish(login, timeout_s=30)
    assert code == 0, err
    assert f"Logged in as {carol.username}" in out
    token_file = home / "cvmfs-svc" / "token.json"
    assert stat.S_IMODE(token_file.stat().st_mode) == 0o600
    assert stat.S_IMODE(token_file.parent.stat().st_mode) == 0o700
    saved = json.loads(token_file.read_text())
    assert saved["refresh_token"] and saved["issuer"] == idp.oidc.issuer_url

    port = free_port()
    api_settings = idp.model_copy(
        update={
            "database_url": SecretStr(f"sqlite:///{tmp_path / 'registry.sqlite3'}"),
            "api": idp.api.model_copy(update={"port": port}),
        }
    )
    atlas = f"cli{uuid.uuid4().hex[:6]}-atlas.{idp.repository_domain}"
    registry = RepositoryRegistry.open(api_settings)
    try:
        registry.claim(
            RepositoryClaim(
                fqrn=atlas,
                kind="group",
                owner_subject=demo_user("bob").subject,
                owner_username="bob",
                group="atlas",
                bucket=f"{atlas.split('.')[0]}-bucket",
            )
        )
    finally:
        registry.close()
    with ServedApp(create_app(api_settings), port):
        printed = run_cli(idp, home, "token")
        assert printed.returncode == 0, printed.stderr
        first = printed.stdout.strip()
        assert first == saved["access_token"]  # valid for an hour: printed as saved
        assert _listed(port, first) == {atlas}  # carol's groups' repository, as carol

        # Expiring within the minute: renewed with the refresh token, and the file updated.
        token_file.write_text(json.dumps({**saved, "expires_at": time.time() + 30}))
        renewed = run_cli(idp, home, "token")
        assert renewed.returncode == 0, renewed.stderr
        second = renewed.stdout.strip()
        assert second != first
        assert _listed(port, second) == {atlas}
        after = json.loads(token_file.read_text())
        assert after["access_token"] == second and after["expires_at"] > time.time() + 600
        assert stat.S_IMODE(token_file.stat().st_mode) == 0o600

    logout = run_cli(idp, home, "logout")
    assert logout.returncode == 0, logout.stderr
    assert "revoked its refresh token" in logout.stdout
    assert not token_file.exists()
    missing = run_cli(idp, home, "token")
    assert missing.returncode != 0 and "run `cvmfs-svc login`" in missing.stderr
    # The revoked refresh token renews nothing, even from a copy of the file.
    token_file.write_text(json.dumps({**after, "expires_at": time.time()}))
    refused = run_cli(idp, home, "token")
    assert refused.returncode != 0
    assert "the issuer refused to renew the token" in refused.stderr
    assert "run `cvmfs-svc login` again" in refused.stderr

    code, _, err = finish(expiring, timeout_s=DEVICE_CODE_TTL_S + 30)
    assert time.monotonic() - started >= DEVICE_CODE_TTL_S - 1
    assert code != 0
    assert f"the code {expiring_code} expired before it was approved" in err
    assert not (tmp_path / "expiring" / "cvmfs-svc" / "token.json").exists()
