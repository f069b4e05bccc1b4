"""The read-side operator commands (`repo ls/cat/info/fsck`) on the golden fixture."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

from click.testing import CliRunner

from cvmfs.cli import repo_app
from tests.cvmfs_golden import FQRN, PUBLIC_KEY, STRATUM0, writable_copy

runner = CliRunner()
COMMON = ["--fqrn", FQRN, "--key", str(PUBLIC_KEY), "--now", "2026-12-01T00:00:00Z"]


def run(*args: str) -> tuple[int, str, bytes]:
    result = runner.invoke(repo_app, [*args])
    return result.exit_code, result.output, result.stdout_bytes


def test_ls_plain_long_recursive_and_by_tag() -> None:
    code, out, _ = run("ls", str(STRATUM0), "/", *COMMON)
    assert code == 0, out
    assert out.splitlines()[:3] == ["a", "bin", "data"]
    code, out, _ = run("ls", str(STRATUM0), "links", "-l", *COMMON)
    assert "lrwxrwxrwx" in out and "/links/relative -> ../hello.txt" in out
    code, out, _ = run("ls", str(STRATUM0), "-R", *COMMON)
    assert len(out.splitlines()) == 38 and "nested/deeper/d1.txt" in out
    code, out, _ = run("ls", str(STRATUM0), "/", "--tag", "v1", *COMMON)
    assert code == 0 and "revC.txt" not in out and "hello.txt" in out


def test_cat_streams_verified_content() -> None:
    code, _, data = run("cat", str(STRATUM0), "data/big-chunked.bin", *COMMON)
    assert code == 0
    assert hashlib.sha256(data).hexdigest() == (
        "115bc2139707c4586fcf56c16bc2bebb46eea85a50e201f33634c71c3ecb523d"
    )
    code, out, _ = run("cat", str(STRATUM0), "no/such/file", *COMMON)
    assert code == 2 and "does not exist" in out


def test_info_shows_manifest_and_whitelist_expiry() -> None:
    code, out, _ = run("info", str(STRATUM0), "--json", *COMMON)
    assert code == 0, out
    info = json.loads(out)
    assert info["revision"] == 4
    assert info["manifest"]["history_hash"] == "dc9a6e44168288b0b4b5367a58056ef43a08cde0"
    assert info["whitelist"]["expires"] == "2026-12-28T03:37:32+00:00"
    assert info["whitelist"]["expired"] is False
    assert [c["mountpoint"] for c in info["catalogs"]] == ["/", "/nested", "/nested/deeper"]
    code, out, _ = run("info", str(STRATUM0), *COMMON)
    assert "whitelist expires 2026-12-28T03:37:32+00:00" in out


def test_expired_whitelist_and_wrong_key_exit_2(tmp_path: Path) -> None:
    late = [a if a != "2026-12-01T00:00:00Z" else "2026-12-29T00:00:00Z" for a in COMMON]
    code, out, _ = run("info", str(STRATUM0), *late)
    assert code == 2 and "expired" in out
    code, out, _ = run("ls", str(STRATUM0), "--fqrn", FQRN, "--key", str(tmp_path / "x.pub"))
    assert code == 2 and "not found" in out


def test_fsck_clean_and_corrupt(tmp_path: Path) -> None:
    code, out, _ = run("fsck", str(STRATUM0), "--all-revisions", *COMMON)
    assert code == 0, out
    assert out.strip().endswith("clean") and out.startswith("5 revision(s)")
    copy = writable_copy(tmp_path / "stratum0")
    (copy / "data/d8/ce481831d04ee3ee6c2e8084d87bb3a53deed5P").unlink()
    code, out, _ = run("fsck", str(copy), *COMMON)
    assert code == 1
    assert "PROBLEM /data/big-chunked.bin" in out and "1 problem(s)" in out
