"""The user's journey in a real headless Chromium, against the whole service as `./svc up` runs it.

The deployments runner, the bridge and the API run as processes on the test stack; each demo
user logs in through the stack's OIDC provider's own login page, and the only other actor is
boto3 with that user's own S3 keys. Screenshots of every page: test-output/screenshots/.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import boto3
import httpx
import pytest
from botocore.config import Config
from mypy_boto3_s3 import S3Client

from service.settings import Settings
from stack.idp_users import DemoUser, demo_user
from tests.browser import Browser, screenshots_dir
from tests.cli_login import finish, start_login
from tests.service_processes import running_service

pytestmark = [pytest.mark.stack, pytest.mark.slow]
WAIT_S = 180.0


@pytest.fixture(scope="module")
def service(
    vault: Settings,
    ceph: Settings,
    rabbitmq: Settings,
    registry: Settings,
    prefect_server: Settings,
    stratum0_http: Settings,
    idp: Settings,
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[Settings]:
    """The whole service, its OIDC issuer the stack's provider (the default settings): each
    demo user owns the buckets they create, so the bucket-owner check is on, as in production."""
    rules = vault.provisioning.model_copy(update={"require_bucket_owner": True})
    settings = vault.model_copy(update={"provisioning": rules})
    logs = tmp_path_factory.mktemp("dashboard-service-logs")
    print(f"\nservice logs: {logs}")
    deployments = ("provision/provision", "sync/sync", "rollback/rollback", "tag/tag")
    with running_service(settings, logs, deployments, page="/dashboard/") as running:
        yield running


@pytest.fixture(scope="module")
def shots() -> Path:
    path = screenshots_dir()
    print(f"\nscreenshots: {path}")
    return path


@pytest.fixture
def browsers(shots: Path) -> Iterator[dict[str, Browser]]:
    opened: dict[str, Browser] = {}
    yield opened
    for browser in opened.values():
        browser.close()


def _open(browsers: dict[str, Browser], shots: Path, name: str) -> Browser:
    browsers[name] = Browser(shots, name)
    return browsers[name]


def s3_as(settings: Settings, user: DemoUser) -> S3Client:
    return boto3.client(
        "s3",
        endpoint_url=settings.s3_public_url,
        aws_access_key_id=user.s3_access_key,
        aws_secret_access_key=user.s3_secret_key.get_secret_value(),
        region_name=settings.ceph.region,
        config=Config(s3={"addressing_style": "path"}),
    )


def log_in(browser: Browser, settings: Settings, username: str) -> None:
    """Through the provider's login page, as a person would."""
    browser.visit(f"{settings.api.base_url}/", "dashboard-anonymous")
    browser.click("#login", "provider-login-page")
    assert browser.driver.current_url.startswith(settings.oidc.issuer_url.rstrip("/"))
    user = demo_user(username)
    browser.find("#username").send_keys(username)
    browser.find("#password").send_keys(user.password.get_secret_value())
    browser.click("button[type=submit]", "after-login")
    browser.wait(lambda: browser.find("#username").text == username, f"{username} logged in")
    assert browser.driver.current_url == settings.api.dashboard_url
    # The session cookie is HttpOnly: page scripts cannot read it, and nothing is stored.
    assert browser.driver.execute_script("return document.cookie") == ""
    assert browser.driver.execute_script("return window.localStorage.length") == 0


def log_out(browser: Browser, settings: Settings) -> None:
    browser.click("#logout", "provider-logout")
    # The provider asks whether to end its session too (no id_token_hint is sent).
    confirm = browser.finds("button[value=yes], button[name=logout]")
    if confirm:
        confirm[0].click()
        browser.wait_loaded()
    browser.wait(
        lambda: (
            browser.driver.current_url == settings.api.dashboard_url
            and bool(browser.finds("#login"))
        ),
        "back at the dashboard, logged out",
        30,
    )
    browser.shot("logged-out")
    browser.visit(settings.api.dashboard_url, "after-logout")
    assert browser.finds("#login") and not browser.finds("#logout")


def _file_row(browser: Browser, name: str) -> str | None:
    for row in browser.finds("#files tbody tr"):
        cells = row.find_elements("css selector", "td")
        if cells and cells[0].text == name:
            return str(row.text)
    return None


def test_a_researcher_requests_uploads_mounts_tags_and_rolls_back(
    service: Settings, browsers: dict[str, Browser], shots: Path
) -> None:
    settings = service
    alice = demo_user("alice")
    fqrn = f"alice-personal.{settings.repository_domain}"
    bucket = "alice-personal"
    browser = _open(browsers, shots, "alice")
    log_in(browser, settings, "alice")

    browser.click("#request-personal", "requested")
    assert f"Requested {fqrn}" in browser.text()

    def row() -> str:
        rows = [r.text for r in browser.finds("#repositories tbody tr") if fqrn in r.text]
        return rows[0] if rows else ""

    # The page polls by itself: the repository becomes ready before its bucket exists.
    browser.wait(
        lambda: "ready" in row() and f"waiting for bucket {bucket}" in row(),
        "the repository ready and waiting for its bucket",
        WAIT_S,
    )
    browser.shot("waiting-for-bucket")
    # The command in the bucket's message is shown as code, not between backticks.
    command = browser.find("#repositories .bucket-state code").text
    assert command.endswith(f"s3 mb s3://{bucket}") and "`" not in row()
    # That long message squeezes the other columns; the time still reads on one line.
    lines = "return document.querySelector('#repositories .when').getClientRects().length"
    assert browser.driver.execute_script(lines) == 1
    s3 = s3_as(settings, alice)
    s3.create_bucket(Bucket=bucket)  # afterwards, as the user's guide says
    # Still no reload by hand: the page polls until the bucket is connected.
    browser.wait(
        lambda: "ready" in row() and "waiting" not in row(),
        "the bucket connected",
        WAIT_S,
    )
    browser.shot("bucket-connected")

    browser.click(f'a[href="/dashboard/repositories/{fqrn}"]', "repository")
    assert browser.find("#bucket").text == bucket
    assert "is connected" in browser.find("#bucket-state").text
    assert browser.find("#endpoint").text == settings.s3_public_url
    s3.put_object(Bucket=bucket, Key="cvmfs/hello.txt", Body=b"hello v1\n")
    browser.reload_until(
        lambda: _file_row(browser, "hello.txt") is not None,
        "hello.txt in the file browser",
        "file-listed",
        WAIT_S,
    )
    assert "9" in (_file_row(browser, "hello.txt") or "").split()

    browser.find("#download-conf").click()
    browser.find("#download-pub").click()
    conf = browser.downloaded(f"{fqrn}.conf")
    pub = browser.downloaded(f"{fqrn}.pub")
    assert f"CVMFS_SERVER_URL={settings.stratum0_public_url}/{fqrn}\n" in conf
    key_path = f"/etc/cvmfs/keys/{settings.repository_domain}/{fqrn}.pub"
    assert f"CVMFS_PUBLIC_KEY={key_path}\n" in conf
    assert pub.startswith("-----BEGIN PUBLIC KEY-----")
    # The key and URL are what a client needs: the published manifest is signed by that key.
    manifest = httpx.get(f"{settings.stratum0_public_url}/{fqrn}/.cvmfspublished")
    assert manifest.status_code == 200

    browser.find("#tag-name").send_keys("v1")
    browser.click("#tag-submit", "tag-started")
    run_link = browser.find(".flash.ok a.run-link").get_attribute("href") or ""
    assert run_link.startswith(f"{settings.prefect.ui_url}/runs/flow-run/")
    browser.reload_until(
        lambda: any(o.text.startswith("v1 ") for o in browser.finds("#rollback-tag option")),
        "tag v1 offered for rollback",
        "tagged",
        WAIT_S,
    )

    s3.put_object(Bucket=bucket, Key="cvmfs/hello.txt", Body=b"hello version 2\n")
    browser.reload_until(
        lambda: "16" in (_file_row(browser, "hello.txt") or "").split(),
        "hello.txt version 2 published",
        "version-2",
        WAIT_S,
    )
    revision_before = int(browser.find("#revision").text)

    browser.click("#rollback-submit", "rollback-started")
    browser.reload_until(
        lambda: (
            int(browser.find("#revision").text) > revision_before
            and "9" in (_file_row(browser, "hello.txt") or "").split()
        ),
        "the rollback to v1 published",
        "rolled-back",
        WAIT_S,
    )
    assert "rollback to v1" in browser.find("#history").text
    runs = browser.finds("#runs a")
    assert any(a.text.startswith(f"rollback-{fqrn}") for a in runs)
    started = [td.text for td in browser.finds("#runs tbody td:nth-child(3)")]
    assert started and all(s.endswith(" UTC") for s in started if s), started  # as elsewhere
    assert all(
        (a.get_attribute("href") or "").startswith(f"{settings.prefect.ui_url}/runs/flow-run/")
        for a in runs
    )
    log_out(browser, settings)


def test_group_repositories_for_members_managers_and_nobody_else(
    service: Settings, browsers: dict[str, Browser], shots: Path
) -> None:
    settings = service
    fqrn = f"atlas.{settings.repository_domain}"

    dave = _open(browsers, shots, "dave")
    log_in(dave, settings, "dave")
    # In no group: no group form that could only be refused (a non-member's request is
    # refused by the API: tests/test_dashboard_pages.py), his personal request stays offered.
    assert dave.finds("#no-group") and not dave.finds("#request-group")
    assert dave.finds("#request-personal") and not dave.finds("#repositories")
    # His login ends while the page polls his request: the page turns to the login page by
    # itself instead of polling in vain (the session is the cookie: deleting it ends it).
    dave.click("#request-personal", "personal-requested")
    assert dave.finds("[data-poll-url]")
    dave.driver.delete_all_cookies()
    dave.wait(lambda: bool(dave.finds("#login")), "the login page after the session ended", 30)
    dave.shot("session-ended")

    bob = _open(browsers, shots, "bob")
    log_in(bob, settings, "bob")
    s3_as(settings, demo_user("bob")).create_bucket(Bucket="atlas")
    bob.find("#group").send_keys("atlas")
    bob.click("#request-group", "group-requested")
    assert f"Requested {fqrn}" in bob.text()
    bob.wait(
        lambda: any(
            fqrn in r.text and "ready" in r.text for r in bob.finds("#repositories tbody tr")
        ),
        "the group repository ready",
        WAIT_S,
    )
    bob.shot("group-ready")
    bob.click(f'a[href="/dashboard/repositories/{fqrn}"]', "group-repository-member")
    # bob requested it, so he owns it: keys, sync and rollback are his.
    assert bob.finds("#download-keys") and bob.finds("#sync-now")
    # His S3 account owns the bucket: his page creates and shares it.
    assert "s3 mb s3://atlas" in bob.text() and not bob.finds("#bucket-created-by-owner")
    log_out(bob, settings)

    carol = _open(browsers, shots, "carol")
    log_in(carol, settings, "carol")
    carol.click(f'a[href="/dashboard/repositories/{fqrn}"]', "group-repository-manager")
    # carol manages the group: she gets the keys, but runs nothing on bob's repository.
    assert carol.finds("#download-keys") and not carol.finds("#sync-now")
    # The bucket is bob's: her page says he creates it (no create line for her), and the
    # policy he applies, naming her S3 user, lets her upload into it; what she puts there (an
    # object of hers in his bucket) is published.
    assert carol.finds("#bucket-created-by-owner") and "s3 mb" not in carol.text()
    assert carol.find("#bucket-member").text == "arn:aws:iam:::user/carol"
    policy = carol.find("#bucket-policy").text
    s3_as(settings, demo_user("bob")).put_bucket_policy(Bucket="atlas", Policy=policy)
    carol_s3 = s3_as(settings, demo_user("carol"))
    carol_s3.put_object(Bucket="atlas", Key="cvmfs/from-carol.txt", Body=b"carol\n")
    carol.reload_until(
        lambda: _file_row(carol, "from-carol.txt") is not None,
        "carol's upload into bob's bucket published",
        "member-upload-published",
        WAIT_S,
    )
    carol.find("#download-keys").click()
    keys = carol.downloaded(f"{fqrn}.keys.json")
    assert '"masterKey": "-----BEGIN' in keys
    log_out(carol, settings)


def test_the_command_line_login_in_chromium(
    idp: Settings, browsers: dict[str, Browser], shots: Path, tmp_path: Path
) -> None:
    """The pages `cvmfs-svc login` sends a user to, in a real browser (only the provider runs).

    The complete URL submits its code by the provider's script (allowed by the page's CSP
    hash), so the browser lands on the confirmation; the plain URL takes the typed code.
    """
    denied, complete_url, _ = start_login(idp, tmp_path / "denied")
    approved, _, user_code = start_login(idp, tmp_path / "approved")
    dave = _open(browsers, shots, "dave-cli")
    dave.visit(complete_url, "device-complete-url")
    dave.wait(lambda: bool(dave.finds("#user-code")), "the confirmation page")
    dave.click("button[name=abort]", "device-denied")
    assert "The sign-in was denied." in dave.text()
    code, _, err = finish(denied, timeout_s=30)
    assert code != 0 and "was denied at the issuer" in err

    dave.visit(idp.oidc.issuer_url.rstrip("/") + "/device", "device-enter-code")
    dave.find("input[name=user_code]").send_keys(user_code)
    dave.click("button[form='op.deviceInputForm']", "device-confirm")
    assert dave.find("#user-code").text == user_code
    dave.click("button[form='op.deviceConfirmForm'][autofocus]", "device-login-page")
    dave.find("#username").send_keys("dave")
    dave.find("#password").send_keys(demo_user("dave").password.get_secret_value())
    dave.click("button[type=submit]", "device-signed-in")
    assert "is signed in" in dave.text()
    code, out, err = finish(approved, timeout_s=30)
    assert code == 0, err
    assert "Logged in as dave" in out
