"""Small pure parts of the images package: references, platforms, DUCC layout names and metadata,
wish lists, and the robot password staying out of reprs and logs."""

from __future__ import annotations

import functools
import json
import socket
import subprocess
from pathlib import Path

import pytest
from pydantic import SecretStr, ValidationError

from bridge.registry_events import ImageDeleted, parse_registry_webhook
from bridge.run_requests import unpack_parameters
from images.apptainer import docker_environment, runscript
from images.errors import (
    LayerRefusedError,
    PlatformNotFoundError,
    RegistryError,
    UnsupportedImageError,
    WishlistError,
)
from images.layers import LayerPolicy, check_layer_descriptor
from images.layout import (
    ducc_manifest_json,
    flat_dir,
    flat_of_link_target,
    link_target,
    metadata_manifest,
    public_link,
)
from images.registry import (
    Descriptor,
    ImageManifest,
    ImageReference,
    Platform,
    RegistryAccess,
    RegistryClient,
    RegistryCredentials,
    pick_platform,
)
from images.wishlist import expand, parse_image_line, parse_wishlist
from tasks.unpack import UnpackRequest
from tests.shared_paths import EVENTS

HEX = "ab" + "0" * 62
DIGEST = f"sha256:{HEX}"


def test_references() -> None:
    ref = ImageReference.parse("https://registry.example.org:5000/a/b/c:1.2")
    assert (ref.registry, ref.repository, ref.tag, ref.digest) == (
        "registry.example.org:5000",
        "a/b/c",
        "1.2",
        None,
    )
    assert ImageReference.parse("r.org/x").tag == "latest"
    pinned = ImageReference.parse(f"r.org/x@{DIGEST}")
    assert pinned.tag is None and pinned.ref == DIGEST


def test_platform_pick_prefers_the_configured_order() -> None:
    index = {
        "manifests": [
            {
                "mediaType": "application/vnd.oci.image.manifest.v1+json",
                "digest": "a",
                "platform": {"os": "linux", "architecture": "arm64", "variant": "v8"},
            },
            {
                "mediaType": "application/vnd.oci.image.manifest.v1+json",
                "digest": "b",
                "platform": {"os": "linux", "architecture": "amd64"},
            },
        ]
    }
    assert pick_platform(index, (Platform.parse("linux/amd64"),), "i")["digest"] == "b"
    wanted = (Platform.parse("linux/arm64/v8"), Platform.parse("linux/amd64"))
    assert pick_platform(index, wanted, "i")["digest"] == "a"
    with pytest.raises(PlatformNotFoundError, match="linux/amd64, linux/arm64/v8"):
        pick_platform(index, (Platform.parse("linux/s390x"),), "i")


def test_ducc_layout_names() -> None:
    assert flat_dir(DIGEST) == f"/.flat/ab/{HEX}"
    link = public_link("registry.hub.docker.com", "library/centos", "centos7")
    assert link == "/registry.hub.docker.com/library/centos:centos7"
    target = link_target(link, flat_dir(DIGEST))
    assert target == f"../../.flat/ab/{HEX}"  # the spec §6.1 example
    assert flat_of_link_target(link, target) == flat_dir(DIGEST)
    assert flat_of_link_target(link, "../../elsewhere") is None
    assert metadata_manifest("r.org", "a/b", "1") == "/.metadata/r.org/a/b:1/manifest.json"
    assert public_link("r.org", "a", None, DIGEST) == f"/r.org/a:{DIGEST}"


def test_metadata_manifest_uses_go_field_names() -> None:
    manifest = ImageManifest(
        digest=DIGEST,
        media_type="application/vnd.oci.image.manifest.v1+json",
        schema_version=2,
        config=Descriptor(
            mediaType="application/vnd.oci.image.config.v1+json", digest=DIGEST, size=7
        ),
        layers=(
            Descriptor(
                mediaType="application/vnd.oci.image.layer.v1.tar+gzip", digest=DIGEST, size=9
            ),
        ),
    )
    document = json.loads(ducc_manifest_json(manifest))
    assert document == {
        "SchemaVersion": 2,
        "MediaType": "application/vnd.oci.image.manifest.v1+json",
        "Config": {
            "MediaType": "application/vnd.oci.image.config.v1+json",
            "Size": 7,
            "Digest": DIGEST,
        },
        "Layers": [
            {
                "MediaType": "application/vnd.oci.image.layer.v1.tar+gzip",
                "Size": 9,
                "Digest": DIGEST,
            }
        ],
    }


def test_docker_environment_escapes_and_keeps_user_overrides() -> None:
    text = docker_environment({"config": {"Env": ["PATH=/a:/b", 'Q=say "$x"', "EMPTY"]}})
    assert text.splitlines() == [
        "#!/bin/sh",
        'export PATH="/a:/b"',
        'export Q="${Q:-say \\"\\$x\\"}"',
        'export EMPTY="${EMPTY:-}"',
    ]


def test_wishlist_v1_with_wildcards() -> None:
    wishlist = parse_wishlist(
        "version: 1\nuser: smosciat\ncvmfs_repo: unpacked.cern.ch\n"
        "output_format: '$(scheme)://registry.gitlab.cern.ch/thin/$(image)'\n"
        "input:\n"
        "  - 'https://registry.hub.docker.com/library/fedora:latest'\n"
        "  - 'registry.hub.docker.com/atlas/analysisbase:21.2.1*'\n"
        f"  - 'r.org/pinned@{DIGEST}'\n"
    )
    assert wishlist.cvmfs_repo == "unpacked.cern.ch"
    tags = {"atlas/analysisbase": ["21.2.1", "21.2.10", "21.2.2", "x21.2.1"]}
    images = expand(wishlist, lambda entry: tags[entry.repository])
    assert [str(i) for i in images] == [
        "registry.hub.docker.com/library/fedora:latest",
        "registry.hub.docker.com/atlas/analysisbase:21.2.1",
        "registry.hub.docker.com/atlas/analysisbase:21.2.10",
        f"r.org/pinned@{DIGEST}",
    ]
    assert parse_image_line("http://h:5000/a/b").scheme == "http"


@pytest.mark.parametrize(
    ("text", "reason"),
    [
        ("version: 2\ncvmfs_repo: x\ninput: []\n", "version"),
        ("version: 1\ninput: []\n", "cvmfs_repo"),
        ("version: 1\ncvmfs_repo: x\ninput: [1]\n", "list of image strings"),
        ("version: 1\ncvmfs_repo: x\ninput: ['noslash']\n", "REGISTRY/REPOSITORY"),
        ("[unclosed", "YAML"),
    ],
)
def test_bad_wishlists_are_refused(text: str, reason: str) -> None:
    with pytest.raises(WishlistError, match=reason):
        parse_wishlist(text)


def test_robot_password_is_never_printed(caplog: pytest.LogCaptureFixture) -> None:
    access = RegistryAccess(
        credentials={"r.org": RegistryCredentials(username="robot$x", password=SecretStr("s3cr3t"))}
    )
    assert "s3cr3t" not in repr(access) and "s3cr3t" not in str(access.model_dump())
    client = RegistryClient("r.org", access)
    assert "s3cr3t" not in repr(client)
    client.close()
    assert "s3cr3t" not in caplog.text


def test_unpack_request_refuses_bad_input_before_a_run() -> None:
    with pytest.raises(ValidationError):
        UnpackRequest(registry="r.org", repository="a", tag="bad tag!", fqrn="x.org")
    with pytest.raises(ValidationError):
        UnpackRequest(registry="r.org", repository="a", tag="1", fqrn="BAD NAME!")
    with pytest.raises(ValidationError):
        UnpackRequest(registry="r.org", repository="a", tag="1", fqrn="x.org", extra=1)  # type: ignore[call-arg]
    with pytest.raises(ValidationError, match="tag or a digest"):
        UnpackRequest(registry="r.org", repository="a", fqrn="x.org")


def test_a_registry_that_is_down_fails_fast_with_a_reason() -> None:
    # A bound but not listening socket: connections to it are refused at once.
    with socket.socket() as closed:
        closed.bind(("127.0.0.1", 0))
        host = f"127.0.0.1:{closed.getsockname()[1]}"
        with RegistryClient(host) as client, pytest.raises(RegistryError, match="retry"):
            client.fetch_manifest("a/b", "1.0")


def test_oversized_compressed_layer_is_refused_before_download() -> None:
    layer = Descriptor(
        mediaType="application/vnd.oci.image.layer.v1.tar+gzip", digest=DIGEST, size=10 << 30
    )
    with pytest.raises(LayerRefusedError, match="limit"):
        check_layer_descriptor(layer, LayerPolicy(max_compressed_layer_size=1 << 30))
    foreign = layer.model_copy(
        update={"media_type": "application/vnd.docker.image.rootfs.foreign.diff.tar.gzip"}
    )
    assert check_layer_descriptor(foreign, LayerPolicy()) is False
    with pytest.raises(UnsupportedImageError):
        check_layer_descriptor(layer.model_copy(update={"media_type": "text/plain"}), LayerPolicy())


def test_runscript_runs_entrypoint_and_cmd(tmp_path: Path) -> None:
    script = tmp_path / "runscript"
    script.write_text(runscript({"config": {"Entrypoint": ["/bin/echo", "it's"], "Cmd": ["a b"]}}))
    run = functools.partial(subprocess.run, capture_output=True, text=True, check=True)
    assert run(["sh", str(script)]).stdout == "it's a b\n"
    assert run(["sh", str(script), "x  y", '"$HOME`id`"']).stdout == 'it\'s x  y "$HOME`id`"\n'
    only_cmd = tmp_path / "only-cmd"
    only_cmd.write_text(runscript({"config": {"Cmd": ["/bin/echo", "cmd"]}}))
    assert run(["sh", str(only_cmd)]).stdout == "cmd\n"


@pytest.mark.parametrize(
    "fixture", ["distribution-registry-push-manifest.json", "harbor-push-artifact-example.json"]
)
def test_the_bridge_unpack_parameters_are_a_valid_unpack_request(fixture: str) -> None:
    """The bridge starts `unpack/unpack` with {"req": <event JSON>}: that must validate."""
    document = json.loads((EVENTS / fixture).read_text())
    body = document.get("body", document)
    events = parse_registry_webhook(json.dumps(body)).events
    assert events
    for event in events:
        parameters = unpack_parameters(event)
        request = UnpackRequest.model_validate(parameters["req"])
        assert request.kind == "image-pushed" and request.tag == event.tag
        assert request.reference().tag == event.tag and request.reference().digest is None
    deleted = ImageDeleted(registry="r.org", repository="unpacked/x", tag="1.0", source="harbor")
    assert UnpackRequest.model_validate(unpack_parameters(deleted)["req"]).kind == "image-deleted"
