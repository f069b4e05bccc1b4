"""`cvmfs-svc login` as a user runs it: a real subprocess with its own config home.

`start_login()` returns the running command with the complete verification URL and the code it
printed, for a test to act as the user's browser (tests/idp_login.approve_device_code, or
Chromium in tests/test_dashboard_browser.py).
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

from service.settings import Settings
from tests.conftest import settings_env

CLI = Path(sys.executable).parent / "cvmfs-svc"
_PROMPT = re.compile(r"Open (\S+) in a browser and check that it shows the code (\S+)")


def cli_env(settings: Settings, home: Path) -> dict[str, str]:
    """The CLI's environment: `settings` (their issuer), the token file under `home`."""
    return {**os.environ, **settings_env(settings), "XDG_CONFIG_HOME": str(home)}


def start_login(settings: Settings, home: Path) -> tuple[subprocess.Popen[str], str, str]:
    """`cvmfs-svc login` running, with the complete verification URL and code it printed."""
    process = subprocess.Popen(
        [str(CLI), "login"],
        env=cli_env(settings, home),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    assert process.stdout is not None
    first = process.stdout.readline()
    prompt = _PROMPT.search(first)
    if prompt is None:
        process.kill()
        raise AssertionError(f"login printed {first!r}; stderr: {process.communicate()[1]}")
    return process, prompt.group(1), prompt.group(2)


def finish(process: subprocess.Popen[str], timeout_s: float) -> tuple[int, str, str]:
    """(exit code, rest of stdout, stderr) once the command has ended."""
    out, err = process.communicate(timeout=timeout_s)
    return process.returncode, out, err


def run_cli(settings: Settings, home: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(CLI), *args],
        env=cli_env(settings, home),
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
