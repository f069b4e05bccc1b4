"""The whole service as `./svc up` runs it — deployments runner, bridge and API as processes —
driven only from outside, like users: a repository request on RabbitMQ, an upload to the bucket,
an image push to the registry. Each result is read back over HTTP with the verifying reader.
"""

from __future__ import annotations

import io
import json
import posixpath
import stat
import tarfile
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import httpx
import pika
import pytest
from prefect.client.schemas.objects import FlowRun
from prefect.deployments import run_deployment
from prefect.settings import PREFECT_API_URL, temporary_settings
from prometheus_client.parser import text_string_to_metric_families
from prometheus_client.samples import Sample

from bridge.amqp import connection_parameters
from bridge.run_requests import reconcile_parameters
from buckets.s3_clients import demo_s3
from cvmfs.reader import RepositoryReader
from service.client_config import stratum0_url
from service.keystore import KeyStore
from service.replies import REPLY_QUEUE
from service.run import SERVICE_COMMANDS
from service.settings import Settings
from stack.rabbitmq import RabbitMQ
from tasks.unpack import SERVICE_KEY_OWNER
from tests.fixtures_service import public_key_file
from tests.issuer import TestIssuer
from tests.service_processes import running_service, until
from tests.sync_support import (
    ELF_BINARY,
    TOOL_SCRIPT,
    latest_artifact_rows,
    repository_tree,
    sample_uploads,
    sha,
)
from tests.test_images_support import OciLayout

pytestmark = [pytest.mark.stack, pytest.mark.slow]
# A provision through RabbitMQ, the bridge and the served flow took over 120 s at load 15+.
WAIT_S = 240.0


@pytest.fixture(scope="module")
def issuer() -> Iterator[TestIssuer]:
    with TestIssuer() as running:
        yield running


@pytest.fixture(scope="module")
def service_logs(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Where each service process writes what `./svc up` would show on the console."""
    return tmp_path_factory.mktemp("service-logs")


@pytest.fixture(scope="module")
def service(
    vault: Settings,
    ceph: Settings,
    rabbitmq: Settings,
    registry: Settings,
    prefect_server: Settings,
    stratum0_http: Settings,
    issuer: TestIssuer,
    service_logs: Path,
) -> Iterator[Settings]:
    settings = vault.model_copy(
        update={
            "oidc": vault.oidc.model_copy(
                update={"issuer_url": issuer.url, "audience": issuer.audience}
            ),
            # The exporter reads state at every scrape, so a new repository shows at once.
            "metrics": vault.metrics.model_copy(
                update={"repository_state_ttl_s": 0, "service_state_ttl_s": 0}
            ),
        }
    )
    with running_service(settings, service_logs) as running:
        yield running


def _until(condition: Callable[[], bool], what: str, timeout_s: float = WAIT_S) -> None:
    until(condition, what, timeout_s)


def _reader(settings: Settings, fqrn: str, key_file: Path) -> RepositoryReader:
    return RepositoryReader.open(stratum0_url(settings, fqrn), fqrn, [key_file])


def _provision(settings: Settings, issuer: TestIssuer, user: str, bucket: str) -> str:
    """A repository request on RabbitMQ, as a dashboard sends it; returns the fqrn replied."""
    demo_s3(settings).create_bucket(Bucket=bucket)
    request_id = f"chain-{user}"
    body = json.dumps(
        {
            "version": 1,
            "request_id": request_id,
            "access_token": issuer.mint(preferred_username=user, sub=f"sub-{user}"),
            "kind": "personal",
            "bucket": bucket,
        }
    ).encode()
    connection = pika.BlockingConnection(connection_parameters(settings.rabbitmq))
    replies: list[dict[str, object]] = []
    try:
        channel = connection.channel()
        channel.queue_declare(REPLY_QUEUE, durable=True)  # as the service declares it
        channel.basic_publish(
            settings.rabbitmq.events_exchange,
            "repository.request",
            body,
            pika.BasicProperties(delivery_mode=2, content_type="application/json"),
        )

        def replied() -> bool:
            method, _props, raw = channel.basic_get(REPLY_QUEUE, auto_ack=True)
            while method is not None:
                replies.append(json.loads(raw))
                method, _props, raw = channel.basic_get(REPLY_QUEUE, auto_ack=True)
            return any(r["request_id"] == request_id for r in replies)

        _until(replied, "a reply to the repository request")
    finally:
        connection.close()
    reply = next(r for r in replies if r["request_id"] == request_id)
    assert reply["status"] == "ok", reply
    return str(reply["fqrn"])


def test_uploads_become_revisions_through_rgw_and_the_bridge(
    service: Settings, issuer: TestIssuer, tmp_path: Path
) -> None:
    """Put, nested, spaces and UTF-8, an ELF, 100 MiB, a tarball; then overwrite and deletes:
    only S3 calls, the service does the rest (RGW → RabbitMQ → bridge → sync → stratum-0)."""
    settings = service
    user = f"u{uuid.uuid4().hex[:6]}"
    bucket = f"{user}-uploads"
    fqrn = _provision(settings, issuer, user, bucket)
    key_file = public_key_file(settings, fqrn, tmp_path)
    s3 = demo_s3(settings)
    uploads = sample_uploads()
    for key, body in uploads.items():
        s3.put_object(Bucket=bucket, Key=key, Body=body)
    expected = {
        "/hello.txt": ("file", 0o644, sha(b"hello v1\n")),
        "/a/b/c/deep.txt": ("file", 0o644, sha(b"deep\n")),
        "/names/file with spaces.txt": ("file", 0o644, sha(b"spaces\n")),
        "/names/ünïcødé-ファイル.txt": ("file", 0o644, sha(b"utf-8\n")),
        "/bin/prog": ("file", 0o755, sha(ELF_BINARY)),
        "/big/blob.bin": ("file", 0o644, sha(uploads["cvmfs/big/blob.bin"])),
        "/sw/pkg/bin/tool": ("file", 0o755, sha(TOOL_SCRIPT)),
        "/sw/pkg/bin/alias": ("symlink", 0o777, "tool"),
        "/sw/pkg/README": ("file", 0o644, sha(b"r")),
    }

    def files() -> dict[str, tuple[str, int, bytes | str | None]]:
        with _reader(settings, fqrn, key_file) as reader:
            return {p: v for p, v in repository_tree(reader).items() if v[0] != "dir"}

    _until(lambda: files() == expected, f"every upload published in {fqrn}", 240)

    s3.put_object(Bucket=bucket, Key="cvmfs/hello.txt", Body=b"hello v2\n")
    s3.delete_object(Bucket=bucket, Key="cvmfs/a/b/c/deep.txt")
    s3.delete_object(Bucket=bucket, Key="cvmfs/sw/pkg.cvmfs.tar.gz")
    expected["/hello.txt"] = ("file", 0o644, sha(b"hello v2\n"))
    for gone in ("/a/b/c/deep.txt", "/sw/pkg/bin/tool", "/sw/pkg/bin/alias", "/sw/pkg/README"):
        del expected[gone]
    _until(lambda: files() == expected, f"the overwrite and deletes published in {fqrn}")
    with _reader(settings, fqrn, key_file) as reader:
        directories = {p for p, v in repository_tree(reader).items() if v[0] == "dir"}
    assert not {"/a", "/sw/pkg"} & directories  # directories left empty disappear


def _scrape(port: int) -> dict[str, list[Sample]]:
    """The samples of a process's /metrics, parsed as Prometheus parses them, by name."""
    text = httpx.get(f"http://127.0.0.1:{port}/metrics", timeout=10).text
    samples: dict[str, list[Sample]] = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            samples.setdefault(sample.name, []).append(sample)
    return samples


def _value(samples: dict[str, list[Sample]], name: str, **labels: str) -> float:
    """The one sample of `name` with these labels (0 if absent: nothing recorded yet)."""
    found = [s.value for s in samples.get(name, []) if labels.items() <= s.labels.items()]
    assert len(found) <= 1, (name, labels, found)
    return found[0] if found else 0.0


def test_metrics_count_an_upload_from_s3_event_to_visible(
    service: Settings, issuer: TestIssuer, tmp_path: Path
) -> None:
    """Each process's endpoint, scraped as Prometheus does, moves with one upload: the
    runner's latency histogram (from its exited flow-run processes), the bridge's events,
    the API's exporter (repository revision, whitelist, queues, flow runs), the gateway's."""
    settings = service
    ports = settings.metrics
    user = f"m{uuid.uuid4().hex[:6]}"
    bucket = f"{user}-metrics"
    fqrn = _provision(settings, issuer, user, bucket)
    key_file = public_key_file(settings, fqrn, tmp_path)
    latency = "cvmfs_upload_to_visible_seconds"
    runner_before = _scrape(ports.runner_port)
    bridge_before = _scrape(ports.bridge_port)

    demo_s3(settings).put_object(Bucket=bucket, Key="cvmfs/metrics.txt", Body=b"counted\n")

    def visible() -> bool:
        with _reader(settings, fqrn, key_file) as reader:
            return reader.read("/metrics.txt") == b"counted\n"

    _until(visible, f"the upload published in {fqrn}")

    def latency_moved() -> bool:
        after = _scrape(ports.runner_port)
        return _value(after, f"{latency}_count") > _value(runner_before, f"{latency}_count")

    _until(latency_moved, "the runner's upload-to-visible histogram counting the upload", 30)
    runner = _scrape(ports.runner_port)
    assert _value(runner, f"{latency}_sum") > _value(runner_before, f"{latency}_sum")
    assert _value(runner, f"{latency}_bucket", le="+Inf") == _value(runner, f"{latency}_count")
    assert _value(runner, "cvmfs_publish_duration_seconds_count", flow="sync") >= 1
    assert _value(runner, "cvmfs_publish_size_bytes_sum", flow="sync") >= len(b"counted\n")
    assert _value(runner, "cvmfs_lease_wait_seconds_count", flow="sync") >= 1

    received = "cvmfs_bridge_s3_events_received_total"
    bridge = _scrape(ports.bridge_port)
    assert _value(bridge, received) > _value(bridge_before, received)
    assert _value(bridge, "cvmfs_bridge_flow_runs_started_total", deployment="sync/sync") >= 1

    api = _scrape(ports.api_port)
    for source in ("rabbitmq", "prefect", "stratum0"):
        assert _value(api, "cvmfs_exporter_source_up", source=source) == 1, source
    assert _value(api, "cvmfs_repository_revision", repo=fqrn) >= 2  # created, then the upload
    assert 0 <= _value(api, "cvmfs_repository_revision_age_seconds", repo=fqrn) < 600
    remaining = _value(api, "cvmfs_repository_whitelist_remaining_seconds", repo=fqrn)
    assert 20 * 86400 < remaining <= 31 * 86400  # a fresh 30-day whitelist
    assert any(s.labels["queue"] == "cvmfs.bridge.s3-events" for s in api["cvmfs_queue_messages"])
    assert _value(api, "cvmfs_flow_runs", state="completed") >= 2  # provision and sync

    gateway_url = f"http://127.0.0.1:{settings.gateway.port}/api/v1/repos"
    assert httpx.get(gateway_url).status_code == 200
    gateway = _scrape(ports.gateway_port)
    assert (
        _value(
            gateway,
            "cvmfs_gateway_requests_total",
            method="GET",
            route="/api/v1/repos",
            status="200",
        )
        >= 1
    )


def test_a_file_and_directory_conflict_is_reported_and_the_rest_publishes(
    service: Settings, issuer: TestIssuer, tmp_path: Path
) -> None:
    """Issue #14's batch, from S3 calls only: `cvmfs/adv/conflict` and
    `cvmfs/adv/conflict/child.txt` with harmless uploads. The harmless ones (and the child:
    the directory wins) are published; the conflict is in the repository's status in the API
    and in the dead-letter queue, naming both keys; a served reconcile completes."""
    settings = service
    user = f"h{uuid.uuid4().hex[:6]}"
    bucket = f"{user}-hostile"
    fqrn = _provision(settings, issuer, user, bucket)
    key_file = public_key_file(settings, fqrn, tmp_path)
    mq = settings.rabbitmq
    connection = pika.BlockingConnection(connection_parameters(mq))
    channel = connection.channel()
    channel.exchange_declare(mq.dead_letter_exchange, exchange_type="topic", durable=True)
    queue = channel.queue_declare("", exclusive=True).method.queue
    channel.queue_bind(queue, mq.dead_letter_exchange, routing_key=f"sync.refused.{fqrn}")
    s3 = demo_s3(settings)
    uploads = {
        "cvmfs/adv/conflict": b"a file\n",
        "cvmfs/adv/conflict/child.txt": b"a child\n",
        "cvmfs/adv/harmless.txt": b"harmless\n",
        "cvmfs/tools/run.sh": b"#!/bin/sh\necho run\n",
        "cvmfs/docs/": b"",  # a console's folder object
    }
    try:
        for key, body in uploads.items():
            s3.put_object(Bucket=bucket, Key=key, Body=body)
        expected = {
            "/adv/conflict/child.txt": b"a child\n",
            "/adv/harmless.txt": b"harmless\n",
            "/tools/run.sh": b"#!/bin/sh\necho run\n",
        }

        def files() -> dict[str, bytes]:
            with _reader(settings, fqrn, key_file) as reader:
                return {e.path: reader.read(e.path) for e in reader.walk() if e.is_regular}

        _until(lambda: files() == expected, f"the harmless uploads published in {fqrn}")

        token = issuer.mint(preferred_username=user, sub=f"sub-{user}")
        status = httpx.get(
            f"http://127.0.0.1:{settings.api.port}/repositories/{fqrn}",
            headers={"Authorization": f"Bearer {token}"},
        )
        assert status.status_code == 200, status.text
        refusals = status.json()["refusals"]
        assert [(r["key"], r["other_key"], r["kind"]) for r in refusals] == [
            ("cvmfs/adv/conflict", "cvmfs/adv/conflict/child.txt", "pair")
        ]
        assert "cvmfs/adv/conflict/child.txt" in refusals[0]["reason"]

        parked: list[dict[str, object]] = []

        def dead_lettered() -> bool:
            method, _properties, body = channel.basic_get(queue, auto_ack=True)
            while method is not None:
                parked.append(json.loads(body))
                method, _properties, body = channel.basic_get(queue, auto_ack=True)
            return bool(parked)

        _until(dead_lettered, "the refusal in the dead-letter queue", 30)
        assert [(p["key"], p["other_key"]) for p in parked] == [
            ("cvmfs/adv/conflict", "cvmfs/adv/conflict/child.txt")
        ]
    finally:
        connection.close()

    with temporary_settings(updates={PREFECT_API_URL: settings.prefect.api_url}):
        run = run_deployment(
            "reconcile/reconcile", parameters=reconcile_parameters(fqrn), timeout=WAIT_S
        )
    assert isinstance(run, FlowRun) and run.state is not None
    assert run.state.is_completed(), run.state.message
    assert files() == expected


def test_rabbitmq_restart_while_uploads_flow_loses_nothing(
    service: Settings, issuer: TestIssuer, tmp_path: Path
) -> None:
    """Uploads before, during and after a broker restart: the repository ends equal to the
    bucket (RGW's persistent topic and the bridge's catch-up reconcile cover the outage)."""
    settings = service
    user = f"r{uuid.uuid4().hex[:6]}"
    bucket = f"{user}-restart"
    fqrn = _provision(settings, issuer, user, bucket)
    key_file = public_key_file(settings, fqrn, tmp_path)
    s3 = demo_s3(settings)
    expected: dict[str, bytes] = {}

    def upload(name: str) -> None:
        body = f"{name}\n".encode()
        s3.put_object(Bucket=bucket, Key=f"cvmfs/{name}", Body=body)
        expected[f"/{name}"] = body

    for n in range(5):
        upload(f"before/{n}.txt")
    broker = RabbitMQ(settings, settings.absolute_data_dir / RabbitMQ.name)
    broker.stop()
    try:
        for n in range(5):
            upload(f"during/{n}.txt")
        s3.delete_object(Bucket=bucket, Key="cvmfs/before/0.txt")
        del expected["/before/0.txt"]
    finally:
        broker.start()
    for n in range(5):
        upload(f"after/{n}.txt")

    def repository_equals_bucket() -> bool:
        with _reader(settings, fqrn, key_file) as reader:
            files = {
                entry.path: reader.read(entry.path) for entry in reader.walk() if entry.is_regular
            }
        return files == expected

    _until(repository_equals_bucket, f"{fqrn} equal to {bucket} after the restart", 180)


def test_image_push_is_unpacked(
    service: Settings, tmp_path_factory: pytest.TempPathFactory
) -> None:
    settings = service
    layout = OciLayout(tmp_path_factory.mktemp("chain-image") / "layout")
    layout.new("v1")
    layout.layer("v1", lambda root: (root / "hello.txt").write_text("from the registry\n"))
    name = f"chain{uuid.uuid4().hex[:6]}"
    host = settings.registry.url.split("://", 1)[1]
    layout.push("v1", host, f"unpacked/{name}", "1.0")
    fqrn = f"unpacked.{settings.repository_domain}"
    link = f"/{host}/unpacked/{name}:1.0"
    key_file = tmp_path_factory.mktemp("chain-keys") / f"{fqrn}.pub"

    def unpacked() -> bool:
        if not key_file.exists():  # the service makes the keys on its first unpack
            keys = KeyStore.from_settings(settings.vault).read(SERVICE_KEY_OWNER, fqrn)
            key_file.write_text(keys.master_public_pem)
        with _reader(settings, fqrn, key_file) as reader:
            target = reader.stat(link).symlink  # relative, into .flat/<xx>/<config digest>
            flat = posixpath.normpath(posixpath.join(posixpath.dirname(link), target))
            return reader.read(f"{flat}/hello.txt") == b"from the registry\n"

    _until(unpacked, f"{link} unpacked into {fqrn}", timeout_s=180)


@pytest.mark.parametrize(
    "parameters",
    [{}, reconcile_parameters()],
    ids=["as-the-schedule-starts-it", "as-the-bridge-catch-up-starts-it"],
)
def test_served_reconcile_runs_for_every_repository(
    service: Settings, parameters: dict[str, object]
) -> None:
    with temporary_settings(updates={PREFECT_API_URL: service.prefect.api_url}):
        run = run_deployment("reconcile/reconcile", parameters=parameters, timeout=WAIT_S)
    assert isinstance(run, FlowRun) and run.state is not None
    assert run.name == "reconcile-all"
    assert run.state.is_completed(), run.state.message


def _device_layer(members: list[tuple[str, bytes, int, int, int]]) -> bytes:
    """A layer tarball of (name, tar type, mode, major, minor); regular files hold their name."""
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w", format=tarfile.PAX_FORMAT) as tar:
        for name, kind, mode, major, minor in members:
            info = tarfile.TarInfo(name)
            info.type, info.mode, info.mtime = kind, mode, 1_700_000_000
            info.devmajor, info.devminor = major, minor
            data = name.encode() if kind == tarfile.REGTYPE else None
            if data is not None:
                info.size = len(data)
            tar.addfile(info, io.BytesIO(data) if data is not None else None)
    return buffer.getvalue()


def test_image_with_dev_nodes_a_fifo_and_a_sticky_tmp_is_unpacked(
    service: Settings, tmp_path_factory: pytest.TempPathFactory
) -> None:
    """Two layers as a root file system has them (the issue's debootstrap image was refused
    whole for its /dev/console): registry push → webhook → bridge → unpack deployment."""
    settings = service
    layout = OciLayout(tmp_path_factory.mktemp("special-image") / "layout")
    base = _device_layer(
        [
            ("dev/", tarfile.DIRTYPE, 0o755, 0, 0),
            ("dev/console", tarfile.CHRTYPE, 0o600, 5, 1),
            ("dev/null", tarfile.CHRTYPE, 0o666, 1, 3),
            ("dev/loop0", tarfile.BLKTYPE, 0o660, 7, 0),
            ("tmp/", tarfile.DIRTYPE, 0o1777, 0, 0),
            ("usr/bin/su", tarfile.REGTYPE, 0o4755, 0, 0),
        ]
    )
    top = _device_layer(
        [
            ("dev/.wh.loop0", tarfile.REGTYPE, 0o644, 0, 0),  # deletes a lower device
            ("dev/zero", tarfile.CHRTYPE, 0o666, 1, 5),
            ("run/", tarfile.DIRTYPE, 0o755, 0, 0),
            ("run/initctl", tarfile.FIFOTYPE, 0o600, 0, 0),
            ("etc/hostname", tarfile.REGTYPE, 0o644, 0, 0),
        ]
    )
    layout.add_handmade_image("rootfs", [base, top])
    name = f"special{uuid.uuid4().hex[:6]}"
    host = settings.registry.url.split("://", 1)[1]
    layout.push("rootfs", host, f"unpacked/{name}", "1.0")
    fqrn = f"unpacked.{settings.repository_domain}"
    link = f"/{host}/unpacked/{name}:1.0"
    key_file = tmp_path_factory.mktemp("special-keys") / f"{fqrn}.pub"
    flat: list[str] = []

    def unpacked() -> bool:
        if not key_file.exists():  # the service makes the keys on its first unpack
            keys = KeyStore.from_settings(settings.vault).read(SERVICE_KEY_OWNER, fqrn)
            key_file.write_text(keys.master_public_pem)
        with _reader(settings, fqrn, key_file) as reader:
            target = reader.stat(link).symlink
            flat[:] = [posixpath.normpath(posixpath.join(posixpath.dirname(link), target))]
            return reader.exists(f"{flat[0]}/etc/hostname")

    _until(unpacked, f"{link} unpacked into {fqrn}", timeout_s=180)
    with _reader(settings, fqrn, key_file) as reader:
        root = flat[0]
        got = {
            entry.path[len(root) :]: (entry.special_kind, entry.device, entry.mode & 0o7777)
            for entry in reader.walk(root)
            if entry.is_special
        }
        assert got == {
            "/dev/console": ("char-device", (5, 1), 0o600),
            "/dev/null": ("char-device", (1, 3), 0o666),
            "/dev/zero": ("char-device", (1, 5), 0o666),
            "/run/initctl": ("fifo", None, 0o600),
        }
        assert reader.stat(f"{root}/tmp").mode == stat.S_IFDIR | 0o1777
        assert reader.stat(f"{root}/usr/bin/su").mode == stat.S_IFREG | 0o755
        assert reader.read(f"{root}/etc/hostname") == b"etc/hostname"
        assert reader.root_catalog.schema_revision >= 5
    # the run's artifact names the file that lost its setuid bit
    digest = layout.config_digest("rootfs").split(":")[-1][:16]
    rows = latest_artifact_rows(settings, f"unpack-notes-{digest}")
    assert rows == [{"note": "setuid/setgid stripped", "path": f"{root}/usr/bin/su"}]


def test_tarball_with_a_device_and_a_fifo_publishes_them(
    service: Settings, issuer: TestIssuer, tmp_path: Path
) -> None:
    """A `.cvmfs.tar` with /dev nodes and a FIFO, uploaded beside a plain file, from S3 calls
    only: everything publishes, the special files as what they were."""
    settings = service
    user = f"s{uuid.uuid4().hex[:6]}"
    bucket = f"{user}-rootfs"
    fqrn = _provision(settings, issuer, user, bucket)
    key_file = public_key_file(settings, fqrn, tmp_path)
    s3 = demo_s3(settings)
    tarball = _device_layer(
        [
            ("dev/", tarfile.DIRTYPE, 0o755, 0, 0),
            ("dev/null", tarfile.CHRTYPE, 0o666, 1, 3),
            ("dev/sda", tarfile.BLKTYPE, 0o660, 8, 0),
            ("run/initctl", tarfile.FIFOTYPE, 0o600, 0, 0),
            ("etc/motd", tarfile.REGTYPE, 0o644, 0, 0),
        ]
    )
    s3.put_object(Bucket=bucket, Key="cvmfs/rootfs.cvmfs.tar", Body=tarball)
    s3.put_object(Bucket=bucket, Key="cvmfs/readme.txt", Body=b"beside the tarball\n")
    expected = {
        "/readme.txt": ("file", 0o644, sha(b"beside the tarball\n")),
        "/rootfs/dev/null": ("char-device", 0o666, "1:3"),
        "/rootfs/dev/sda": ("block-device", 0o660, "8:0"),
        "/rootfs/run/initctl": ("fifo", 0o600, None),
        "/rootfs/etc/motd": ("file", 0o644, sha(b"etc/motd")),
    }

    def files() -> dict[str, tuple[str, int, bytes | str | None]]:
        with _reader(settings, fqrn, key_file) as reader:
            return {p: v for p, v in repository_tree(reader).items() if v[0] != "dir"}

    _until(lambda: files() == expected, f"the tarball's special files published in {fqrn}", 180)


def test_console_shows_the_services_own_lines_not_every_library_request(
    service: Settings, issuer: TestIssuer, service_logs: Path
) -> None:
    """What `./svc up` prints: the bridge's own lines, not pika's connection chatter or one
    httpx line per Prefect API call (a repository request makes the bridge start a run)."""
    settings = service
    bridge_log = service_logs / "bridge.log"

    def runs_started() -> int:
        return bridge_log.read_text().count("event=run-started deployment=provision/provision")

    before = runs_started()
    user = f"l{uuid.uuid4().hex[:6]}"
    demo_s3(settings).create_bucket(Bucket=f"{user}-logs")
    body = json.dumps(
        {
            "version": 1,
            "request_id": f"chain-{user}",
            "access_token": issuer.mint(preferred_username=user, sub=f"sub-{user}"),
            "kind": "personal",
            "bucket": f"{user}-logs",
        }
    ).encode()
    connection = pika.BlockingConnection(connection_parameters(settings.rabbitmq))
    try:
        connection.channel().basic_publish(
            settings.rabbitmq.events_exchange,
            "repository.request",
            body,
            pika.BasicProperties(delivery_mode=2, content_type="application/json"),
        )
    finally:
        connection.close()
    _until(
        lambda: runs_started() > before,
        "the bridge starting the provision run (its Prefect API calls are done by then)",
    )
    console = {path.stem: path.read_text(errors="replace") for path in service_logs.glob("*.log")}
    assert set(console) == set(SERVICE_COMMANDS)
    lines = [line for text in console.values() for line in text.splitlines()]
    # pika's loggers are "pika.<module>"; httpx logs each request as "HTTP Request: ...".
    # Their warnings and errors stay on the console, except pika's connect path, whose failures
    # the bridge reports as one `event=broker-lost` line (tests/test_console_logging.py).
    noisy = [
        line
        for line in lines
        if any(f" {level} pika." in line for level in ("DEBUG", "INFO")) or "HTTP Request:" in line
    ]
    assert noisy == [], noisy[:10]
    assert "INFO cvmfs.bridge event=consuming" in console["bridge"], console["bridge"][-2000:]
