"""Session fixtures of the whole test suite: one test stack on the dev stack's ports + 100.

Fixtures (all session-scoped; each component starts on first use and stops at session end,
whether tests pass or fail):

* ``stack_settings``: the test stack's Settings (fresh temp data dir, OpenBao in dev mode).
* ``rabbitmq``, ``ceph``, ``vault``, ``registry``, ``prefect_server``, ``stratum0_http``,
  ``idp``: each starts its component and yields the Settings to talk to it; ``vault`` yields
  them with ``vault.token`` set. ``idp`` is the local OIDC provider: its settings' ``oidc.*``
  name it, and ``tests/idp_login.py`` logs its demo users in (``stack/idp_users.py``).
* ``stack_env``: environment variables that make ``Settings.load()`` in a subprocess (the CLI)
  return ``stack_settings``.

Prefect: ``pytest_configure`` points PREFECT_HOME at a temp dir and PREFECT_API_URL at the test
Prefect server *before any test module is imported*, because prefect reads its settings once,
at import. So a test module may ``import prefect`` at top level; a test that talks to the
server (runs a flow, serves a deployment, calls ``get_client()``) must request the
``prefect_server`` fixture so that the server runs. Nothing uses an ephemeral server: without
``prefect_server`` such a call fails fast with a connection error.

Only one pytest session at a time runs the test stack (its ports are fixed): a session whose
selected tests need it waits for a machine-wide file lock right after collection (outside the
per-test timeout; it prints who holds it), then stops leftovers of sessions that were killed.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import tempfile
from collections.abc import Iterator
from pathlib import Path
from types import FrameType
from typing import Any

import pytest
from pydantic import BaseModel, SecretStr

from service.settings import Settings
from stack import procs
from stack.ceph import Ceph
from stack.component import Component
from stack.idp import IdentityProvider
from stack.locks import exclusive, lock_path_for_test_stack
from stack.manager import Stack
from stack.openbao import OpenBao, root_token
from stack.prefect_server import PrefectServer
from stack.rabbitmq import RabbitMQ
from stack.registry import Registry
from stack.stratum0_http import Stratum0Http

# CVMFS_SVC_TEST_PORT_OFFSET lets several checkouts (or helpers) each run a test stack at once;
# pick offsets whose differences are not a difference of two base ports (100, 130, 160, 230).
TEST_PORT_OFFSET = int(os.environ.get("CVMFS_SVC_TEST_PORT_OFFSET", "100"))
DATA_DIR_PREFIX = f"cvmfs-svc-test-{TEST_PORT_OFFSET}-"
PREFECT_HOME_PREFIX = "cvmfs-svc-prefect-home-"
# A session takes the machine-wide test-stack lock at the end of collection when a selected
# test needs the stack: waiting there is outside pytest-timeout's per-test budget.
COLLECTION_LOCK_WAIT_S = 3600.0
# A fixture requested dynamically (getfixturevalue) takes it during setup, inside that budget.
FIXTURE_LOCK_WAIT_S = 420.0
# The test stack's device codes (`cvmfs-svc login`) expire after this many seconds.
DEVICE_CODE_TTL_S = 30
_PREFECT_ENV = {
    "PREFECT_HOME": None,  # a fresh temp dir, set in pytest_configure
    "PREFECT_API_URL": None,  # the test server, set in pytest_configure
    "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
    "DO_NOT_TRACK": "1",
}
_saved_env = pytest.StashKey[dict[str, str | None]]()
_prefect_home = pytest.StashKey[Path]()
_stack_lock = pytest.StashKey[contextlib.ExitStack]()
_sigterm_handler = pytest.StashKey[Any]()


def make_test_settings(data_dir: Path) -> Settings:
    """The test stack's settings for `data_dir`: dev ports + 100, OpenBao in dev mode."""
    base = Settings.load().with_port_offset(TEST_PORT_OFFSET, data_dir)
    return base.model_copy(
        update={
            "vault": base.vault.model_copy(update={"mode": "dev", "token": None}),
            # Never the developer's PostgreSQL: the test server gets its own SQLite.
            "prefect": base.prefect.model_copy(update={"database_url": None}),
            # Most tests upload as the one demo S3 user for many identities; the tests of
            # bucket ownership turn the check on (tests/test_provision_bucket_later.py).
            "provisioning": base.provisioning.model_copy(update={"require_bucket_owner": False}),
            # An expired device code within its test (tests/test_cli_login.py) without a
            # 10-minute wait; long enough for that test's approved login on a loaded machine.
            "idp": base.idp.model_copy(update={"device_code_ttl_s": DEVICE_CODE_TTL_S}),
        }
    )


def _interrupt_on_sigterm(signum: int, frame: FrameType | None) -> None:
    raise KeyboardInterrupt(f"signal {signum}")


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line(
        "markers", "disrupts_stack: stops and restarts the session's test stack (runs last)"
    )
    # `timeout N pytest ...` ends with SIGTERM, which would skip every fixture teardown and
    # leave the stack running; as an interrupt, pytest still tears the session down.
    if signal.getsignal(signal.SIGTERM) == signal.SIG_DFL:
        config.stash[_sigterm_handler] = signal.signal(signal.SIGTERM, _interrupt_on_sigterm)
    _remove_orphaned_prefect_homes()
    home = Path(tempfile.mkdtemp(prefix=f"{PREFECT_HOME_PREFIX}{os.getpid()}-"))
    api_url = make_test_settings(Path("unused")).prefect.api_url
    wanted = {**_PREFECT_ENV, "PREFECT_HOME": str(home), "PREFECT_API_URL": api_url}
    config.stash[_saved_env] = {key: os.environ.get(key) for key in wanted}
    config.stash[_prefect_home] = home
    for key, value in wanted.items():
        os.environ[key] = str(value)


def _remove_orphaned_prefect_homes() -> None:
    """Client PREFECT_HOMEs of sessions that were killed before pytest_unconfigure ran."""
    for home in Path(tempfile.gettempdir()).glob(PREFECT_HOME_PREFIX + "*"):
        pid = home.name.removeprefix(PREFECT_HOME_PREFIX).split("-", 1)[0]
        if pid.isdigit() and not procs.is_alive(int(pid)):
            shutil.rmtree(home, ignore_errors=True)


@pytest.hookimpl(trylast=True)  # after -k/-m deselection
def pytest_collection_modifyitems(
    session: pytest.Session, config: pytest.Config, items: list[pytest.Item]
) -> None:
    # Tests that stop and restart the session's stack run last, so that no other test's
    # session-scoped state (connections, served runners, dev-mode secrets) is lost under it.
    items.sort(key=lambda item: item.get_closest_marker("disrupts_stack") is not None)
    if config.option.collectonly:
        return
    if any("stack_settings" in getattr(item, "fixturenames", ()) for item in items):
        _hold_test_stack_lock(config, COLLECTION_LOCK_WAIT_S)


def _hold_test_stack_lock(config: pytest.Config, wait_s: float) -> None:
    """Take the test-stack lock for the rest of the session (released in pytest_unconfigure)."""
    if _stack_lock in config.stash:
        return
    reporter = config.pluginmanager.get_plugin("terminalreporter")

    def tell(message: str) -> None:
        if reporter is not None:
            reporter.write_line(f"conftest: {message} (one test stack per machine)")

    held = contextlib.ExitStack()
    held.enter_context(
        exclusive(
            lock_path_for_test_stack(TEST_PORT_OFFSET),
            wait_s=wait_s,
            what="The test stack",
            on_wait=tell,
        )
    )
    config.stash[_stack_lock] = held


def pytest_unconfigure(config: pytest.Config) -> None:
    if _sigterm_handler in config.stash:
        signal.signal(signal.SIGTERM, config.stash[_sigterm_handler])
    # Session fixtures, the stack's included, are torn down before this hook runs.
    lock = config.stash.get(_stack_lock, None)
    if lock is not None:
        lock.close()
    for key, value in config.stash.get(_saved_env, {}).items():
        if value is None:
            os.environ.pop(key, None)
        else:
            os.environ[key] = value
    home = config.stash.get(_prefect_home, None)
    if home is not None:
        shutil.rmtree(home, ignore_errors=True)


def _reap_stale_test_stacks(keep: Path) -> None:
    """Stop what sessions killed before their teardown left running, then delete their dirs.

    Only called with the lock held, so no other session is using any of these directories.
    """
    for stale in Path(tempfile.gettempdir()).glob(DATA_DIR_PREFIX + "*"):
        if stale != keep and stale.is_dir():
            Stack(make_test_settings(stale)).down()
            shutil.rmtree(stale, ignore_errors=True)


@pytest.fixture(scope="session")
def stack_settings(request: pytest.FixtureRequest) -> Iterator[Settings]:
    # Normally held since collection; raises StackError naming the holder on a long wait.
    _hold_test_stack_lock(request.config, FIXTURE_LOCK_WAIT_S)
    data_dir = Path(tempfile.mkdtemp(prefix=DATA_DIR_PREFIX))
    # RabbitMQ runs as user rabbitmq and must be able to enter the directory.
    data_dir.chmod(0o755)
    _reap_stale_test_stacks(keep=data_dir)
    try:
        yield make_test_settings(data_dir)
    finally:
        # The component fixtures (which depend on this one) have stopped by now; stop
        # anything a test started through the manager or CLI behind their back.
        Stack(make_test_settings(data_dir)).down()
        shutil.rmtree(data_dir, ignore_errors=True)


def _run_component(component: Component, settings: Settings) -> Iterator[Settings]:
    try:
        component.start()
        yield settings
    finally:
        component.stop()


def _component(cls: type[Component], settings: Settings) -> Component:
    return cls(settings, settings.absolute_data_dir / cls.name)


@pytest.fixture(scope="session")
def rabbitmq(stack_settings: Settings) -> Iterator[Settings]:
    yield from _run_component(_component(RabbitMQ, stack_settings), stack_settings)


@pytest.fixture(scope="session")
def ceph(stack_settings: Settings) -> Iterator[Settings]:
    yield from _run_component(_component(Ceph, stack_settings), stack_settings)


@pytest.fixture(scope="session")
def vault(stack_settings: Settings) -> Iterator[Settings]:
    component = _component(OpenBao, stack_settings)
    try:
        component.start()
        token = root_token(stack_settings)
        yield stack_settings.model_copy(
            update={"vault": stack_settings.vault.model_copy(update={"token": token})}
        )
    finally:
        component.stop()


@pytest.fixture(scope="session")
def registry(stack_settings: Settings) -> Iterator[Settings]:
    yield from _run_component(_component(Registry, stack_settings), stack_settings)


@pytest.fixture(scope="session")
def prefect_server(stack_settings: Settings) -> Iterator[Settings]:
    api_url = stack_settings.prefect.api_url
    if os.environ.get("PREFECT_API_URL") != api_url:
        pytest.fail(
            f"PREFECT_API_URL is {os.environ.get('PREFECT_API_URL')!r}, not the test server "
            f"{api_url}: something changed it after tests/conftest.py set it."
        )
    yield from _run_component(_component(PrefectServer, stack_settings), stack_settings)


@pytest.fixture(scope="session")
def stratum0_http(stack_settings: Settings) -> Iterator[Settings]:
    yield from _run_component(_component(Stratum0Http, stack_settings), stack_settings)


@pytest.fixture(scope="session")
def idp(stack_settings: Settings) -> Iterator[Settings]:
    """The local OIDC provider; the settings' oidc.issuer_url is the provider (the default)."""
    if stack_settings.oidc.issuer_url != stack_settings.idp.issuer_url:
        pytest.fail(
            f"oidc.issuer_url is {stack_settings.oidc.issuer_url!r}, not the test stack's "
            f"provider {stack_settings.idp.issuer_url}: unset CVMFS_SVC_OIDC__ISSUER_URL."
        )
    yield from _run_component(_component(IdentityProvider, stack_settings), stack_settings)


def settings_env(settings: Settings) -> dict[str, str]:
    """CVMFS_SVC_* variables from which `Settings.load()` rebuilds `settings`."""
    env: dict[str, str] = {}

    def add(prefix: str, model: BaseModel) -> None:
        for name in type(model).model_fields:
            value: Any = getattr(model, name)
            key = f"{prefix}{name.upper()}"
            if isinstance(value, BaseModel):
                add(key + "__", value)
            elif value is None:
                continue
            elif isinstance(value, SecretStr):
                env[key] = value.get_secret_value()
            elif isinstance(value, list | dict):
                env[key] = json.dumps(value)
            else:
                env[key] = str(value)

    add("CVMFS_SVC_", settings)
    return env


@pytest.fixture(scope="session")
def stack_env(stack_settings: Settings) -> dict[str, str]:
    """os.environ plus what makes a subprocess's `Settings.load()` equal `stack_settings`."""
    base = {k: v for k, v in os.environ.items() if not k.startswith("CVMFS_SVC_")}
    return {**base, **settings_env(stack_settings)}
