"""The dashboard's pages against the running app (uvicorn) on the real stack.

Sessions are made the way a login leaves them: a row in the registry database's session table
holding an access token from a local OIDC issuer, and the signed id in the cookie. The login
itself (through the stack's provider) is tested in tests/test_dashboard_login.py; here every page,
the CSRF check, the security headers and who sees what.
"""

from __future__ import annotations

import re
import secrets
import time
from collections.abc import Iterator
from typing import Any

import httpx
import pytest

from buckets.ownership import BucketCheck, judge_bucket
from cvmfs.keys import generate_keyset
from cvmfs.storage import LocalStorage
from cvmfs.writer import RepositoryWriter, create_repository
from dashboard.app import COOKIE_NAME, session_secret
from dashboard.sessions import SessionStore, session_signer
from service.keystore import SERVICE_KEY_OWNER, unpacked_fqrn
from service.repositories import SyncRefusal, database_url
from service.settings import Settings
from tests.test_api_support import ApiWorld, api_world

pytestmark = [pytest.mark.stack, pytest.mark.slow]


@pytest.fixture(scope="module")
def world(
    rabbitmq: Settings, vault: Settings, prefect_server: Settings, stratum0_http: Settings
) -> Iterator[ApiWorld]:
    # The pages as production shows them: a bucket must belong to its requester's S3 account
    # (the suite's default turns that off), which decides who is told to create it.
    rules = vault.provisioning.model_copy(update={"require_bucket_owner": True})
    with api_world(rabbitmq, vault.model_copy(update={"provisioning": rules})) as started:
        yield started


class Browser:
    """An httpx client holding a dashboard session for one token."""

    def __init__(self, world: ApiWorld, token: str | None) -> None:
        self.csrf = secrets.token_urlsafe(16)
        cookies = {}
        if token is not None:
            store = SessionStore.open_url(database_url(world.settings), 3600)
            session_id = secrets.token_urlsafe(32)
            store.save(session_id, {"access_token": token, "csrf": self.csrf})
            store.close()
            signed = session_signer(session_secret(world.settings)).sign(session_id).decode()
            cookies[COOKIE_NAME] = signed
        self.http = httpx.Client(base_url=world.base_url, cookies=cookies, timeout=60.0)

    def get(self, path: str, **kwargs: Any) -> httpx.Response:
        return self.http.get(path, **kwargs)

    def post(self, path: str, data: dict[str, str], csrf: str | None = None) -> httpx.Response:
        form = {"csrf_token": self.csrf if csrf is None else csrf, **data}
        return self.http.post(path, data=form)

    def follow(self, response: httpx.Response) -> httpx.Response:
        assert response.status_code == 303, response.text
        return self.get(response.headers["location"])


def test_anonymous_visitors_get_the_login_page_with_security_headers(world: ApiWorld) -> None:
    browser = Browser(world, None)
    root = browser.get("/")
    assert root.status_code == 307 and root.headers["location"] == "/dashboard/"
    page = browser.get("/dashboard/")
    assert page.status_code == 200
    assert 'href="/dashboard/login"' in page.text
    policy = page.headers["content-security-policy"]
    assert "script-src 'self';" in policy and "default-src 'none'" in policy
    assert "unsafe-inline" not in policy
    assert "<script>" not in page.text  # the one script is a static file
    assert page.headers["cache-control"] == "no-store"
    assert "set-cookie" not in page.headers  # an anonymous visit stores nothing
    script = browser.get("/dashboard/static/dashboard.js")
    assert script.status_code == 200 and "data-poll-url" in script.text
    assert "localStorage" not in script.text


def test_a_forged_session_cookie_is_an_anonymous_visit(world: ApiWorld) -> None:
    browser = Browser(world, world.alice())
    cookie = browser.http.cookies[COOKIE_NAME]
    browser.http.cookies.clear()
    browser.http.cookies.set(COOKIE_NAME, cookie[:-2] + ("AA" if cookie[-2:] != "AA" else "BB"))
    page = browser.get("/dashboard/")
    assert 'href="/dashboard/login"' in page.text and world.alice_repo not in page.text


def test_each_user_sees_their_repositories_and_their_groups(world: ApiWorld) -> None:
    alice = Browser(world, world.alice()).get("/dashboard/").text
    assert world.alice_repo in alice and world.group_repo in alice
    assert world.bob_repo not in alice and world.atlas_repo not in alice
    assert 'id="username">alice<' in alice
    # alice has her personal repository: a link to it, no button to request another.
    assert 'id="request-personal"' not in alice and 'id="personal-exists"' in alice
    assert "which the requester creates with their own S3 account and then shares" in alice
    # Where a script gets a token for the same listing (cvmfs-svc login, tests/test_cli_login.py).
    api = world.settings.api.base_url
    assert f'Bearer $(cvmfs-svc token)" {api}/repositories</code>' in alice
    bob = Browser(world, world.bob()).get("/dashboard/").text
    assert world.bob_repo in bob and world.atlas_repo in bob and world.alice_repo not in bob
    # atlas has its repository: the form suggests no group (it would request it again).
    assert 'id="user-groups">atlas<' in bob and 'id="request-group"' in bob
    assert '<option value="atlas">' not in bob and 'placeholder="group name"' in bob
    # A manager's role is worded, and its group path (higgs/managers) is never suggested: its
    # repository would be called "managers".
    higgs = world.issuer.mint(
        sub="sub-hana",
        preferred_username="hana",
        groups=["higgs", "higgs/managers"],
        **{"wlcg.groups": []},
    )
    hana = Browser(world, higgs).get("/dashboard/").text
    assert 'id="user-groups">higgs (manager)<' in hana
    assert '<option value="higgs">' in hana and 'placeholder="higgs"' in hana
    assert "higgs/managers" not in hana
    # Manager of cms but member of no group: no form that could only be refused.
    carol = Browser(world, world.carol_cms_manager()).get("/dashboard/").text
    assert 'id="user-groups">manager of cms<' in carol and world.group_repo in carol
    assert 'id="no-group"' in carol and 'id="request-group"' not in carol


def test_the_repository_page_shows_status_setup_upload_files_and_history(
    world: ApiWorld,
) -> None:
    browser = Browser(world, world.alice())
    page = browser.get(f"/dashboard/repositories/{world.alice_repo}")
    assert page.status_code == 200, page.text
    text = page.text
    assert 'id="revision">3<' in text
    assert 'id="bucket-state"' in text  # the bucket's state and what to do about it
    assert f"s3://api{world.alice_repo[3:9]}-alice/cvmfs/" in text  # the bucket and prefix
    assert "x-amz-meta-s3cmd-attrs" in text and "rclone copy --metadata" in text
    # Each tool's lines name where the user's own keys go.
    assert "export AWS_ACCESS_KEY_ID=YOUR_KEY AWS_SECRET_ACCESS_KEY=YOUR_SECRET" in text
    assert "s3cmd --access_key=YOUR_KEY --secret_key=YOUR_SECRET" in text
    assert world.settings.ceph.s3_endpoint in text
    assert re.search(r'href="/dashboard/repositories/[^"]+\?path=/software"', text)
    assert "Revision 3" in text and ">v1<" in text and ">v2<" in text
    assert "(the repository created, empty)" in text  # revision 1, as mkfs leaves it
    assert "removed file <code>/docs/README</code>" in text and "type_changed" not in text
    assert 'id="sync-now"' in text and 'id="rollback-submit"' in text
    assert 'id="download-keys"' in text
    assert 'id="bucket-sharing"' not in text  # a personal bucket is shared with nobody
    software = browser.get(
        f"/dashboard/repositories/{world.alice_repo}", params={"path": "/software"}
    )
    assert ">tool<" in software.text and "rwxr-xr-x" in software.text
    assert re.search(r"<td>\d{4}-\d\d-\d\d \d\d:\d\d UTC</td>", software.text)
    url = f"/dashboard/repositories/{world.alice_repo}"
    latest = browser.get(url, params={"path": "/latest"}).text
    assert 'symbolic link to <code id="symlink-target">software/tool</code>' in latest
    missing = browser.get(url, params={"path": "/nope"}).text
    assert "/nope does not exist" in missing and f'id="browse-root" href="{url}"' in missing


def test_client_files_download_with_the_key_and_the_server_url(world: ApiWorld) -> None:
    browser = Browser(world, world.dave_cms_member())  # a reader of the group repository
    fqrn = world.group_repo
    conf = browser.get(f"/dashboard/repositories/{fqrn}/client/{fqrn}.conf")
    pub = browser.get(f"/dashboard/repositories/{fqrn}/client/{fqrn}.pub")
    assert conf.status_code == 200 and pub.status_code == 200
    assert "attachment" in conf.headers["content-disposition"]
    port = world.settings.stratum0.http_port
    assert f"CVMFS_SERVER_URL=http://127.0.0.1:{port}/cvmfs/{fqrn}\n" in conf.text
    assert f"CVMFS_PUBLIC_KEY=/etc/cvmfs/keys/{world.settings.repository_domain}/{fqrn}.pub" in (
        conf.text
    )
    assert pub.text == world.keys[fqrn].master_public_pem
    other = browser.get(f"/dashboard/repositories/{fqrn}/client/passwd")
    assert other.status_code == 404


def test_every_user_finds_the_unpacked_images_client_files(world: ApiWorld) -> None:
    unpacked = unpacked_fqrn(world.settings.repository_domain)
    browser = Browser(world, world.bob())
    link = f"/dashboard/repositories/{unpacked}/client/{unpacked}.pub"
    # As the first unpack stores them (the Vault is shared: another test may have already).
    keys, _ = world.key_store.store_if_absent(
        SERVICE_KEY_OWNER, unpacked, generate_keyset(unpacked)
    )
    index = browser.get("/dashboard/").text
    assert f'href="{link}"' in index
    # Where to push so that an image is unpacked (only the unpack projects are), and its path.
    registry = world.settings.registry
    example = f"{registry.host}:{registry.port}/{registry.unpack_projects[0]}/my-image:1.0"
    assert f"docker push {example}\n" in index
    assert f'id="image-path">/cvmfs/{unpacked}/{example}<' in index
    # The images already there, by their links (as the unpack flow lays them out).
    assert "no image has been unpacked" in index
    storage = LocalStorage(world.settings.absolute_data_dir / "stratum0" / unpacked)
    writer, _ = create_repository(storage, unpacked, keys)
    flat = f"/.flat/ab/{'ab' * 32}"
    with writer.transaction() as txn:
        txn.add_file(f"{flat}/etc/motd", b"hello\n")
        txn.symlink(f"/{example}", f"../..{flat}")
        txn.publish()
    listed = browser.get("/dashboard/").text
    assert f"<li><code>/cvmfs/{unpacked}/{example}</code></li>" in listed
    assert ".flat" not in listed
    pub = browser.get(link)
    assert pub.status_code == 200 and pub.text == keys.master_public_pem
    conf = browser.get(f"/dashboard/repositories/{unpacked}/client/{unpacked}.conf").text
    assert f"/cvmfs/{unpacked}\n" in conf


def test_keys_go_only_to_the_owner_or_a_manager_and_every_download_is_audited(
    world: ApiWorld,
) -> None:
    fqrn = world.group_repo
    member = Browser(world, world.dave_cms_member())
    page = member.get(f"/dashboard/repositories/{fqrn}").text
    assert 'id="download-keys"' not in page and 'id="sync-now"' not in page
    refused = member.get(f"/dashboard/repositories/{fqrn}/keys.json")
    assert refused.status_code == 403 and "manager" in refused.text
    manager = Browser(world, world.carol_cms_manager())
    keys = manager.get(f"/dashboard/repositories/{fqrn}/keys.json")
    assert keys.status_code == 200, keys.text
    assert keys.headers["cache-control"] == "no-store"
    assert keys.json()["masterKey"] == world.keys[fqrn].master_private_pem
    audit = [(a.subject, a.allowed) for a in world.registry.key_accesses(fqrn)]
    assert audit[-2:] == [
        ("7f3c1b2a-0000-4000-8000-00000000da7e", False),
        ("7f3c1b2a-0000-4000-8000-0000000ca201", True),
    ]


def test_the_gateway_publisher_bundle_is_on_the_page_for_a_manager_only(
    world: ApiWorld,
) -> None:
    fqrn = world.group_repo
    member = Browser(world, world.dave_cms_member())
    assert 'id="publisher"' not in member.get(f"/dashboard/repositories/{fqrn}").text
    refused = member.get(f"/dashboard/repositories/{fqrn}/publisher/{fqrn}.gw")
    assert refused.status_code == 403 and "manager" in refused.text
    manager = Browser(world, world.carol_cms_manager())
    page = manager.get(f"/dashboard/repositories/{fqrn}").text
    settings = world.settings
    mkfs = (
        f"sudo cvmfs_server mkfs -w {settings.stratum0_public_url}/{fqrn} "
        f"-u gw,/srv/cvmfs/{fqrn}/data/txn,{settings.gateway.api_url} "
        f"-k /etc/cvmfs/keys -o $USER {fqrn}\n"
    )
    assert mkfs in page, page
    assert f"sudo chmod 0600 /etc/cvmfs/keys/{fqrn}.gw" in page
    # How members other than the bucket's owner get to upload into the group's bucket.
    bucket = world.registry.require(fqrn).bucket
    assert f"s3api put-bucket-policy --bucket {bucket} --policy file://{bucket}-members.json" in (
        page
    )
    assert f"&#34;arn:aws:s3:::{bucket}/*&#34;" in page
    keys = world.keys[fqrn]
    for suffix, content in (
        ("pub", keys.master_public_pem),
        ("crt", keys.certificate_pem),
        ("gw", keys.gateway_key),
    ):
        assert f'href="/dashboard/repositories/{fqrn}/publisher/{fqrn}.{suffix}"' in page
        got = manager.get(f"/dashboard/repositories/{fqrn}/publisher/{fqrn}.{suffix}")
        assert got.status_code == 200 and got.text == content
        assert got.headers["cache-control"] == "no-store"
    other = manager.get(f"/dashboard/repositories/{fqrn}/publisher/{fqrn}.key")
    assert other.status_code == 404  # never a private key
    audit = [(a.subject, a.action, a.allowed) for a in world.registry.key_accesses(fqrn)]
    assert ("7f3c1b2a-0000-4000-8000-00000000da7e", "read_publisher", False) in audit
    assert ("7f3c1b2a-0000-4000-8000-0000000ca201", "read_publisher", True) in audit


def test_another_users_repository_is_refused(world: ApiWorld) -> None:
    browser = Browser(world, world.bob())
    page = browser.get(f"/dashboard/repositories/{world.alice_repo}")
    assert page.status_code == 403 and "belongs to another user" in page.text
    conf = browser.get(f"/dashboard/repositories/{world.alice_repo}/client/x.conf")
    assert conf.status_code == 404  # the name is checked before the repository
    sync = browser.post(f"/dashboard/repositories/{world.alice_repo}/sync", {})
    back = browser.follow(sync)  # the refusal, shown on the page it came back to
    assert back.status_code == 403
    assert back.text.count("belongs to another user") == 2  # the flash and the page


def test_every_form_needs_the_sessions_csrf_token(world: ApiWorld) -> None:
    browser = Browser(world, world.alice())
    url = f"/dashboard/repositories/{world.alice_repo}/sync"
    for csrf in ("", "not-the-token"):
        refused = browser.post(url, {}, csrf=csrf)
        assert refused.status_code == 403 and "did not come from this dashboard" in refused.text
        # The dashboard's own error page, with the way back, not a bare line of text.
        assert 'id="reason">' in refused.text and 'href="/dashboard/">Back to' in refused.text
    for path, data in (
        ("/dashboard/repositories", {"kind": "personal"}),
        (f"/dashboard/repositories/{world.alice_repo}/tag", {"tag": "x"}),
        (f"/dashboard/repositories/{world.alice_repo}/rollback", {"tag": "v1"}),
        ("/dashboard/logout", {}),
    ):
        assert browser.post(path, data, csrf="wrong").status_code == 403, path


def test_sync_now_starts_a_run_and_links_it_in_prefect(world: ApiWorld) -> None:
    browser = Browser(world, world.alice())
    started = browser.post(f"/dashboard/repositories/{world.alice_repo}/sync", {})
    cookie = started.headers["set-cookie"]
    assert "HttpOnly" in cookie and "SameSite=Lax" in cookie and "Path=/dashboard" in cookie
    assert "Secure" not in cookie  # served over http here
    page = browser.follow(started).text
    ui = world.settings.prefect.ui_url
    link = re.search(rf'href="{re.escape(ui)}/runs/flow-run/([0-9a-f-]+)"', page)
    assert link is not None, page
    run = httpx.get(f"{world.settings.prefect.api_url}/flow_runs/{link.group(1)}").json()
    assert run["parameters"]["req"]["repo"] == world.alice_repo
    # The flash names what was started in the page's words, the tag as code (not 'v9').
    tagged = browser.follow(
        browser.post(f"/dashboard/repositories/{world.alice_repo}/tag", {"tag": "v9"})
    )
    assert "Tag <code>v9</code>: flow run started\n    — <a href=" in tagged.text, tagged.text


def test_a_group_repository_is_refused_to_a_non_member(world: ApiWorld) -> None:
    browser = Browser(world, world.bob())  # member of atlas, not of cms
    refused = browser.post("/dashboard/repositories", {"kind": "group", "group": "cms"})
    page = browser.follow(refused).text
    assert 'class="flash error"' in page and "cms" in page and "member" in page


def test_a_personal_request_shows_its_progress_until_it_is_done(world: ApiWorld) -> None:
    browser = Browser(world, world.issuer.mint(sub="sub-erin", preferred_username="erin"))
    assert 'id="request-personal"' in browser.get("/dashboard/").text
    accepted = browser.post("/dashboard/repositories", {"kind": "personal"})
    page = browser.follow(accepted).text
    assert "Requested erin-personal." in page
    poll = re.search(r'data-poll-url="(/dashboard/requests/[^"]+/status.json)"', page)
    assert poll is not None, page
    status = browser.get(poll.group(1)).json()
    assert status == {
        "status": "pending",
        "reason": None,
        "done": False,
        "text": "pending",
        "html": "pending",
    }
    # Nothing serves provisioning in this world: the request stays pending; the whole journey
    # (provisioned, then ready) is in tests/test_dashboard_browser.py.
    other = Browser(world, world.bob()).get(poll.group(1))
    assert other.status_code == 403


def test_a_session_whose_token_expired_asks_to_log_in_again(world: ApiWorld) -> None:
    now = int(time.time())
    expired = world.issuer.mint(iat=now - 7200, nbf=now - 7200, exp=now - 3600)
    browser = Browser(world, expired)
    page = browser.get("/dashboard/")
    assert 'href="/dashboard/login"' in page.text and world.alice_repo not in page.text
    assert "log in again" in page.text and "expired" in page.text
    # The stale session is gone: the next visit is a plain anonymous one.
    again = browser.get("/dashboard/")
    assert "log in again" not in again.text


def test_what_a_user_typed_comes_back_escaped(world: ApiWorld) -> None:
    browser = Browser(world, world.bob())
    typed = '<script src="/x.js"></script>'
    refused = browser.post("/dashboard/repositories", {"kind": "group", "group": typed})
    page = browser.follow(refused).text
    assert 'class="flash error"' in page
    assert typed not in page and "&lt;script src=" in page


def test_refused_uploads_are_listed_with_their_reasons(world: ApiWorld) -> None:
    # As a sync records them (flows/sync.py through the registry).
    world.registry.replace_refusals(
        world.bob_repo,
        [
            SyncRefusal(s3_key="cvmfs/dir/../escape", reason="the key leaves cvmfs/", kind="key"),
            SyncRefusal(
                s3_key="cvmfs/Tool",
                other_key="cvmfs/tool",
                reason="two keys differ only in case",
                kind="pair",
            ),
        ],
    )
    page = Browser(world, world.bob()).get(f"/dashboard/repositories/{world.bob_repo}").text
    refusals = page[page.index('id="refusals"') :]
    refusals = refusals[: refusals.index("</dd>")]
    assert "<code>cvmfs/dir/../escape</code>: the key leaves cvmfs/" in refusals
    assert "<code>cvmfs/Tool</code>: two keys differ only in case (with <code>cvmfs/tool" in (
        refusals
    )
    world.registry.replace_refusals(world.bob_repo, [])
    page = Browser(world, world.bob()).get(f"/dashboard/repositories/{world.bob_repo}").text
    assert 'id="refusals">none<' in page


def test_a_failed_repository_shows_its_error_once(world: ApiWorld) -> None:
    fqrn = world.bob_repo
    bucket = world.registry.require(fqrn).bucket
    world.registry.record_bucket_state(fqrn, bucket, "wired", f"bucket {bucket} is connected")
    error = "the stratum-0 storage is full; run `df -h` on the stratum-0 host"
    world.registry.set_status(fqrn, "failed", error)
    try:
        page = Browser(world, world.bob()).get(f"/dashboard/repositories/{fqrn}").text
        shown = "the stratum-0 storage is full; run <code>df -h</code> on the stratum-0 host"
        assert page.count(shown) == 1 and f'<dd class="error">{shown}</dd>' in page
        assert '<span class="status failed">failed</span>' in page
    finally:
        world.registry.set_status(fqrn, "ready")


def test_a_ready_repository_whose_bucket_is_foreign_is_not_shown_as_done(world: ApiWorld) -> None:
    fqrn = world.bob_repo
    bucket = world.registry.require(fqrn).bucket
    message = "bucket x already exists and belongs to another S3 account"
    world.registry.record_bucket_state(fqrn, bucket, "foreign", message)
    try:
        browser = Browser(world, world.bob())
        page = browser.get(f"/dashboard/repositories/{fqrn}").text
        status = '<span class="status ready attention">ready (its bucket belongs to another S3'
        assert status in page
        # The whole message once, beside the bucket; the status line only points at it.
        assert page.count(message) == 1 and f'id="bucket-state">{message}' in page
        assert (
            '<span class="status ready attention">ready</span>' in browser.get("/dashboard/").text
        )
    finally:
        world.registry.record_bucket_state(fqrn, bucket, "wired", f"bucket {bucket} is connected")


def test_commands_in_the_apis_texts_show_as_code_and_nothing_as_markup(world: ApiWorld) -> None:
    fqrn = world.bob_repo
    bucket = world.registry.require(fqrn).bucket
    # As the repository watcher records it, and a refusal whose reason quotes a hostile key.
    waiting = judge_bucket(BucketCheck(exists=False), bucket, "bob", world.settings.s3_public_url)
    world.registry.record_bucket_state(fqrn, bucket, "waiting", waiting.message)
    hostile = "cvmfs/<img src=x onerror=alert(1)>"
    world.registry.replace_refusals(
        fqrn, [SyncRefusal(s3_key=hostile, reason=f"remove `{hostile}` and retry", kind="key")]
    )
    try:
        browser = Browser(world, world.bob())
        mb = f"aws --endpoint-url {world.settings.s3_public_url} s3 mb s3://{bucket}"
        page = browser.get(f"/dashboard/repositories/{fqrn}").text
        state = page[page.index('id="bucket-state"') :]
        assert f"(e.g. <code>{mb}</code>)" in state[: state.index("</dd>")]
        assert "<code>./svc up</code> prints" in page  # s3.credentials_help
        assert "`" not in page[page.index("<main>") : page.index("</main>")]
        assert "<img" not in page
        assert "remove <code>cvmfs/&lt;img src=x onerror=alert(1)&gt;</code> and retry" in page
        index = browser.get("/dashboard/").text
        assert f"(e.g. <code>{mb}</code>)" in index and f"`{mb}`" not in index
        # The page's polling names the state only: the message with its command is beside it.
        polled = browser.get(f"/dashboard/repositories/{fqrn}/status.json").json()
        assert polled["text"] == polled["html"] == "ready (waiting for its bucket)"
        # The API's JSON keeps the text as written.
        with world.client(world.bob()) as api:
            detail = api.get(f"/repositories/{fqrn}").json()
        assert detail["bucket_state"]["message"] == waiting.message and f"`{mb}`" in (
            waiting.message
        )
        assert detail["refusals"][0]["reason"] == f"remove `{hostile}` and retry"
    finally:
        world.registry.replace_refusals(fqrn, [])
        world.registry.record_bucket_state(fqrn, bucket, "wired", f"bucket {bucket} is connected")


def test_the_history_says_in_words_what_changed(world: ApiWorld) -> None:
    fqrn = world.bob_repo
    storage = LocalStorage(world.settings.absolute_data_dir / "stratum0" / fqrn)
    writer = RepositoryWriter.open(storage, fqrn, world.keys[fqrn])
    with writer.transaction() as txn:
        txn.add_file("/lib", b"a file first\n")
        txn.symlink("/current", "lib")
        txn.publish()
    with writer.transaction() as txn:
        txn.remove("/lib")
        txn.add_file("/lib/libx.so", b"\x7fELF")
        result = txn.publish()
    world.registry.record_publish(fqrn, result.revision)
    page = Browser(world, world.bob()).get(f"/dashboard/repositories/{fqrn}").text
    history = page[page.index('id="history"') :]
    assert "<li>changed from file to directory <code>/lib</code></li>" in history
    assert "<li>added file <code>/lib/libx.so</code></li>" in history
    assert "<li>added symbolic link <code>/current</code></li>" in history
    assert "type_changed" not in history and "symlink" not in history


def test_the_group_upload_card_tells_members_who_creates_the_bucket(world: ApiWorld) -> None:
    fqrn = world.group_repo  # requested by alice: her S3 account must own the bucket
    bucket = world.registry.require(fqrn).bucket
    url = world.settings.s3_public_url
    waiting = judge_bucket(BucketCheck(exists=False), bucket, "alice", url)
    world.registry.record_bucket_state(fqrn, bucket, "waiting", waiting.message)
    try:
        owner = Browser(world, world.alice()).get(f"/dashboard/repositories/{fqrn}").text
        assert f"s3 mb s3://{bucket}\n" in owner and f"rclone mkdir cvmfs:{bucket}\n" in owner
        assert f" mb s3://{bucket}\n" in owner  # s3cmd's
        assert 'id="bucket-owner">alice<' in owner and "user/MEMBER" in owner
        assert 'id="bucket-created-by-owner"' not in owner
        # Told as hers, not as a third person's ("of alice, who requested it").
        assert 'id="bucket-created-by-you">' in owner and "must belong to your S3 account" in owner
        assert "(of alice," not in owner
        assert f"<code>aws --endpoint-url {url} s3 mb s3://{bucket}</code>" in owner  # its state
        for who, token in (("carol", world.carol_cms_manager()), ("dave", world.dave_cms_member())):
            member = Browser(world, token)
            page = member.get(f"/dashboard/repositories/{fqrn}").text
            upload = page[page.index("<h2>Upload</h2>") : page.index("<h2>Files</h2>")]
            assert f"mb s3://{bucket}" not in upload and "rclone mkdir" not in upload, who
            assert 'id="bucket-created-by-owner"' in upload and 'id="bucket-owner">alice<' in upload
            # The policy alice applies, naming this member, and how they upload afterwards.
            assert f'id="bucket-member">arn:aws:iam:::user/{who}<' in upload
            assert f"&#34;arn:aws:iam:::user/{who}&#34;" in upload
            assert "which alice applies with:" in upload
            assert f"s3 sync ./my-software/ s3://{bucket}/cvmfs/" in upload
            assert f"rclone copy --metadata ./my-software/ cvmfs:{bucket}/cvmfs/" in upload
            # Nor does the bucket's state tell a member to create it, here or on the index.
            only_alice = f"waiting for bucket {bucket}: only the S3 account alice (of alice,"
            index = member.get("/dashboard/").text
            for shown in (page, index):
                assert "s3 mb" not in shown and only_alice in shown, who
    finally:
        world.registry.record_bucket_state(fqrn, bucket, "wired", f"bucket {bucket} is connected")
