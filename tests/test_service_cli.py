"""The service commands of `cvmfs-svc` parse their arguments as they did under typer (the port
to click kept every name, default and flag); running them needs Prefect or the stack, which
other tests do (test_stack, test_api_cli, the flow tests)."""

from __future__ import annotations

import click
from click.testing import CliRunner

from service.cli import app


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
    }
    assert parsed("sync", ["a.example.org", "--prefix", "sw/", "--dry-run"])["dry_run"] is True
    assert parsed("reconcile", []) == {"fqrn": None, "dry_run": False}
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
