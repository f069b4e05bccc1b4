"""Sync on the real stack: bucket state → published revision, read back with the reader.

The flow is called directly here (the same uploads through RGW, RabbitMQ, the bridge and the
served deployment: test_full_chain.py); events are represented by the keys they name,
duplicated and out of order on purpose.
"""

from __future__ import annotations

import io
import json
import tarfile
from pathlib import Path

import pika
import pytest

from bridge.amqp import connection_parameters
from buckets.s3_clients import demo_s3
from flows.sync import ReconcileRequest, reconcile, sync
from service.repositories import RepositoryRegistry
from service.settings import Settings
from tasks.sync import SyncRequest
from tests.fixtures_service import ProvisionedRepository, open_reader
from tests.sync_support import (
    TOOL_SCRIPT,
    latest_artifact_rows,
    repository_tree,
    sample_uploads,
    sha,
    tool_tarball,
)

pytest_plugins = ("tests.fixtures_auth", "tests.fixtures_service")
pytestmark = [pytest.mark.stack, pytest.mark.slow]


def test_bucket_changes_become_revisions(
    service_settings: Settings, provisioned: ProvisionedRepository, tmp_path: Path
) -> None:
    settings = service_settings
    fqrn, bucket = provisioned.fqrn, provisioned.bucket
    s3 = demo_s3(settings)
    uploads = sample_uploads()
    big = uploads["cvmfs/big/blob.bin"]
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

    with open_reader(settings, fqrn, tmp_path) as reader:
        tree = repository_tree(reader)
        assert tree["/hello.txt"] == ("file", 0o644, sha(b"hello v1\n"))
        assert tree["/a/b/c/deep.txt"][2] == sha(b"deep\n")
        assert tree["/names/file with spaces.txt"][2] == sha(b"spaces\n")
        assert tree["/names/ünïcødé-ファイル.txt"][2] == sha(b"utf-8\n")
        assert tree["/bin/prog"][:2] == ("file", 0o755)
        assert tree["/bin/script-by-s3cmd"][:2] == ("file", 0o755)
        assert reader.stat("/bin/script-by-s3cmd").mtime == 1704067200
        assert tree["/big/blob.bin"][2] == sha(big)
        assert reader.stat("/big/blob.bin").is_chunked
        assert tree["/sw/pkg/bin/tool"] == ("file", 0o755, sha(TOOL_SCRIPT))
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
    with open_reader(settings, fqrn, tmp_path) as reader:
        tree = repository_tree(reader)
        assert tree["/hello.txt"][2] == sha(b"hello v2\n")
        assert not any(path.startswith("/a") for path in tree)
        assert not any(path.startswith("/sw/pkg") for path in tree)
        assert "/escape.txt" not in tree and "/../escape.txt" not in tree
        assert "/big/blob.bin" in tree
    # Refused where its owner sees it (the repository's refusals, the dashboard) by the
    # event's own run: the bridge passes such keys on to the sync (bridge/s3_events.py).
    registry = RepositoryRegistry.open(settings)
    try:
        refused = {r.s3_key: r.reason for r in registry.refusals(fqrn)}
    finally:
        registry.close()
    assert "'..'" in refused["cvmfs/../escape.txt"], refused

    # Drift no event reported: reconcile finds it (dry run first: nothing published).
    s3.put_object(Bucket=bucket, Key="cvmfs/missed.txt", Body=b"no event for me\n")
    s3.delete_object(Bucket=bucket, Key="cvmfs/bin/prog")
    assert reconcile(ReconcileRequest(repo=fqrn, dry_run=True)) == {fqrn: None}
    assert reconcile(ReconcileRequest(repo=fqrn)) == {fqrn: 4}
    with open_reader(settings, fqrn, tmp_path) as reader:
        tree = repository_tree(reader)
        assert tree["/missed.txt"][2] == sha(b"no event for me\n")
        assert "/bin/prog" not in tree
        assert "/bin/script-by-s3cmd" in tree
    assert reconcile(ReconcileRequest(repo=fqrn)) == {fqrn: None}


def _tar(*members: tarfile.TarInfo, data: bytes = b"x") -> bytes:
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w") as tar:
        for member in members:
            if member.isreg():
                member.size = len(data)
                tar.addfile(member, io.BytesIO(data))
            else:
                tar.addfile(member)
    return buffer.getvalue()


def _symlink(name: str, target: str) -> tarfile.TarInfo:
    member = tarfile.TarInfo(name)
    member.type, member.linkname = tarfile.SYMTYPE, target
    return member


def test_escaping_tarballs_and_oversize_objects_are_refused_and_dead_lettered(
    service_settings: Settings,
    provisioned: ProvisionedRepository,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    settings = service_settings
    monkeypatch.setenv("CVMFS_SVC_SYNC__MAX_OBJECT_BYTES", str(1 << 20))  # read by the flow
    fqrn, bucket = provisioned.fqrn, provisioned.bucket
    mq = settings.rabbitmq
    connection = pika.BlockingConnection(connection_parameters(mq))
    channel = connection.channel()
    channel.exchange_declare(mq.dead_letter_exchange, exchange_type="topic", durable=True)
    queue = channel.queue_declare("", exclusive=True).method.queue
    channel.queue_bind(queue, mq.dead_letter_exchange, routing_key=f"sync.refused.{fqrn}")
    s3 = demo_s3(settings)
    uploads = {
        "cvmfs/ok.txt": b"fine\n",
        "cvmfs/dotdot.cvmfs.tar": _tar(tarfile.TarInfo("../../outside.txt")),
        "cvmfs/through-link.cvmfs.tar": _tar(
            _symlink("etc", "../../.."), tarfile.TarInfo("etc/passwd")
        ),
        "cvmfs/fine.cvmfs.tar": tool_tarball(),
        "cvmfs/too-big.bin": b"\0" * ((1 << 20) + 1),
    }
    for key, body in uploads.items():
        s3.put_object(Bucket=bucket, Key=key, Body=body)
    try:
        revision = sync(SyncRequest(repo=fqrn, changed_keys=list(uploads)))
        assert revision == 2  # the other uploads are published, the refused ones only skipped
        with open_reader(settings, fqrn, tmp_path) as reader:
            tree = repository_tree(reader)
        assert tree["/ok.txt"][2] == sha(b"fine\n")
        assert tree["/fine/bin/tool"] == ("file", 0o755, sha(TOOL_SCRIPT))
        assert not any(
            p.startswith(("/dotdot", "/through-link", "/outside", "/too-big")) for p in tree
        )

        parked: dict[str, str] = {}
        for _ in range(50):
            method, properties, body = channel.basic_get(queue, auto_ack=True)
            if method is None:
                if len(parked) == 3:
                    break
                connection.sleep(0.1)
                continue
            message = json.loads(body)
            assert message["repo"] == fqrn and message["bucket"] == bucket
            parked[message["key"]] = str(properties.headers["x-cvmfs-reason"])
        assert sorted(parked) == [
            "cvmfs/dotdot.cvmfs.tar",
            "cvmfs/through-link.cvmfs.tar",
            "cvmfs/too-big.bin",
        ]
        assert "above the limit of 1048576" in parked["cvmfs/too-big.bin"]
        assert "outside.txt" in parked["cvmfs/dotdot.cvmfs.tar"]
        assert "etc" in parked["cvmfs/through-link.cvmfs.tar"]
    finally:
        connection.close()
    # A reconcile meets the same tarballs: it reports them and does not fail.
    assert reconcile(ReconcileRequest(repo=fqrn)) == {fqrn: None}


def _special(name: str, kind: bytes, mode: int, major: int = 0, minor: int = 0) -> tarfile.TarInfo:
    member = tarfile.TarInfo(name)
    member.type, member.mode, member.devmajor, member.devminor = kind, mode, major, minor
    return member


def rootfs_tarball() -> bytes:
    """What a root file system tarball holds besides files: /dev nodes, a FIFO, a sticky /tmp,
    a setuid binary."""
    motd, su = tarfile.TarInfo("etc/motd"), tarfile.TarInfo("bin/su")
    motd.mode, su.mode = 0o644, 0o4755
    return _tar(
        _special("dev", tarfile.DIRTYPE, 0o755),
        _special("dev/null", tarfile.CHRTYPE, 0o666, 1, 3),
        _special("dev/loop0", tarfile.BLKTYPE, 0o660, 7, 0),
        _special("run/initctl", tarfile.FIFOTYPE, 0o600),
        _special("tmp", tarfile.DIRTYPE, 0o1777),
        motd,
        su,
    )


def test_tarball_special_files_are_published_or_skipped_with_a_note(
    service_settings: Settings,
    provisioned: ProvisionedRepository,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    settings = service_settings
    fqrn, bucket = provisioned.fqrn, provisioned.bucket
    s3 = demo_s3(settings)
    s3.put_object(Bucket=bucket, Key="cvmfs/rootfs.cvmfs.tar", Body=rootfs_tarball())
    s3.put_object(Bucket=bucket, Key="cvmfs/plain.txt", Body=b"plain\n")
    revision = sync(
        SyncRequest(repo=fqrn, changed_keys=["cvmfs/rootfs.cvmfs.tar", "cvmfs/plain.txt"])
    )
    assert revision == 2
    with open_reader(settings, fqrn, tmp_path) as reader:
        tree = repository_tree(reader)
    assert {p: v for p, v in tree.items() if p.startswith("/rootfs")} == {
        "/rootfs": ("dir", 0o755, None),
        "/rootfs/dev": ("dir", 0o755, None),
        "/rootfs/dev/null": ("char-device", 0o666, "1:3"),
        "/rootfs/dev/loop0": ("block-device", 0o660, "7:0"),
        "/rootfs/run": ("dir", 0o755, None),
        "/rootfs/run/initctl": ("fifo", 0o600, None),
        "/rootfs/tmp": ("dir", 0o1777, None),
        "/rootfs/etc": ("dir", 0o755, None),
        "/rootfs/etc/motd": ("file", 0o644, sha(b"x")),
        "/rootfs/bin": ("dir", 0o755, None),
        "/rootfs/bin/su": ("file", 0o755, sha(b"x")),
    }
    assert tree["/plain.txt"] == ("file", 0o644, sha(b"plain\n"))
    artifact_key = f"sync-{fqrn.replace('.', '-')}"
    notes = [r for r in latest_artifact_rows(settings, artifact_key) if r["path"] != "/rootfs"]
    assert {"action": "setuid/setgid stripped", "path": "/rootfs/bin/su"}.items() <= next(
        r for r in notes if r["action"] == "setuid/setgid stripped"
    ).items()

    # Configured to leave special files out: the rest of the tarball publishes, the artifact
    # names each one left out.
    monkeypatch.setenv("CVMFS_SVC_SYNC__SKIP_SPECIAL", "true")  # read by the flow
    s3.put_object(Bucket=bucket, Key="cvmfs/skipped.cvmfs.tar", Body=rootfs_tarball())
    assert sync(SyncRequest(repo=fqrn, changed_keys=["cvmfs/skipped.cvmfs.tar"])) == 3
    with open_reader(settings, fqrn, tmp_path) as reader:
        tree = repository_tree(reader)
    skipped = {p: v for p, v in tree.items() if p.startswith("/skipped")}
    assert not [v for v in skipped.values() if v[0] not in ("dir", "file")]
    assert skipped["/skipped/etc/motd"] == ("file", 0o644, sha(b"x"))
    assert skipped["/skipped/tmp"] == ("dir", 0o1777, None)
    assert "/rootfs/dev/null" in tree  # the first tarball's special files stay
    rows = latest_artifact_rows(settings, artifact_key)
    assert sorted((r["path"], r["key"]) for r in rows if r["action"] == "skipped special file") == [
        ("/skipped/dev/loop0", "cvmfs/skipped.cvmfs.tar"),
        ("/skipped/dev/null", "cvmfs/skipped.cvmfs.tar"),
        ("/skipped/run/initctl", "cvmfs/skipped.cvmfs.tar"),
    ]
    assert reconcile(ReconcileRequest(repo=fqrn)) == {fqrn: None}
