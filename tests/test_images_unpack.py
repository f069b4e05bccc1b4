"""End to end on the test registry: images built with umoci, pushed with skopeo, unpacked by
images.unpacker into a real repository and read back with the cvmfs reader.

The expected tree is computed independently: `umoci unpack` of the same image, walked.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from cvmfs.keys import generate_keyset
from cvmfs.reader import RepositoryReader
from cvmfs.storage import LocalStorage
from cvmfs.writer import RepositoryWriter, WriterOptions, create_repository
from images.apptainer import MOUNT_POINTS, PUBLIC_SYMLINKS, SINGULARITY_DIR
from images.errors import LayerRefusedError
from images.layout import flat_dir, metadata_manifest, public_link
from images.registry import ImageReference, Platform, RegistryClient
from images.unpacker import collect_garbage, delete_tag, unpack_image
from service.settings import Settings
from tests.test_images_support import OciLayout, local_tree, repository_tree, tar_bytes

FQRN = "unpacked.test.example.org"
REPOSITORY = "unpacked/layered"


@dataclass
class Built:
    layout: OciLayout
    registry: str


def _layer_one(rootfs: Path) -> None:
    for directory in ("etc", "usr/bin", "opt/app/sub", "home/user"):
        (rootfs / directory).mkdir(parents=True, exist_ok=True)
    (rootfs / "etc/keep").write_text("keep v1\n")
    (rootfs / "etc/gone").write_text("to be deleted\n")
    (rootfs / "etc/hosts").write_text("127.0.0.1 image-own-hosts\n")
    tool = rootfs / "usr/bin/tool"
    tool.write_text("#!/bin/sh\necho tool\n")
    tool.chmod(0o755)
    os.link(tool, rootfs / "usr/bin/tool-hard")
    os.link(tool, rootfs / "etc/tool-elsewhere")  # another directory: published as a copy
    (rootfs / "usr/bin/tool-link").symlink_to("tool")
    (rootfs / "usr/bin/abs-link").symlink_to("/usr/bin/tool")
    (rootfs / "opt/app/old-a").write_text("a\n")
    (rootfs / "opt/app/sub/old-b").write_text("b\n")
    (rootfs / "home/user/data").write_bytes(bytes(range(256)) * 300)
    os.chown(rootfs / "home/user", 1000, 1000)
    os.chown(rootfs / "home/user/data", 1000, 1000)
    secret = rootfs / "etc/secret"
    secret.write_text("s\n")
    secret.chmod(0o600)


def _layer_two(rootfs: Path) -> None:
    (rootfs / "etc/gone").unlink()
    (rootfs / "etc/keep").write_text("keep v2\n")
    (rootfs / "etc/new").write_text("new\n")
    os.unlink(rootfs / "usr/bin/tool-link")
    (rootfs / "usr/bin/tool-link").symlink_to("tool-hard")


# The third layer replaces /opt/app wholesale: an opaque directory (umoci never writes one).
OPAQUE_LAYER = tar_bytes(
    [
        ("opt/", "dir", None),
        ("opt/app/", "dir", None),
        ("opt/app/.wh..wh..opq", "file", b""),
        ("opt/app/fresh", "file", b"replaced\n"),
    ]
)


@pytest.fixture(scope="module")
def built(registry: Settings, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Built]:
    work = tmp_path_factory.mktemp("images")
    layout = OciLayout(work / "layout")
    host = registry.registry.url.split("://", 1)[1]
    layout.new("layered")
    layout.layer("layered", _layer_one)
    layout.layer("layered", _layer_two)
    layout.raw_layer("layered", OPAQUE_LAYER)
    layout.config(
        "layered",
        "--config.env",
        "GREETING=hello world",
        "--config.env",
        "PATH=/usr/local/bin:/usr/bin:/bin",
        "--config.entrypoint",
        "/usr/bin/tool",
        "--config.cmd",
        "--flag",
    )
    layout.push("layered", host, REPOSITORY, "1.0")
    # a second, different image to move the tag to
    layout.new("other")
    layout.layer("other", lambda r: (r / "only-in-other").write_text("other\n"))
    layout.push("other", host, "unpacked/other", "1.0")
    # a multi-architecture index of two single-arch images
    layout.new("amd", architecture="amd64")
    layout.layer("amd", lambda r: (r / "arch").write_text("amd64\n"))
    layout.new("arm", architecture="arm64")
    layout.layer("arm", lambda r: (r / "arch").write_text("arm64\n"))
    layout.add_index(
        "multi",
        {
            "amd": {"os": "linux", "architecture": "amd64"},
            "arm": {"os": "linux", "architecture": "arm64"},
        },
    )
    layout.push("multi", host, "unpacked/multi", "1.0")
    yield Built(layout, host)


@pytest.fixture
def writer(tmp_path: Path) -> RepositoryWriter:
    storage = LocalStorage(tmp_path / "stratum0")
    repo, _ = create_repository(storage, FQRN, generate_keyset(FQRN), WriterOptions(workers=2))
    return repo


def reader_of(writer: RepositoryWriter) -> RepositoryReader:
    return RepositoryReader(writer.storage, FQRN, [], verify_signatures=False)


def without_additions(
    tree: dict[str, tuple[object, ...]], image: dict[str, tuple[object, ...]]
) -> dict[str, tuple[object, ...]]:
    """`tree` without what the apptainer step adds: mount points the image lacks, the
    `.singularity.d` tree and its symlinks, the emptied etc/hosts and etc/resolv.conf, and the
    nested catalog marker."""
    added = {f"/{p}" for p in MOUNT_POINTS} | {f"/{p}" for p in PUBLIC_SYMLINKS} | {"/var"}
    replaced = {"/etc/hosts", "/etc/resolv.conf", "/.cvmfscatalog"}
    return {
        path: value
        for path, value in tree.items()
        if not (path in added and path not in image)
        and path not in replaced
        and not path.startswith(f"/{SINGULARITY_DIR}")
    }


def test_unpacked_tree_equals_the_merged_image(
    built: Built, writer: RepositoryWriter, tmp_path: Path
) -> None:
    with RegistryClient(built.registry) as client:
        image = client.resolve(ImageReference.parse(f"{built.registry}/{REPOSITORY}:1.0"))
        outcome = unpack_image(writer, client, image)
    assert outcome.action == "unpacked" and outcome.layers == 3
    assert outcome.whiteouts == 1 and outcome.opaque_dirs == 1
    assert image.config_digest == built.layout.config_digest("layered")

    merged = local_tree(built.layout.unpack_merged("layered", tmp_path / "merged"))
    flat = flat_dir(image.config_digest)
    with reader_of(writer) as reader:
        got = repository_tree(reader, flat)
        # the public link, relative, DUCC style
        link = public_link(built.registry, REPOSITORY, "1.0")
        assert reader.readlink(link) == f"../../.flat/{flat.split('/')[2]}/{flat.split('/')[3]}"
        assert reader.stat(flat).is_dir
        meta = json.loads(reader.read(metadata_manifest(built.registry, REPOSITORY, "1.0")))
        env = reader.read(f"{flat}/{SINGULARITY_DIR}/env/10-docker2singularity.sh").decode()
        runscript = reader.read(f"{flat}/{SINGULARITY_DIR}/runscript").decode()
        catalogs = {c.mountpoint for c in reader.catalogs()}
        hosts = reader.read(f"{flat}/etc/hosts")
    assert without_additions(got, merged) == without_additions(merged, merged)
    assert "/etc" in merged and "/home" in merged  # compared, not only added
    # what the test image is about, spelled out
    assert "/etc/gone" not in got and got["/etc/new"][0] == "file"
    assert sorted(p for p in got if p.startswith("/opt/app/")) == ["/opt/app/fresh"]
    assert got["/usr/bin/tool"][1] == 0o755 and got["/etc/secret"][1] == 0o600
    assert (
        got["/usr/bin/tool-hard"][5]
        == got["/usr/bin/tool"][5]
        == (got["/usr/bin/tool"][5][0], "/usr/bin/tool")
    )
    assert (
        got["/usr/bin/tool-link"][5] == "tool-hard"
        and got["/usr/bin/abs-link"][5] == "/usr/bin/tool"
    )
    assert got["/home/user/data"][2:4] == (1000, 1000)
    assert got["/etc/tool-elsewhere"][5] == (got["/usr/bin/tool"][5][0], None)
    # DUCC layout: metadata in Go field names, nested catalogs, apptainer files
    assert meta["Config"]["Digest"] == image.config_digest and len(meta["Layers"]) == 3
    assert {"/.flat", flat} <= catalogs
    assert 'export PATH="/usr/local/bin:/usr/bin:/bin"' in env
    assert 'export GREETING="${GREETING:-hello world}"' in env
    assert "OCI_ENTRYPOINT='\"/usr/bin/tool\"'" in runscript and "OCI_CMD='\"--flag\"'" in runscript
    assert hosts == b""
    for mount_point in MOUNT_POINTS:
        assert got[f"/{mount_point}"][0] == "dir"


def test_same_digest_again_publishes_nothing_and_a_tag_move_switches_the_link(
    built: Built, writer: RepositoryWriter
) -> None:
    reference = ImageReference.parse(f"{built.registry}/{REPOSITORY}:1.0")
    with RegistryClient(built.registry) as client:
        first = unpack_image(writer, client, client.resolve(reference))
        again = unpack_image(writer, client, client.resolve(reference))
        assert again.action == "unchanged" and again.revision == first.revision
        assert writer.current_manifest().revision == first.revision

        # a second tag of the same image: only a link, no new flat tree
        built.layout.push("layered", built.registry, REPOSITORY, "1.1")
        second = unpack_image(
            writer, client, client.resolve(reference.model_copy(update={"tag": "1.1"}))
        )
        assert second.action == "relinked" and second.flat_dir == first.flat_dir
        assert second.revision == first.revision + 1

        # move tag 1.0 to another image: the link switches in one publish
        built.layout.push("other", built.registry, REPOSITORY, "1.0")
        moved = unpack_image(writer, client, client.resolve(reference))
    assert moved.action == "unpacked" and moved.flat_dir != first.flat_dir
    assert moved.revision == second.revision + 1
    link = public_link(built.registry, REPOSITORY, "1.0")
    with reader_of(writer) as reader:
        assert reader.readlink(link).endswith(moved.flat_dir.rsplit("/", 1)[1])
        assert reader.exists(f"{moved.flat_dir}/only-in-other")
        assert reader.exists(first.flat_dir)  # still the target of tag 1.1
    built.layout.push("layered", built.registry, REPOSITORY, "1.0")  # restore for other tests


def test_multi_architecture_index_takes_the_configured_platform(
    built: Built, writer: RepositoryWriter
) -> None:
    reference = ImageReference.parse(f"{built.registry}/unpacked/multi:1.0")
    with RegistryClient(built.registry) as client:
        amd = client.resolve(reference)
        arm = client.resolve(reference, (Platform.parse("linux/arm64"),))
        assert amd.platform == "linux/amd64" and arm.platform == "linux/arm64"
        assert amd.reference_digest == arm.reference_digest  # the index digest
        outcome = unpack_image(writer, client, amd)
    with reader_of(writer) as reader:
        assert reader.read(f"{outcome.flat_dir}/arch") == b"amd64\n"
    assert amd.config_digest == built.layout.config_digest("amd")


def test_tag_delete_then_garbage_collection_after_the_grace_period(
    built: Built, writer: RepositoryWriter
) -> None:
    reference = ImageReference.parse(f"{built.registry}/unpacked/other:1.0")
    now = [1_800_000_000.0]
    with RegistryClient(built.registry) as client:
        outcome = unpack_image(writer, client, client.resolve(reference), clock=lambda: now[0])
    kept = collect_garbage(writer, grace_s=3600, clock=lambda: now[0])
    assert kept.removed == [] and kept.scheduled == {}
    deleted = delete_tag(writer, built.registry, "unpacked/other", "1.0", clock=lambda: now[0])
    assert deleted.deleted and deleted.scheduled_for_gc == [outcome.flat_dir]
    with reader_of(writer) as reader:
        assert not reader.exists(outcome.link) and reader.exists(outcome.flat_dir)
    now[0] += 1800
    early = collect_garbage(writer, grace_s=3600, clock=lambda: now[0])
    assert early.removed == [] and outcome.flat_dir in early.scheduled
    revision = writer.current_manifest().revision
    assert early.revision == revision  # nothing changed, nothing published
    now[0] += 1801
    late = collect_garbage(writer, grace_s=3600, clock=lambda: now[0])
    assert late.removed == [outcome.flat_dir] and late.revision == revision + 1
    with reader_of(writer) as reader:
        assert not reader.exists(outcome.flat_dir)


@pytest.mark.parametrize(
    ("members", "reason"),
    [
        ([("../escape", "file", b"x")], "'..'"),
        ([("big", "huge", 300 << 30)], "limit"),
    ],
)
def test_refused_layers_from_the_registry_publish_nothing(
    built: Built, writer: RepositoryWriter, members: list[tuple[str, str, object]], reason: str
) -> None:
    tag = f"bad-{reason.strip(chr(39)).replace('.', 'dot')}"
    built.layout.add_handmade_image(tag, [tar_bytes([("ok", "file", b"fine"), *members])])
    built.layout.push(tag, built.registry, "unpacked/bad", tag)
    before = writer.current_manifest().revision
    with RegistryClient(built.registry) as client:
        image = client.resolve(ImageReference.parse(f"{built.registry}/unpacked/bad:{tag}"))
        with pytest.raises(LayerRefusedError, match=reason):
            unpack_image(writer, client, image)
    assert writer.current_manifest().revision == before


def test_zstd_layers_and_docker_v2_manifests(built: Built, writer: RepositoryWriter) -> None:
    base = tar_bytes([("etc/", "dir", None), ("etc/old", "file", b"old"), ("bin/", "dir", None)])
    top = tar_bytes([("etc/.wh.old", "file", b""), ("bin/zst", "file", b"from zstd\n")])
    built.layout.add_handmade_image("zstd", [base, top], zstd=True)
    built.layout.push("zstd", built.registry, "unpacked/zstd", "1.0")
    # the umoci image converted by skopeo to Docker schema 2 (docker media types)
    built.layout.push("other", built.registry, "unpacked/docker", "1.0", "--format", "v2s2")
    with RegistryClient(built.registry) as client:
        zst = client.resolve(ImageReference.parse(f"{built.registry}/unpacked/zstd:1.0"))
        assert {layer.media_type for layer in zst.manifest.layers} == {
            "application/vnd.oci.image.layer.v1.tar+zstd"
        }
        unpacked = unpack_image(writer, client, zst)
        docker = client.resolve(ImageReference.parse(f"{built.registry}/unpacked/docker:1.0"))
        assert docker.manifest.media_type == "application/vnd.docker.distribution.manifest.v2+json"
        from_docker = unpack_image(writer, client, docker)
    with reader_of(writer) as reader:
        assert reader.read(f"{unpacked.flat_dir}/bin/zst") == b"from zstd\n"
        assert not reader.exists(f"{unpacked.flat_dir}/etc/old")
        assert reader.read(f"{from_docker.flat_dir}/only-in-other") == b"other\n"
