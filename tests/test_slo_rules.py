"""The SLO page's Prometheus rules: valid for Prometheus, and they fire (or stay quiet) as
docs/slo.md says, evaluated by Prometheus's own engine (`promtool test rules`) on made-up series.
"""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest

RULES_DIR = Path(__file__).resolve().parent.parent / "docs" / "prometheus"


def _promtool() -> str:
    found = shutil.which("promtool")
    if found is None:
        pytest.fail(
            "promtool not found: install Debian's prometheus package "
            "(`./svc stack install --for-tests` does)"
        )
    return found


def _run(*args: str) -> str:
    result = subprocess.run(
        [_promtool(), *args], cwd=RULES_DIR, capture_output=True, text=True, check=False
    )
    output = result.stdout + result.stderr
    assert result.returncode == 0, output
    return output


def test_the_rules_are_valid_prometheus_rules() -> None:
    assert "SUCCESS: 17 rules found" in _run("check", "rules", "cvmfs-rules.yml")


def test_the_alerts_fire_as_the_slo_page_says() -> None:
    assert "SUCCESS" in _run("test", "rules", "cvmfs-rules.test.yml")
