"""File metadata of a bucket object as it should appear in the repository.

Modes and mtimes come from the uploading tool's metadata (s3cmd, rclone) when present,
else from the content: ELF binaries and `#!` scripts are executable, everything else 0644.
"""

from __future__ import annotations

import stat
from collections.abc import Mapping
from dataclasses import dataclass

EXECUTABLE_MODE = 0o755
REGULAR_MODE = 0o644
# Clients mount nosuid; the writer strips these bits anyway, so never ask for them.
_ALLOWED_PERMISSION_BITS = 0o777
_EXECUTABLE_MAGICS = (b"\x7fELF", b"#!")
SNIFF_BYTES = 4


@dataclass(frozen=True)
class FileAttributes:
    mode: int  # permission bits only
    mtime: int | None  # seconds since the epoch; None = use the object's LastModified


def _lower_keys(metadata: Mapping[str, str]) -> dict[str, str]:
    return {key.lower().removeprefix("x-amz-meta-"): value for key, value in metadata.items()}


def _s3cmd_attributes(value: str) -> dict[str, str]:
    """`x-amz-meta-s3cmd-attrs` = `atime:..../ctime:..../gid:0/mode:33261/mtime:..../uid:0`."""
    fields: dict[str, str] = {}
    for part in value.split("/"):
        name, sep, field_value = part.partition(":")
        if sep:
            fields[name.strip()] = field_value.strip()
    return fields


def _parse_int(value: str | None) -> int | None:
    if value is None:
        return None
    try:
        return int(float(value))
    except ValueError:
        return None


def attributes_from_metadata(metadata: Mapping[str, str], head: bytes) -> FileAttributes:
    """Decide mode and mtime from user metadata (boto3's `Metadata` dict) and the first bytes."""
    meta = _lower_keys(metadata)
    mode: int | None = None
    mtime: int | None = None
    s3cmd = meta.get("s3cmd-attrs")
    if s3cmd:
        fields = _s3cmd_attributes(s3cmd)
        raw_mode = _parse_int(fields.get("mode"))
        # s3cmd records the full st_mode; accept it, or bare permission bits, for files only.
        if raw_mode is not None and (stat.S_ISREG(raw_mode) or 0 <= raw_mode < 0o10000):
            mode = stat.S_IMODE(raw_mode) & _ALLOWED_PERMISSION_BITS
        mtime = _parse_int(fields.get("mtime"))
    if mtime is None:
        mtime = _parse_int(meta.get("mtime"))  # rclone: seconds with a fraction
    if mode is None:
        executable = head.startswith(_EXECUTABLE_MAGICS)
        mode = EXECUTABLE_MODE if executable else REGULAR_MODE
    if mtime is not None and mtime < 0:
        mtime = None
    return FileAttributes(mode=mode, mtime=mtime)
