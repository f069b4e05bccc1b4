"""`cvmfs-svc stack install | up | down | status`: the operator's handle on the local stack.

Reads the settings once, drives stack.manager, prints one line per component.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import TYPE_CHECKING

import click

from stack.errors import StackError

if TYPE_CHECKING:  # loaded by the stack commands only: `cvmfs-svc repo ...` never needs boto3
    from stack.component import Health
    from stack.manager import Stack


@click.group("stack", no_args_is_help=True, context_settings={"show_default": True})
def stack_app() -> None:
    """The local service stack (RabbitMQ, Ceph, OpenBao, registry, Prefect, stratum-0 HTTP)."""


names_argument = click.argument(
    "names",
    nargs=-1,
    help="Components to act on (default: all), e.g. rabbitmq prefect.",
)


def print_health(stack: Stack, healths: list[Health]) -> bool:
    """One line per component; True when all are healthy."""
    by_name = {c.name: c for c in stack.components}
    for health in healths:
        state = "healthy" if health.healthy else "UNHEALTHY"
        rss_mb = stack.rss_bytes(by_name[health.name]) / 2**20
        click.echo(
            f"{health.name:<14} {state:<9} {health.url:<28} {rss_mb:7.1f} MB  {health.detail}"
        )
    unhealthy = [h.name for h in healths if not h.healthy]
    if unhealthy:
        names = " ".join(unhealthy)
        logs = stack.settings.absolute_data_dir / (
            unhealthy[0] if len(unhealthy) == 1 else "<component>"
        )
        click.echo(
            f"next: `./svc stack up {names}` starts what is not running; one that runs but "
            f"stays unhealthy: read its log under {logs}/, then "
            f"`./svc stack down {names} && ./svc stack up {names}`"
        )
    return not unhealthy


def install_missing(stack: Stack, for_tests: bool = False) -> None:
    missing = stack.missing_packages(for_tests)
    if not missing:
        click.echo("stack: all packages present")
        return
    click.echo(f"stack: installing {' '.join(missing)} (apt-get / pip) ...")
    installed = stack.install(for_tests, notify=click.echo)
    click.echo(f"stack: installed {' '.join(installed)}")


def bring_up(stack: Stack, names: list[str] | None = None) -> None:
    """Start the stack, print its health, exit 1 if something is unhealthy."""
    began = time.monotonic()
    healths = stack.up(
        names, progress=lambda name, took_s: click.echo(f"stack: {name} up ({took_s:.1f} s)")
    )
    click.echo(
        f"stack: up in {time.monotonic() - began:.1f} s ({stack.settings.absolute_data_dir})"
    )
    if not print_health(stack, healths):
        raise click.exceptions.Exit(1)


@stack_app.command("install")
@click.option("--for-tests", is_flag=True, help="Also what the test suite needs (a browser).")
def install_cmd(for_tests: bool) -> None:
    """Install the Debian and Python packages the stack needs and lacks."""
    with _errors():
        install_missing(_stack(), for_tests)


@stack_app.command("up")
@names_argument
def up_cmd(names: tuple[str, ...]) -> None:
    """Start the stack (or the named components); what already runs is left alone."""
    with _errors():
        bring_up(_stack(), list(names) or None)


@stack_app.command("down")
@names_argument
def down_cmd(names: tuple[str, ...]) -> None:
    """Stop the stack (or the named components), in reverse start order."""
    with _errors():
        stack = _stack()
        began = time.monotonic()
        stack.down(list(names) or None)
        click.echo(f"stack: down in {time.monotonic() - began:.1f} s")


@stack_app.command("status")
@names_argument
def status_cmd(names: tuple[str, ...]) -> None:
    """Each component with its URL and health; exit status 1 if any is unhealthy."""
    with _errors():
        stack = _stack()
        if not print_health(stack, stack.status(list(names) or None)):
            raise click.exceptions.Exit(1)


def _stack() -> Stack:
    from service.settings import Settings
    from stack.manager import Stack

    return Stack(Settings.load())


@contextmanager
def _errors() -> Iterator[None]:
    """Turn a StackError into a one-line message and exit status 2, without a traceback."""
    try:
        yield
    except StackError as exc:
        click.echo(f"stack: {exc}", err=True)
        raise click.exceptions.Exit(2) from exc
