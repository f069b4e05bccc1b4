"""A `repo` command imports what it uses: the lazy-import rule of the CLI (issue #13).

A one-file `cvmfs-svc repo import` is a whole process (~0.13 s CPU, bench/README.md); importing
Prefect, the API, the stack manager or the settings would cost it seconds or tens of ms. The
check runs the real commands in a fresh interpreter and reads `sys.modules` afterwards, so it
holds whichever module adds an import; it times nothing.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parent.parent

# What a `repo` command must never load (each costs from ~10 ms to seconds at start-up):
# the service's other floors, its clients, typer/pydantic (a TypeAdapter per parameter).
FORBIDDEN = (
    "prefect",
    "fastapi",
    "uvicorn",
    "httpx",
    "boto3",
    "botocore",
    "hvac",
    "pika",
    "sqlalchemy",
    "typer",
    "pydantic",
    "pydantic_settings",
    "rich",
    "numpy",
    "service.settings",
    "stack.manager",
    "cvmfs.reader",
)

CHILD = """
import json, sys
from service.cli import app

for args in json.loads(sys.argv[1]):
    try:
        app(args, standalone_mode=False)
    except SystemExit as exc:
        if exc.code:
            raise
print("LOADED " + json.dumps(sorted(sys.modules)))
"""


def test_repo_create_and_import_load_only_what_they_use(tmp_path: Path) -> None:
    repo, keys, source = tmp_path / "lazy.example.org", tmp_path / "keys", tmp_path / "src"
    source.mkdir()
    (source / "tool").write_bytes(b"#!/bin/sh\necho one file\n")
    commands = [
        ["repo", "create", str(repo), "--keys-dir", str(keys), "--generate-keys"],
        ["repo", "import", str(repo), str(source), "-p", "/one", "--keys-dir", str(keys)],
    ]
    child = subprocess.run(
        [sys.executable, "-c", CHILD, json.dumps(commands)],
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert child.returncode == 0, child.stderr
    assert '"files": 1' in child.stdout  # the import did run and publish the file
    loaded = set(json.loads(child.stdout.rsplit("LOADED ", 1)[1]))
    assert "cvmfs.writer" in loaded and "click" in loaded  # the check sees real imports
    offending = sorted(
        name
        for name in FORBIDDEN
        if name in loaded or any(m.startswith(name + ".") for m in loaded)
    )
    assert offending == [], f"a repo command loaded {offending}: import them inside the command"


def test_token_with_a_valid_saved_token_loads_no_http_client_nor_settings(tmp_path: Path) -> None:
    # `curl -H "Authorization: Bearer $(cvmfs-svc token)"` runs it before every call: with a
    # token that is still valid it only reads the file (login/cli.py).
    (tmp_path / "cvmfs-svc").mkdir(mode=0o700)
    saved = {
        "issuer": "http://127.0.0.1:1/",
        "client_id": "cvmfs-cli",
        "token_endpoint": "http://127.0.0.1:1/token",
        "access_token": "a.saved.token",
        "refresh_token": "r",
        "expires_at": 4102444800,  # 2100
    }
    (tmp_path / "cvmfs-svc" / "token.json").write_text(json.dumps(saved))
    child = subprocess.run(
        [sys.executable, "-c", CHILD, json.dumps([["token"]])],
        cwd=REPO_ROOT,
        env={**os.environ, "XDG_CONFIG_HOME": str(tmp_path)},
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert child.returncode == 0, child.stderr
    assert child.stdout.startswith("a.saved.token\n")
    loaded = set(json.loads(child.stdout.rsplit("LOADED ", 1)[1]))
    assert "login.token_file" in loaded  # the check sees the command's own import
    forbidden = (
        "httpx",
        "prefect",
        "fastapi",
        "uvicorn",
        "boto3",
        "service.settings",
        "stack.manager",
    )
    offending = sorted(
        name
        for name in forbidden
        if name in loaded or any(m.startswith(name + ".") for m in loaded)
    )
    assert offending == [], f"`cvmfs-svc token` loaded {offending}"
