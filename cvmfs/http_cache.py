"""How long HTTP caches (Squid, stratum 1s, clients) may keep each stratum-0 file.

The stock stratum-0 web server configuration (the Apache snippet `cvmfs_server mkfs` writes)
lets the signed entry points (`.cvmfspublished`, `.cvmfswhitelist`, ...) expire after 61 s and
content-addressed objects after 3 days (spec §1.1); every backend that serves a repository (the
stack's HTTP server, RGW for the S3 backend) gives the same headers.
"""

from __future__ import annotations

CVMFS_CONTENT_TYPE = "application/x-cvmfs"
OBJECT_CONTENT_TYPE = "application/octet-stream"
MANIFEST_MAX_AGE_S = 61
OBJECT_MAX_AGE_S = 259200


def is_entry_point(key: str) -> bool:
    """The signed, mutable files at the repository root (their names start with `.cvmfs`)."""
    return key.rsplit("/", 1)[-1].startswith(".cvmfs")


def content_headers(key: str) -> dict[str, str]:
    """Content-Type and Cache-Control for the stratum-0 file at `key` (relative or a path)."""
    if is_entry_point(key):
        return {
            "Content-Type": CVMFS_CONTENT_TYPE,
            "Cache-Control": f"max-age={MANIFEST_MAX_AGE_S}",
        }
    return {"Content-Type": OBJECT_CONTENT_TYPE, "Cache-Control": f"max-age={OBJECT_MAX_AGE_S}"}
