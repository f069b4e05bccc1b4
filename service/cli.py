"""The operator CLI, `cvmfs-svc` (run it as ./svc from a checkout).

Subcommand groups live next to what they drive; this module only assembles them.
"""

from __future__ import annotations

import typer

app = typer.Typer(no_args_is_help=True, help="CVMFS distribution service: operator commands.")


@app.callback()
def main() -> None:
    """CVMFS distribution service: operator commands."""
