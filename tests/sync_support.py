"""What the sync tests share: a repository's tree as comparable tuples, a small tarball."""

from __future__ import annotations

import hashlib
import io
import json
import os
import tarfile

import httpx

from cvmfs.reader import RepositoryReader
from service.settings import Settings

Tree = dict[str, tuple[str, int, bytes | str | None]]
TOOL_SCRIPT = b"#!/bin/sh\necho tool\n"


def repository_tree(reader: RepositoryReader) -> Tree:
    """path → (type, permission bits, content sha256 / symlink target / None for dirs)."""
    tree: Tree = {}
    for entry in reader.walk():
        if entry.path == "":
            continue
        mode = entry.mode & 0o7777
        if entry.is_symlink:
            tree[entry.path] = ("symlink", mode, entry.symlink)
        elif entry.is_dir:
            tree[entry.path] = ("dir", mode, None)
        elif entry.is_special:
            device = entry.device
            kind = str(entry.special_kind)
            tree[entry.path] = (kind, mode, f"{device[0]}:{device[1]}" if device else None)
        else:
            tree[entry.path] = ("file", mode, sha(reader.read(entry.path)))
    return tree


def sha(data: bytes) -> bytes:
    return hashlib.sha256(data).digest()


def tool_tarball() -> bytes:
    """bin/tool (0755 script), README (0644) and the symlink bin/alias → tool, gzipped."""
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w:gz") as tar:
        for name, data, mode in (("bin/tool", TOOL_SCRIPT, 0o755), ("README", b"r", 0o644)):
            info = tarfile.TarInfo(name)
            info.size, info.mode = len(data), mode
            tar.addfile(info, io.BytesIO(data))
        link = tarfile.TarInfo("bin/alias")
        link.type, link.linkname = tarfile.SYMTYPE, "tool"
        tar.addfile(link)
    return buffer.getvalue()


ELF_BINARY = b"\x7fELF\x02\x01\x01" + b"\0" * 100


def sample_uploads() -> dict[str, bytes]:
    """The sync cases as bucket objects: a file, nested paths, a space and UTF-8 in names, an
    ELF binary, 100 MiB (chunked and downloaded in parts) and a tarball."""
    return {
        "cvmfs/hello.txt": b"hello v1\n",
        "cvmfs/a/b/c/deep.txt": b"deep\n",
        "cvmfs/names/file with spaces.txt": b"spaces\n",
        "cvmfs/names/ünïcødé-ファイル.txt": b"utf-8\n",
        "cvmfs/bin/prog": ELF_BINARY,
        "cvmfs/big/blob.bin": os.urandom(1 << 20) * 100,
        "cvmfs/sw/pkg.cvmfs.tar.gz": tool_tarball(),
    }


def latest_artifact_rows(settings: Settings, key: str) -> list[dict[str, object]]:
    """The table of the newest Prefect artifact with `key` (what the operator sees)."""
    response = httpx.post(
        f"{settings.prefect.api_url}/artifacts/filter",
        json={"artifacts": {"key": {"any_": [key]}}, "sort": "CREATED_DESC", "limit": 1},
    )
    response.raise_for_status()
    (artifact,) = response.json()
    data = artifact["data"]
    return list(json.loads(data) if isinstance(data, str) else data)
