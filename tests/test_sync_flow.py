"""Sync on the real stack: bucket state → published revision, read back with the reader.

The flow is called directly here (the bridge path is tested in test_sync_bridge.py); events are
represented by the keys they name, duplicated and out of order on purpose.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import tarfile
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from cvmfs.reader import RepositoryReader
from flows.provision import provision
from flows.sync import ReconcileRequest, reconcile, sync
from service.auth import TokenVerifier
from service.client_config import stratum0_url
from service.keystore import KeyOwner, KeyStore
from service.messages import AmqpProperties, AuthorizedProvisionRequest, RequestParser
from service.repositories import RepositoryRegistry
from service.s3_clients import demo_s3
from service.settings import Settings
from tasks.sync import SyncRequest
from tests.conftest import settings_env
from tests.issuer import TestIssuer

pytest_plugins = ("tests.fixtures_auth",)
pytestmark = [pytest.mark.stack, pytest.mark.slow]


@pytest.fixture
def service_settings(
    vault: Settings,
    ceph: Settings,
    rabbitmq: Settings,
    prefect_server: Settings,
    stratum0_http: Settings,
    monkeypatch: pytest.MonkeyPatch,
) -> Iterator[Settings]:
    for key, value in settings_env(vault).items():
        monkeypatch.setenv(key, value)
    yield vault


@pytest.fixture
def repo(
    service_settings: Settings, oidc_issuer: TestIssuer, token_verifier: TokenVerifier
) -> tuple[str, str]:
    """A provisioned personal repository and its (demo user's) bucket."""
    user = f"s{uuid.uuid4().hex[:6]}"
    bucket = f"{user}-bucket"
    demo_s3(service_settings).create_bucket(Bucket=bucket)
    body = json.dumps(
        {
            "version": 1,
            "request_id": f"req-{user}",
            "access_token": oidc_issuer.mint(preferred_username=user, sub=f"sub-{user}"),
            "kind": "personal",
            "bucket": bucket,
        }
    ).encode()
    parser = RequestParser.from_settings(service_settings)
    request = parser.authorize(parser.parse(body, AmqpProperties()), token_verifier)  # type: ignore[arg-type]
    assert isinstance(request, AuthorizedProvisionRequest), request
    assert provision(request).status == "ok"
    return request.fqrn, bucket


def _reader(settings: Settings, fqrn: str, tmp_path: Path) -> RepositoryReader:
    registry = RepositoryRegistry.open(settings)
    repository = registry.require(fqrn)
    registry.close()
    owner = KeyOwner.for_repository(repository.kind, repository.owner_subject, repository.group)
    keys = KeyStore.from_settings(settings.vault).read(owner, fqrn)
    key_file = tmp_path / f"{fqrn}.pub"
    key_file.write_text(keys.master_public_pem)
    return RepositoryReader.open(stratum0_url(settings, fqrn), fqrn, [key_file])


def _tree(reader: RepositoryReader) -> dict[str, tuple[str, int, bytes | str | None]]:
    """path → (type, permission bits, content sha256 / symlink target / None for dirs)."""
    tree: dict[str, tuple[str, int, bytes | str | None]] = {}
    for entry in reader.walk():
        if entry.path == "":
            continue
        mode = entry.mode & 0o7777
        if entry.is_symlink:
            tree[entry.path] = ("symlink", mode, entry.symlink)
        elif entry.is_dir:
            tree[entry.path] = ("dir", mode, None)
        else:
            digest = hashlib.sha256(reader.read(entry.path)).digest()
            tree[entry.path] = ("file", mode, digest)
    return tree


def _sha(data: bytes) -> bytes:
    return hashlib.sha256(data).digest()


def _tarball() -> bytes:
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w:gz") as tar:
        for name, data, mode in (
            ("bin/tool", b"#!/bin/sh\necho tool\n", 0o755),
            ("README", b"r", 0o644),
        ):
            info = tarfile.TarInfo(name)
            info.size, info.mode = len(data), mode
            tar.addfile(info, io.BytesIO(data))
        link = tarfile.TarInfo("bin/alias")
        link.type, link.linkname = tarfile.SYMTYPE, "tool"
        tar.addfile(link)
    return buffer.getvalue()


def test_bucket_changes_become_revisions(
    service_settings: Settings, repo: tuple[str, str], tmp_path: Path
) -> None:
    settings = service_settings
    fqrn, bucket = repo
    s3 = demo_s3(settings)
    big = os.urandom(1 << 20) * 100  # 100 MiB: chunked, ranged download in parts
    elf = b"\x7fELF\x02\x01\x01" + b"\0" * 100
    uploads = {
        "cvmfs/hello.txt": b"hello v1\n",
        "cvmfs/a/b/c/deep.txt": b"deep\n",
        "cvmfs/names/file with spaces.txt": b"spaces\n",
        "cvmfs/names/ünïcødé-ファイル.txt": b"utf-8\n",
        "cvmfs/bin/prog": elf,
        "cvmfs/big/blob.bin": big,
        "cvmfs/sw/pkg.cvmfs.tar.gz": _tarball(),
    }
    for key, body in uploads.items():
        s3.put_object(Bucket=bucket, Key=key, Body=body)
    s3.put_object(
        Bucket=bucket,
        Key="cvmfs/bin/script-by-s3cmd",
        Body=b"plain text but executable per s3cmd\n",
        Metadata={"s3cmd-attrs": "mode:33261/mtime:1704067200/uid:0/gid:0"},
    )
    keys = [*uploads, "cvmfs/bin/script-by-s3cmd"]
    # Duplicated and out of order, as events arrive.
    first = sync(SyncRequest(repo=fqrn, changed_keys=list(reversed(keys)) + keys[:3]))
    assert first == 2

    with _reader(settings, fqrn, tmp_path) as reader:
        tree = _tree(reader)
        assert tree["/hello.txt"] == ("file", 0o644, _sha(b"hello v1\n"))
        assert tree["/a/b/c/deep.txt"][2] == _sha(b"deep\n")
        assert tree["/names/file with spaces.txt"][2] == _sha(b"spaces\n")
        assert tree["/names/ünïcødé-ファイル.txt"][2] == _sha(b"utf-8\n")
        assert tree["/bin/prog"][:2] == ("file", 0o755)
        assert tree["/bin/script-by-s3cmd"][:2] == ("file", 0o755)
        assert reader.stat("/bin/script-by-s3cmd").mtime == 1704067200
        assert tree["/big/blob.bin"][2] == _sha(big)
        assert reader.stat("/big/blob.bin").is_chunked
        assert tree["/sw/pkg/bin/tool"] == ("file", 0o755, _sha(b"#!/bin/sh\necho tool\n"))
        assert tree["/sw/pkg/bin/alias"] == ("symlink", 0o777, "tool")
        assert "/sw/pkg.cvmfs.tar.gz" not in tree

    # Nothing changed: the same events again publish nothing.
    assert sync(SyncRequest(repo=fqrn, changed_keys=keys)) is None

    # Overwrite, delete (a directory left empty disappears), tarball removed, traversal refused.
    s3.put_object(Bucket=bucket, Key="cvmfs/hello.txt", Body=b"hello v2\n")
    s3.delete_object(Bucket=bucket, Key="cvmfs/a/b/c/deep.txt")
    s3.delete_object(Bucket=bucket, Key="cvmfs/sw/pkg.cvmfs.tar.gz")
    s3.put_object(Bucket=bucket, Key="cvmfs/../escape.txt", Body=b"x")
    second = sync(
        SyncRequest(
            repo=fqrn,
            changed_keys=[
                "cvmfs/a/b/c/deep.txt",
                "cvmfs/hello.txt",
                "cvmfs/sw/pkg.cvmfs.tar.gz",
                "cvmfs/../escape.txt",
                "cvmfs/hello.txt",
            ],
        )
    )
    assert second == 3
    with _reader(settings, fqrn, tmp_path) as reader:
        tree = _tree(reader)
        assert tree["/hello.txt"][2] == _sha(b"hello v2\n")
        assert not any(path.startswith("/a") for path in tree)
        assert not any(path.startswith("/sw/pkg") for path in tree)
        assert "/escape.txt" not in tree and "/../escape.txt" not in tree
        assert "/big/blob.bin" in tree

    # Drift no event reported: reconcile finds it (dry run first: nothing published).
    s3.put_object(Bucket=bucket, Key="cvmfs/missed.txt", Body=b"no event for me\n")
    s3.delete_object(Bucket=bucket, Key="cvmfs/bin/prog")
    assert reconcile(ReconcileRequest(repo=fqrn, dry_run=True)) == {fqrn: None}
    assert reconcile(ReconcileRequest(repo=fqrn)) == {fqrn: 4}
    with _reader(settings, fqrn, tmp_path) as reader:
        tree = _tree(reader)
        assert tree["/missed.txt"][2] == _sha(b"no event for me\n")
        assert "/bin/prog" not in tree
        assert "/bin/script-by-s3cmd" in tree
    assert reconcile(ReconcileRequest(repo=fqrn)) == {fqrn: None}
