"""The gateway's refusals: each becomes the JSON reply `{"status": "error", "reason": ...}`.

The stock publisher prints `reason` (swissknife_lease_json.cc), so it says what to do next.
"""

from __future__ import annotations


class GatewayError(Exception):
    """A request is refused; `reason` is what the publisher shows its user."""

    status_code = 200  # the stock gateway's refusals are JSON replies with HTTP 200

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


class BadRequest(GatewayError):
    """A body the stock gateway cannot decode (not JSON, a non-numeric api_version or
    header_size): HTTP 400 there (frontend/leases.go, payloads.go), and here, but with the
    JSON reply the publisher can parse."""

    status_code = 400


class InvalidLease(GatewayError):
    """An unknown, cancelled or expired session token."""

    def __init__(self, detail: str = "") -> None:
        super().__init__(
            "invalid lease"
            + (f" ({detail})" if detail else "")
            + ": start a new transaction (cvmfs_server transaction)"
        )


class PathBusy(GatewayError):
    """The path overlaps an active lease; `remaining_s` until that lease expires."""

    def __init__(self, remaining_s: float) -> None:
        super().__init__(f"path busy, remaining = {remaining_s:.0f}s")
        self.remaining_s = remaining_s
