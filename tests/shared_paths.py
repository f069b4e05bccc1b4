"""Where the shared fixtures are: `shared/` beside the checkout (as in CI), else /work/shared."""

from __future__ import annotations

from pathlib import Path

_BESIDE = Path(__file__).resolve().parents[2] / "shared"
SHARED = _BESIDE if _BESIDE.is_dir() else Path("/work/shared")
FIXTURES = SHARED / "fixtures"
GOLDEN = FIXTURES / "cvmfs" / "golden.example.org"
EVENTS = FIXTURES / "events"
