"""The operator CLI, `cvmfs-svc` (run it as ./svc from a checkout).

Subcommand groups live next to what they drive; this module only assembles them. Plain click
(see cvmfs/cli.py on why not typer); each command imports what it uses, so a `repo` command
loads neither Prefect, the stack, the API nor the settings (tests/test_cli_imports.py).
"""

from __future__ import annotations

import time
from typing import TYPE_CHECKING

import click

from cvmfs.cli import repo_app
from login.cli import login_command, logout_command, token_command
from stack.cli import stack_app

if TYPE_CHECKING:  # each command imports what it uses, so a `repo` command starts fast
    from service.settings import Settings


@click.group("cvmfs-svc", no_args_is_help=True, context_settings={"show_default": True})
def app() -> None:
    """CVMFS distribution service: operator commands."""


app.add_command(stack_app, "stack")
app.add_command(repo_app, "repo")
app.add_command(login_command, "login")
app.add_command(token_command, "token")
app.add_command(logout_command, "logout")


@app.command()
def up() -> None:
    """Install what is missing, bring the local stack up, then run the service in the foreground.

    Ctrl-C stops the service; the stack keeps running (`cvmfs-svc stack down` stops it).
    """
    from service.run import serve_forever
    from service.settings import Settings
    from stack.cli import bring_up, install_missing
    from stack.errors import StackError
    from stack.manager import Stack

    settings = Settings.load()
    stack = Stack(settings)
    try:
        install_missing(stack)
        bring_up(stack)
    except StackError as exc:
        click.echo(f"up: {exc}", err=True)
        raise click.exceptions.Exit(2) from exc
    click.echo(welcome_text(settings))
    serve_forever(settings, after_start=lambda: _after_start(settings))


def welcome_text(settings: Settings) -> str:
    """What `up` prints: the dashboard and its logins first, then every endpoint."""
    from stack.idp_users import DEMO_USERS

    ceph = settings.ceph
    logins = "\n".join(
        f"  {user.username:<6} {user.password.get_secret_value():<16} {user.role:<17} "
        f"S3 access key {user.s3_access_key}  secret key {user.s3_secret_key.get_secret_value()}"
        for user in DEMO_USERS
    )
    return (
        "\n"
        f"Dashboard       {settings.api.dashboard_url}\n"
        f"  log in at the local identity provider ({settings.idp.issuer_url}) as:\n"
        f"  {'user':<6} {'password':<16} {'who':<17} S3 account (uid = user)\n"
        f"{logins}\n"
        f"S3 endpoint     {settings.s3_public_url}  (region {ceph.region})\n"
        f"demo S3 user    {ceph.demo_user}: access key {ceph.demo_access_key}, "
        f"secret key {ceph.demo_secret_key.get_secret_value()}\n"
        f"user API        {settings.api.base_url}  (docs {settings.api.base_url}/docs)\n"
        f'  token: ./svc login, then curl -H "Authorization: Bearer $(./svc token)" '
        f"{settings.api.base_url}/repositories\n"
        f"OIDC issuer     {settings.oidc.issuer_url}  (client {settings.oidc.client_id})\n"
        f"Prefect UI      {settings.prefect.ui_url}  (runs, Retry, deployments' Run forms)\n"
        "  operate: ./svc dead-letters, ./svc sync|reconcile [<fqrn>] --wait 300, "
        "./svc prefect ... (README, 'Operating it')\n"
        f"OCI registry    {settings.registry.url}\n"
        f"stratum-0       {settings.stratum0_public_url}/<fqrn>/\n" + _metrics_line(settings)
    )


def _metrics_line(settings: Settings) -> str:
    m = settings.metrics
    if not m.enabled:
        return ""
    ports = (
        f"bridge :{m.bridge_port}, api :{m.api_port}, gateway :{m.gateway_port}, "
        f"runner :{m.runner_port}"
    )
    return f"metrics         http://{m.bind_host}:<port>/metrics ({ports})\n"


def _after_start(settings: Settings) -> None:
    _announce_dashboard(settings)
    _run_demo(settings)


def _announce_dashboard(settings: Settings, timeout_s: float = 120.0) -> None:
    """Say when the dashboard answers: its URL is printed before the API process has started
    (~10-20 s later), and a newcomer opening it at once met 'connection refused'."""
    import httpx

    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        try:
            if httpx.get(f"{settings.api.base_url}/health", timeout=2.0).status_code == 200:
                click.echo(f"dashboard: ready at {settings.api.dashboard_url}")
                return
        except httpx.TransportError:
            pass
        time.sleep(0.5)
    click.echo(
        f"dashboard: not answering at {settings.api.dashboard_url} after {timeout_s:.0f} s; "
        "see the api process's lines above",
        err=True,
    )


def _run_demo(settings: Settings) -> None:
    """The embedded default job: a demo repository published through the real path."""
    from service.demo import DEMO_BUCKET, DEMO_KEY, run_demo
    from service.runtime import load_settings

    click.echo(f"demo: provisioning a repository fed by bucket {DEMO_BUCKET} ...")
    try:
        demo = run_demo(load_settings())
    except Exception as error:  # the demo must never take the service down
        click.echo(f"demo: failed ({type(error).__name__}: {error}); see the Prefect UI", err=True)
        return
    click.echo(
        f"demo: {demo.fqrn} revision {demo.revision} serves {demo.path} at {demo.url}\n"
        f"      (uploaded as s3://{DEMO_BUCKET}/{DEMO_KEY}; try "
        f"`./svc repo ls -R {demo.url} --key {settings.absolute_data_dir}/{demo.fqrn}.pub`)"
    )


@app.command()
def api() -> None:
    """Serve the user API and the registry webhook on <api.bind_host>:<api.port> (uvicorn)."""
    from service.runtime import load_service_settings

    settings = load_service_settings()  # before prefect is imported
    import uvicorn

    from metrics.exporter import serve_api_metrics
    from service.api import create_app
    from service.console_logging import configure_console_logging

    configure_console_logging()  # the API's own lines; uvicorn configures its own loggers
    serve_api_metrics(settings)
    uvicorn.run(create_app(settings), host=settings.api.bind_host, port=settings.api.port)


@app.command()
def gateway() -> None:
    """Serve the repository gateway (stock publishers) on <gateway.bind_host>:<gateway.port>."""
    from service.runtime import load_service_settings

    settings = load_service_settings()  # before prefect is imported
    import uvicorn

    from gateway.app import create_app
    from gateway.orphans import OrphanedCommitSweeper
    from metrics.gateway import serve_gateway_metrics
    from service.console_logging import configure_console_logging

    configure_console_logging()
    metrics = serve_gateway_metrics(settings)
    uvicorn.run(
        create_app(settings, metrics=metrics, sweeper=OrphanedCommitSweeper(settings)),
        host=settings.gateway.bind_host,
        port=settings.gateway.port,
    )


@app.command("serve-deployments")
def serve_deployments() -> None:
    """Serve every flow as a deployment (with schedules) against the Prefect server."""
    from service.prefect_env import apply_prefect_environment
    from service.settings import Settings

    apply_prefect_environment(Settings.load())  # before prefect is imported
    from deployments.serve import main as serve_main

    serve_main()


@app.command()
def worker() -> None:
    """Production runner: a Prefect process worker on the work pool prefect.work_pool (creates
    the pool and registers the deployments in it if missing)."""
    from service.prefect_env import apply_prefect_environment
    from service.settings import Settings

    apply_prefect_environment(Settings.load())  # before prefect is imported
    from deployments.worker import main as worker_main

    worker_main()


@app.command()
def bridge() -> None:
    """Consume RabbitMQ (bucket events, repository requests, registry events) into flow runs."""
    from service.prefect_env import apply_prefect_environment
    from service.settings import Settings

    settings = Settings.load()  # the bridge needs no Vault token
    apply_prefect_environment(settings)  # before prefect is imported
    from bridge.assembly import serve_bridge
    from service.console_logging import configure_console_logging

    configure_console_logging()
    serve_bridge(settings)


_wait_option = click.option(
    "--wait",
    "wait_s",
    type=float,
    default=None,
    help="wait up to this many seconds for the run to end; print its state and reports; "
    "exit 1 unless it completed",
)


@app.command()
@click.argument("fqrn", help="repository to sync")
@click.option(
    "--prefix", default="", show_default=False, help="backfill only keys under cvmfs/<prefix>"
)
@click.option("--dry-run/--no-dry-run", default=False, help="only report the difference")
@_wait_option
def sync(fqrn: str, prefix: str, dry_run: bool, wait_s: float | None) -> None:
    """Backfill: start a `sync` run of a repository (or a prefix of it) and print its id."""
    from bridge.run_requests import backfill_parameters
    from service.settings import Settings

    settings = Settings.load()
    _require_repository(settings, fqrn)
    parameters = backfill_parameters(fqrn, prefix, dry_run=dry_run)
    _start_run(settings, "sync/sync", parameters, wait_s)


@app.command()
@click.argument(
    "fqrn", required=False, default=None, help="one repository (default: every ready one)"
)
@click.option("--dry-run/--no-dry-run", default=False, help="only report the drift as artifacts")
@_wait_option
def reconcile(fqrn: str | None, dry_run: bool, wait_s: float | None) -> None:
    """Start a `reconcile` run (a full diff of bucket and repository, repairing drift)."""
    from bridge.run_requests import reconcile_parameters
    from service.settings import Settings

    settings = Settings.load()
    if fqrn is not None:
        _require_repository(settings, fqrn)
    parameters = reconcile_parameters(fqrn, dry_run=dry_run)
    _start_run(settings, "reconcile/reconcile", parameters, wait_s)


@app.command(
    "prefect",
    context_settings={"ignore_unknown_options": True, "allow_extra_args": True},
    add_help_option=False,
)
@click.argument("args", nargs=-1, type=click.UNPROCESSED)
def prefect_cli(args: tuple[str, ...]) -> None:
    """Prefect's own CLI against the service's Prefect server (`./svc prefect flow-run ls`).

    A bare `prefect ...` (as the runner's banner suggests) reads ~/.prefect instead, started a
    temporary server of its own and listed no deployments.
    """
    import os
    import shutil
    import sys
    from pathlib import Path

    from service.prefect_env import prefect_environment
    from service.settings import Settings

    beside = Path(sys.executable).parent / "prefect"
    binary = str(beside) if beside.exists() else shutil.which("prefect")
    if binary is None:
        click.echo("prefect: Prefect's CLI is not installed in this environment", err=True)
        raise click.exceptions.Exit(2)
    env = os.environ | prefect_environment(Settings.load())
    Path(env["PREFECT_HOME"]).mkdir(parents=True, exist_ok=True)
    os.execve(binary, [binary, *args], env)


@app.command("dead-letters")
@click.option("--limit", default=20, type=click.IntRange(min=1), help="messages to show or replay")
@click.option(
    "--replay",
    is_flag=True,
    help="move them back onto the events exchange with their original routing key "
    "(once what refused them is fixed); messages no bridge queue refused stay",
)
@click.option(
    "--drop",
    is_flag=True,
    help="remove the messages of --kind (judged: garbage, users' mistakes); the rest stay",
)
@click.option(
    "--kind", default=None, help="with --replay or --drop: only this kind (retries_exhausted ...)"
)
@click.option("--queue", default=None, help="the dead-letter queue (default: the bridge's)")
def dead_letters(limit: int, replay: bool, drop: bool, kind: str | None, queue: str | None) -> None:
    """List the dead-letter queue's messages with why each is there (removes nothing)."""
    from urllib.parse import quote

    import pika.exceptions

    from bridge.config import BridgeConfig
    from bridge.dead_letters import (
        describe,
        drop_dead_letters,
        message_count,
        peek_dead_letters,
        replay_dead_letters,
    )
    from service.settings import Settings

    settings = Settings.load()
    mq = settings.rabbitmq
    name = queue or BridgeConfig().dead_letter_queue
    if drop and (replay or kind is None):
        click.echo("dead-letters: --drop needs --kind and no --replay", err=True)
        raise click.exceptions.Exit(2)
    try:
        if drop:
            assert kind is not None
            result = drop_dead_letters(mq, name, limit, kind)
            for letter in result.taken:
                click.echo(f"dropped: {describe(letter)}")
            click.echo(f"{len(result.taken)} dropped, {len(result.kept)} kept in {name}")
            return
        if replay:
            result = replay_dead_letters(mq, name, limit, kind=kind)
            for letter in result.taken:
                click.echo(f"replayed: {describe(letter)}")
            click.echo(
                f"{len(result.taken)} replayed onto {mq.events_exchange}, "
                f"{len(result.kept)} kept in {name}"
            )
            return
        total = message_count(mq, name)
        letters = peek_dead_letters(mq, name, limit)
    except pika.exceptions.AMQPError as error:
        click.echo(
            f"dead-letters: RabbitMQ at {mq.amqp_url} (queue {name}) refused or did not answer "
            f"({type(error).__name__}: {error}); is it up? `./svc stack status`",
            err=True,
        )
        raise click.exceptions.Exit(1) from error
    for letter in letters:
        click.echo(describe(letter))
    management = f"{mq.management_url}/#/queues/{quote(mq.vhost, safe='')}/{name}"
    click.echo(
        f"{total} message(s) in {name}, {len(letters)} shown; listing removes none "
        f"(management UI: {management}). `--replay` moves them back once fixed."
    )


def _require_repository(settings: Settings, fqrn: str) -> None:
    """Refuse a name the registry does not know before any run starts (a typo used to start a
    run that failed on the missing publish lock, a message about Prefect internals)."""
    from service.repositories import RepositoryRegistry, database_url

    registry = RepositoryRegistry.open(settings)
    try:
        if registry.get(fqrn) is not None:
            return
        known = [repository.fqrn for repository in registry.repositories()]
    finally:
        registry.close()
    listed = ", ".join(known[:20]) + (f" and {len(known) - 20} more" if len(known) > 20 else "")
    click.echo(
        f"no repository {fqrn!r} in the registry ({database_url(settings)}); "
        f"known: {listed or 'none'}. No run was started.",
        err=True,
    )
    raise click.exceptions.Exit(2)


def _start_run(
    settings: Settings,
    deployment: str,
    parameters: dict[str, object],
    wait_s: float | None = None,
) -> None:
    """The same starter the bridge uses; a fresh key, since an operator's run is deliberate."""
    import uuid

    from bridge.errors import PermanentStartError, TransientStartError
    from bridge.flow_starter import PrefectFlowStarter

    starter = PrefectFlowStarter(settings.prefect.api_url, tags=("cli",))
    try:
        run_id = starter(deployment, parameters, f"cli-{uuid.uuid4()}")
    except TransientStartError as error:
        click.echo(
            f"{deployment}: no run started: {error}. Is the Prefect server up "
            "(`./svc stack status`) and a runner serving the deployments (`./svc up`, "
            "`./svc serve-deployments` or `./svc worker`)? Then run this again.",
            err=True,
        )
        raise click.exceptions.Exit(1) from error
    except PermanentStartError as error:
        click.echo(f"{deployment}: no run started: {error}", err=True)
        raise click.exceptions.Exit(2) from error
    click.echo(f"{deployment}: flow run {run_id}")
    click.echo(f"  {settings.prefect.ui_url}/runs/flow-run/{run_id}")
    if wait_s is not None:
        _follow(settings, deployment, run_id, wait_s)


def _follow(settings: Settings, deployment: str, run_id: str, wait_s: float) -> None:
    """Print how the run ended and what it reported; exit 1 unless it completed."""
    import httpx

    from deployments.follow import FollowTimeout, follow_run

    try:
        outcome = follow_run(settings.prefect.api_url, run_id, timeout_s=wait_s)
    except FollowTimeout as error:
        click.echo(f"{deployment}: {error}; it goes on (see the link above)", err=True)
        raise click.exceptions.Exit(1) from error
    except httpx.HTTPError as error:
        click.echo(f"{deployment}: lost sight of the run ({error!r}); see the link above", err=True)
        raise click.exceptions.Exit(1) from error
    for report in outcome.reports:
        click.echo(f"  report: {report}")
    message = f": {outcome.message}" if outcome.message else ""
    click.echo(f"{deployment}: {outcome.state_name}{message}")
    if not outcome.completed:
        click.echo("  its log's last 'what next' line says whether Retry can help", err=True)
        raise click.exceptions.Exit(1)


if __name__ == "__main__":
    app()
