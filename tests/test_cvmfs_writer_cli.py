"""Write-side CLI: create, import (directory and tarball), tag, rollback, resign-whitelist, then
the read-side fsck/cat of the same app see the result."""

from __future__ import annotations

import io
import json
import tarfile
from pathlib import Path

from click.testing import CliRunner

from cvmfs.cli import repo_app
from cvmfs.keys import certificate_fingerprint

FQRN = "cli.example.org"


def fingerprint_of(keys: Path) -> str:
    return certificate_fingerprint((keys / f"{FQRN}.crt").read_text())


def _run(*args: str) -> dict[str, object] | str:
    result = CliRunner().invoke(repo_app, list(args))
    assert result.exit_code == 0, result.output
    try:
        parsed: dict[str, object] = json.loads(result.stdout)
        return parsed
    except json.JSONDecodeError:
        return result.stdout


def _tarball(path: Path) -> None:
    with tarfile.open(path, "w:gz") as tar:
        for name, data in (("pkg/bin/tool", b"#!/bin/sh\n"), ("pkg/README", b"read me\n")):
            info = tarfile.TarInfo(name)
            info.size, info.mode, info.mtime = len(data), 0o755, 1_700_000_000
            tar.addfile(info, io.BytesIO(data))


def test_create_import_tag_rollback_resign_from_the_command_line(tmp_path: Path) -> None:
    repo, keys = tmp_path / FQRN, tmp_path / "keys"
    created = _run("create", str(repo), "--keys-dir", str(keys), "--generate-keys")
    assert isinstance(created, dict) and created["revision"] == 1
    assert (keys / f"{FQRN}.masterkey").exists() and (repo / ".cvmfspublished").exists()

    source = tmp_path / "src"
    (source / "sub").mkdir(parents=True)
    (source / "sub" / "file.txt").write_bytes(b"from a directory\n")
    imported = _run(
        "import",
        str(repo),
        str(source),
        "-p",
        "/dir",
        "--keys-dir",
        str(keys),
        "-m",
        "directory import",
        "-t",
        "v1",
    )
    assert isinstance(imported, dict) and imported["revision"] == 2
    stats = imported["imported"]
    assert isinstance(stats, dict) and (stats["files"], stats["bytes"]) == (1, 17)

    tarball = tmp_path / "pkg.tar.gz"
    _tarball(tarball)
    third = _run("import", str(repo), str(tarball), "-p", "/tar", "--keys-dir", str(keys))
    assert isinstance(third, dict) and third["revision"] == 3

    pub = str(keys / f"{FQRN}.pub")
    assert _run("cat", str(repo), "/tar/pkg/README", "-k", pub) == "read me\n"

    tagged = _run("tag", str(repo), "after-tar", "--keys-dir", str(keys), "-m", "with tarball")
    assert isinstance(tagged, dict) and tagged["revision"] == 3

    rolled = _run("rollback", str(repo), "v1", "--keys-dir", str(keys))
    assert isinstance(rolled, dict) and rolled["revision"] == 4
    gone = CliRunner().invoke(repo_app, ["cat", str(repo), "/tar/pkg/README", "-k", pub])
    assert gone.exit_code != 0

    resigned = _run(
        "resign-whitelist",
        str(repo),
        "--master-key",
        str(keys / f"{FQRN}.masterkey"),
        "--days",
        "10",
    )
    assert isinstance(resigned, dict)
    assert resigned["fingerprints"] == [fingerprint_of(keys)]

    check = CliRunner().invoke(repo_app, ["fsck", str(repo), "-k", pub, "--all-revisions"])
    assert check.exit_code == 0, check.output
    assert "clean" in check.stdout


def test_create_in_fast_mode_and_import(tmp_path: Path) -> None:
    repo, keys = tmp_path / FQRN, tmp_path / "keys"
    _run("create", str(repo), "--keys-dir", str(keys), "--generate-keys", "--compression", "isal")
    source = tmp_path / "src"
    source.mkdir()
    (source / "big.txt").write_bytes(b"fast mode text line\n" * 10_000)
    imported = _run("import", str(repo), str(source), "--keys-dir", str(keys))
    assert isinstance(imported, dict) and imported["revision"] == 2
    pub = str(keys / f"{FQRN}.pub")
    assert _run("cat", str(repo), "/big.txt", "-k", pub) == "fast mode text line\n" * 10_000
    info = _run("info", str(repo), "-k", pub)
    assert isinstance(info, str) and "compression       isal" in info
    assert "clean" in str(_run("fsck", str(repo), "-k", pub))
