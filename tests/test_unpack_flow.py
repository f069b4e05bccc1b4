"""The unpack flows on the test stack: registry, Prefect server (publish lock), stratum-0 HTTP.

Images built with umoci and pushed with skopeo; the repository is created on first use and read
back over HTTP with signature verification, as a client would.
"""

from __future__ import annotations

import io
import tarfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from cvmfs.reader import RepositoryReader
from flows.unpack import (
    GcRequest,
    WishlistRequest,
    unpack,
    unpack_delete,
    unpack_gc,
    unpack_wishlist,
)
from images.unpacker import TagDeleteOutcome, UnpackOutcome
from service.keystore import KeyStore, secret_path
from service.settings import Settings
from tasks.unpack import SERVICE_KEY_OWNER, UnpackRequest
from tests.conftest import settings_env
from tests.sync_support import latest_artifact_rows
from tests.test_images_support import OciLayout

FQRN = "unpacked.flow.example.org"
REPOSITORY = "unpacked/flowimg"


@pytest.fixture(scope="module")
def stack(
    registry: Settings,
    prefect_server: Settings,
    stratum0_http: Settings,
    vault: Settings,
) -> Iterator[Settings]:
    """Settings.load() inside the flows returns the test stack's settings (Vault token too)."""
    with pytest.MonkeyPatch.context() as patch:
        for key, value in settings_env(vault).items():
            patch.setenv(key, value)
        yield vault


@pytest.fixture(scope="module")
def layout(stack: Settings, tmp_path_factory: pytest.TempPathFactory) -> OciLayout:
    built = OciLayout(tmp_path_factory.mktemp("flow-images") / "layout")
    built.new("v1")
    built.layer("v1", lambda r: (r / "hello.txt").write_text("hello v1\n"))
    built.config("v1", "--config.cmd", "/bin/true")
    built.new("v2")
    built.layer("v2", lambda r: (r / "hello.txt").write_text("hello v2\n"))
    return built


def host(settings: Settings) -> str:
    return settings.registry.url.split("://", 1)[1]


def client_reader(settings: Settings) -> RepositoryReader:
    """The repository as a client sees it: over HTTP, signatures checked with the .pub key."""
    keys = KeyStore.from_settings(settings.vault).read(SERVICE_KEY_OWNER, FQRN)
    public_key = settings.absolute_data_dir / f"{FQRN}.pub"
    public_key.write_text(keys.master_public_pem)
    url = f"http://127.0.0.1:{settings.stratum0.http_port}/cvmfs/{FQRN}"
    return RepositoryReader.open(url, FQRN, [public_key])


def test_unpack_flow_creates_the_repository_then_is_idempotent(
    stack: Settings, layout: OciLayout
) -> None:
    layout.push("v1", host(stack), REPOSITORY, "1.0")
    req = UnpackRequest(registry=host(stack), repository=REPOSITORY, tag="1.0", fqrn=FQRN)
    first = unpack(req)
    assert isinstance(first, UnpackOutcome) and first.action == "unpacked"
    with client_reader(stack) as reader:
        assert reader.revision == first.revision
        assert reader.read(f"{first.flat_dir}/hello.txt") == b"hello v1\n"
        assert reader.readlink(first.link).endswith(first.flat_dir.rsplit("/", 1)[1])
    again = unpack(req)
    assert (
        isinstance(again, UnpackOutcome)
        and again.action == "unchanged"
        and again.revision == first.revision
    )

    # the tag moves: one new revision, the link now names the new flat tree
    layout.push("v2", host(stack), REPOSITORY, "1.0")
    moved = unpack(req)
    assert (
        isinstance(moved, UnpackOutcome)
        and moved.action == "unpacked"
        and moved.revision == first.revision + 1
    )
    with client_reader(stack) as reader:
        assert reader.read(f"{moved.flat_dir}/hello.txt") == b"hello v2\n"
        assert reader.readlink(moved.link).endswith(moved.flat_dir.rsplit("/", 1)[1])

    # delete the tag, then GC with no grace: the unreferenced trees go
    # the bridge's delete event goes to the same `unpack` flow; unpack-delete is idempotent
    deleted = unpack(req.model_copy(update={"kind": "image-deleted"}))
    assert isinstance(deleted, TagDeleteOutcome) and deleted.deleted
    assert not unpack_delete(req).deleted
    collected = unpack_gc(GcRequest(fqrn=FQRN, grace_s=0))
    assert set(collected.removed) == {first.flat_dir, moved.flat_dir}
    with client_reader(stack) as reader:
        assert not reader.exists(moved.link) and not reader.exists(moved.flat_dir)


def test_unpack_of_a_missing_tag_fails_without_retrying(stack: Settings, layout: OciLayout) -> None:
    req = UnpackRequest(registry=host(stack), repository=REPOSITORY, tag="no-such", fqrn=FQRN)
    state = unpack(req, return_state=True)
    assert state.is_failed()
    assert "does not exist" in str(state.message) or "404" in str(state.message)


def test_wishlist_flow_expands_wildcards(stack: Settings, layout: OciLayout) -> None:
    for tag in ("3.0", "3.1", "4.0"):
        layout.push("v1", host(stack), "unpacked/wished", tag)
    wishlist = (
        "version: 1\n"
        "user: nobody\n"
        f"cvmfs_repo: {FQRN}\n"
        "output_format: '$(scheme)://example.org/thin/$(image)'\n"
        "input:\n"
        f"  - 'http://{host(stack)}/unpacked/wished:3.*'\n"
    )
    result = unpack_wishlist(WishlistRequest(wishlist_yaml=wishlist))
    assert result.failures == {}
    assert sorted(o.image.rsplit(":", 1)[1] for o in result.outcomes) == ["3.0", "3.1"]
    assert len({o.flat_dir for o in result.outcomes}) == 1  # one image, two links
    again = unpack_wishlist(WishlistRequest(wishlist_yaml=wishlist))
    assert {o.action for o in again.outcomes} == {"unchanged"}
    with client_reader(stack) as reader:
        assert reader.exists(f"/{host(stack)}/unpacked/wished:3.1")
        assert not reader.exists(f"/{host(stack)}/unpacked/wished:4.0")


def test_keys_are_in_vault_not_on_disk(stack: Settings, layout: OciLayout) -> None:
    store = KeyStore.from_settings(stack.vault)
    assert store.exists(SERVICE_KEY_OWNER, FQRN)  # created by the first unpack above
    assert secret_path(SERVICE_KEY_OWNER, FQRN) == f"groups/cvmfs-service/cvmfs_keys/{FQRN}"
    assert not list(Path(stack.absolute_data_dir).rglob(f"{FQRN}.masterkey"))


def _rootfs_layer() -> bytes:
    """/dev nodes, a FIFO and a file, as an image built from a root file system has them."""
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w", format=tarfile.PAX_FORMAT) as tar:
        for name, kind, major, minor in [
            ("dev/", tarfile.DIRTYPE, 0, 0),
            ("dev/console", tarfile.CHRTYPE, 5, 1),
            ("dev/loop0", tarfile.BLKTYPE, 7, 0),
            ("run/initctl", tarfile.FIFOTYPE, 0, 0),
        ]:
            info = tarfile.TarInfo(name)
            info.type, info.mode, info.devmajor, info.devminor = kind, 0o600, major, minor
            tar.addfile(info)
        motd = tarfile.TarInfo("etc/motd")
        motd.size, motd.mode = 3, 0o644
        tar.addfile(motd, io.BytesIO(b"hi\n"))
    return buffer.getvalue()


def test_unpack_leaves_special_files_out_when_configured_and_lists_them(
    stack: Settings, layout: OciLayout, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("CVMFS_SVC_REGISTRY__UNPACK_SKIP_SPECIAL", "true")  # read by the flow
    layout.add_handmade_image("rootfs", [_rootfs_layer()])
    layout.push("rootfs", host(stack), "unpacked/rootfs-skip", "1.0")
    req = UnpackRequest(
        registry=host(stack), repository="unpacked/rootfs-skip", tag="1.0", fqrn=FQRN
    )
    outcome = unpack(req)
    assert isinstance(outcome, UnpackOutcome) and outcome.action == "unpacked"
    flat = outcome.flat_dir
    assert outcome.skipped_special == [
        f"{flat}/dev/console",
        f"{flat}/dev/loop0",
        f"{flat}/run/initctl",
    ]
    assert outcome.special_files == 0
    with client_reader(stack) as reader:
        assert reader.read(f"{flat}/etc/motd") == b"hi\n"
        assert not [e.path for e in reader.walk(flat) if e.is_special]
    key = f"unpack-notes-{outcome.config_digest.split(':')[-1][:16]}"
    rows = latest_artifact_rows(stack, key)
    assert sorted(row["path"] for row in rows if row["note"] == "skipped special file") == (
        outcome.skipped_special
    )
