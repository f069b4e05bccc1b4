"""Lease paths `<fqrn>/<sub path>`: split, validate and compare them.

Upstream: gateway/internal/gateway/pathutil.go (SplitLeasePath, CheckPathOverlap).
"""

from __future__ import annotations

from dataclasses import dataclass

from gateway.errors import GatewayError

MAX_LEASE_PATH = 4096


@dataclass(frozen=True)
class LeasePath:
    """A repository and a sub path in canonical form: `/` or `/a/b` (no trailing slash)."""

    fqrn: str
    path: str

    def __str__(self) -> str:
        return f"{self.fqrn}{self.path}" if self.path != "/" else f"{self.fqrn}/"

    @property
    def segments(self) -> tuple[str, ...]:
        return tuple(part for part in self.path.split("/") if part)

    def overlaps(self, other: LeasePath) -> bool:
        """One path is the other or below it (segment-wise, so /a and /ab do not overlap)."""
        if self.fqrn != other.fqrn:
            return False
        mine, theirs = self.segments, other.segments
        shorter = min(len(mine), len(theirs))
        return mine[:shorter] == theirs[:shorter]

    def contains(self, repository_path: str) -> bool:
        """`repository_path` ('/a/b/c' or '') is this path or below it."""
        parts = tuple(part for part in repository_path.split("/") if part)
        return parts[: len(self.segments)] == self.segments


def parse_lease_path(text: str) -> LeasePath:
    """`<fqrn>/` or `<fqrn>/<sub>/<path>` as the publisher sends it (`cvmfs_server transaction
    <fqrn>/<sub path>`); absolute paths, `.`/`..`, empty segments and NUL are refused."""
    if not text or len(text) > MAX_LEASE_PATH or "\0" in text:
        raise GatewayError("invalid lease path: expected '<repository>/<sub path>'")
    if text.startswith("/"):
        raise GatewayError(
            f"invalid lease path {text[:200]!r}: input has leading slash; "
            "use '<repository>/<sub path>'"
        )
    fqrn, slash, rest = text.partition("/")
    if not slash or not fqrn:
        raise GatewayError(f"invalid lease path {text[:200]!r}: missing repository name or subpath")
    parts = rest.rstrip("/").split("/") if rest.rstrip("/") else []
    if any(part in ("", ".", "..") for part in parts):
        raise GatewayError(
            f"invalid lease path {text[:200]!r}: empty, '.' or '..' segments are not allowed"
        )
    return LeasePath(fqrn, "/" + "/".join(parts))
