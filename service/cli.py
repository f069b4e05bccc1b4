"""The operator CLI, `cvmfs-svc` (run it as ./svc from a checkout).

Subcommand groups live next to what they drive; this module only assembles them.
"""

from __future__ import annotations

import typer

from service.run import serve_forever
from service.settings import LOOPBACK, Settings
from stack.cli import bring_up, install_missing, stack_app
from stack.errors import StackError
from stack.manager import Stack

app = typer.Typer(no_args_is_help=True, help="CVMFS distribution service: operator commands.")


@app.callback()
def main() -> None:
    """CVMFS distribution service: operator commands."""


app.add_typer(stack_app, name="stack")


@app.command()
def up() -> None:
    """Install what is missing, bring the local stack up, then run the service in the foreground.

    Ctrl-C stops the service; the stack keeps running (`cvmfs-svc stack down` stops it).
    """
    settings = Settings.load()
    stack = Stack(settings)
    try:
        install_missing(stack)
        bring_up(stack)
    except StackError as exc:
        typer.echo(f"up: {exc}", err=True)
        raise typer.Exit(2) from exc
    ceph = settings.ceph
    if settings.stratum0.backend == "s3":
        stratum0_url = f"{ceph.s3_endpoint}/{settings.stratum0.bucket}/<fqrn>/"
    else:
        stratum0_url = f"http://127.0.0.1:{settings.stratum0.http_port}/cvmfs/<fqrn>/"
    typer.echo(
        "\n"
        f"Prefect UI      http://127.0.0.1:{settings.prefect.port}\n"
        f"S3 endpoint     {ceph.s3_endpoint}  (region {ceph.region})\n"
        f"demo S3 user    {ceph.demo_user}: access key {ceph.demo_access_key}, "
        f"secret key {ceph.demo_secret_key.get_secret_value()}\n"
        f"OCI registry    {settings.registry.url}\n"
        f"stratum-0       {stratum0_url}\n"
    )
    serve_forever(settings)


@app.command()
def api() -> None:
    """Serve the user API and the registry webhook on 127.0.0.1:<api.port> (uvicorn)."""
    import uvicorn

    from service.api import create_app
    from service.runtime import load_settings

    settings = load_settings()  # with the local stack's OpenBao token when none is set
    uvicorn.run(create_app(settings), host=LOOPBACK, port=settings.api.port)
