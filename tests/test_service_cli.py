"""The service commands of `cvmfs-svc` parse their arguments as they did under typer (the port
to click kept every name, default and flag); running them needs Prefect or the stack, which
other tests do (test_stack, test_api_cli, the flow tests)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import click
from click.testing import CliRunner

from service.cli import app
from service.repositories import RepositoryClaim, RepositoryRegistry


def parsed(command: str, args: list[str]) -> dict[str, object]:
    group = app
    *groups, name = command.split()
    for part in groups:
        sub = group.commands[part]
        assert isinstance(sub, click.Group)
        group = sub
    return dict(group.commands[name].make_context(name, args).params)


def test_sync_and_reconcile_options_keep_their_defaults_and_negations() -> None:
    assert parsed("sync", ["a.example.org"]) == {
        "fqrn": "a.example.org",
        "prefix": "",
        "dry_run": False,
        "wait_s": None,
    }
    assert parsed("sync", ["a.example.org", "--prefix", "sw/", "--dry-run"])["dry_run"] is True
    assert parsed("reconcile", []) == {"fqrn": None, "dry_run": False, "wait_s": None}
    assert parsed("reconcile", ["--wait", "300"])["wait_s"] == 300.0
    assert parsed("reconcile", ["a.example.org", "--no-dry-run"])["fqrn"] == "a.example.org"
    assert parsed("stack up", []) == {"names": ()}
    assert parsed("stack status", ["rabbitmq", "prefect"]) == {"names": ("rabbitmq", "prefect")}
    assert parsed("stack install", ["--for-tests"]) == {"for_tests": True}


def test_help_lists_every_command_and_a_bad_option_exits_2() -> None:
    runner = CliRunner()
    top = runner.invoke(app, ["--help"])
    assert top.exit_code == 0
    for name in ("up", "api", "gateway", "serve-deployments", "worker", "bridge", "sync"):
        assert name in top.output
    assert "reconcile" in top.output and "repo" in top.output and "stack" in top.output
    imported = " ".join(runner.invoke(app, ["repo", "import", "--help"]).output.split())
    assert "A directory, or a tarball" in imported  # argument help is shown
    assert "[default: /etc/cvmfs/keys]" in imported
    wrong = runner.invoke(app, ["repo", "import", "/nowhere", "/nothing", "--no-such-option"])
    assert wrong.exit_code == 2 and "No such option" in wrong.output


def test_sync_and_reconcile_of_an_unknown_repository_start_no_run(tmp_path: Path) -> None:
    """A mistyped name is refused with the names the registry knows; before, it started a run
    that failed on the missing publish lock ("create it first (tasks.locks...)")."""
    registry = RepositoryRegistry.open_url(f"sqlite:///{tmp_path / 'registry.sqlite3'}")
    registry.claim(
        RepositoryClaim(
            fqrn="known.example.org",
            kind="personal",
            owner_subject="s",
            owner_username="u",
            bucket="b",
        )
    )
    registry.close()
    env = {
        "CVMFS_SVC_DATA_DIR": str(tmp_path),
        "CVMFS_SVC_DATABASE_URL": f"sqlite:///{tmp_path / 'registry.sqlite3'}",
        "CVMFS_SVC_PREFECT__PORT": "9",  # nothing answers: starting a run would fail otherwise
    }
    runner = CliRunner()
    for args in (["sync", "knwon.example.org"], ["reconcile", "knwon.example.org"]):
        refused = runner.invoke(app, args, env=env)
        assert refused.exit_code == 2, refused.output
        assert "no repository 'knwon.example.org' in the registry" in refused.output
        assert "known: known.example.org. No run was started." in refused.output
    # A known name with Prefect down: one line that says what to check, not a traceback.
    for args in (["sync", "known.example.org"], ["reconcile", "known.example.org"]):
        down = runner.invoke(app, args, env=env)
        assert down.exit_code == 1 and isinstance(down.exception, SystemExit), down.output
        assert "no run started: Prefect API at http://127.0.0.1:9/api unreachable" in down.output
        assert "Is the Prefect server up" in down.output


def test_prefect_runs_prefects_cli_against_the_services_server(tmp_path: Path) -> None:
    """`prefect deployment ls` alone started a temporary server and listed nothing; through
    `cvmfs-svc prefect` it talks to the server of the settings."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("CVMFS_SVC_", "PREFECT_"))}
    env |= {"CVMFS_SVC_DATA_DIR": str(tmp_path / "data"), "CVMFS_SVC_PREFECT__PORT": "4567"}
    cli = Path(sys.executable).parent / "cvmfs-svc"
    shown = subprocess.run(
        [str(cli), "prefect", "config", "view"], env=env, capture_output=True, text=True, timeout=60
    )
    assert shown.returncode == 0, shown.stdout + shown.stderr
    assert "PREFECT_API_URL='http://127.0.0.1:4567/api' (from env)" in shown.stdout
    assert "PREFECT_SERVER_EPHEMERAL_ENABLED='false' (from env)" in shown.stdout
