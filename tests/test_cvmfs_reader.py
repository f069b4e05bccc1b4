"""The reader reproduces the golden fixture exactly (directory and HTTP) and refuses tampering."""

from __future__ import annotations

import datetime as dt
import functools
import http.server
import io
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from cvmfs.errors import (
    FormatError,
    IntegrityError,
    InvalidPathError,
    NotFoundError,
    RepositoryNameMismatchError,
    SignatureError,
    StorageError,
    WhitelistExpiredError,
)
from cvmfs.fsck import fsck
from cvmfs.keys import generate_keyset
from cvmfs.objects import ContentHash
from cvmfs.reader import RepositoryReader
from cvmfs.storage import HttpStorage, LocalStorage
from tests.cvmfs_golden import (
    DESCRIPTIVE_FIELDS,
    FIXTURE,
    FQRN,
    PINNED_NOW,
    PUBLIC_KEY,
    STRATUM0,
    load_expected,
    manifest_record,
    revision_record,
    tag_record,
    writable_copy,
)

HELLO_OBJECT = "data/b1/2817a864b2715fa886c933b350ed31ed05db86"
ROOT_CATALOG = "data/73/7cda743e3f9079bfd1fe54945338cb839192feC"
NESTED_CATALOG = "data/90/5fc0551a3306ff3ae1425df2ada05510db2858C"
CHUNK_2 = "data/d8/ce481831d04ee3ee6c2e8084d87bb3a53deed5P"


class _QuietHandler(http.server.SimpleHTTPRequestHandler):
    def log_message(self, format: str, *args: Any) -> None:
        pass


@pytest.fixture(scope="module")
def http_url() -> Iterator[str]:
    handler = functools.partial(_QuietHandler, directory=str(STRATUM0))
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()
        thread.join()


@pytest.fixture(params=["directory", "http"])
def location(request: pytest.FixtureRequest) -> str:
    if request.param == "directory":
        return str(STRATUM0)
    return str(request.getfixturevalue("http_url"))


def open_reader(location: str | Path, **kwargs: Any) -> RepositoryReader:
    kwargs.setdefault("now", PINNED_NOW)
    return RepositoryReader.open(location, kwargs.pop("fqrn", FQRN), [PUBLIC_KEY], **kwargs)


def compare(actual: dict[str, Any], expected: dict[str, Any]) -> None:
    """Field by field, entry by entry, so a failure names what differs."""
    for key, value in expected.items():
        if key in DESCRIPTIVE_FIELDS or key in ("entries", "catalogs"):
            continue
        if key in actual:
            assert actual[key] == value, key
    assert [e["path"] for e in actual["entries"]] == [e["path"] for e in expected["entries"]]
    for got, want in zip(actual["entries"], expected["entries"], strict=True):
        assert got == want, want["path"]
    assert len(actual["catalogs"]) == len(expected["catalogs"])
    for got, want in zip(actual["catalogs"], expected["catalogs"], strict=True):
        assert got == want, want["mountpoint"]


def test_latest_revision_matches_expected_json(location: str) -> None:
    expected = load_expected("expected.json")
    with open_reader(location) as reader:
        assert reader.signatures_verified
        actual = revision_record(reader, (STRATUM0 / ".cvmfspublished").read_bytes(), reader.tags())
        compare(actual, expected)
        assert set(expected) - set(actual) - set(DESCRIPTIVE_FIELDS) == {
            "revisions",
            "current_manifest_file",
            "manifest_rev3_after_tag_v1",
            "history_tags",
            "reflog",
            "whitelist",
        }
        assert [tag_record(t) for t in reader.tags()] == expected["history_tags"]
        reflog = [
            {"hash": r.content_hash.hex, "type": r.type.label, "timestamp": r.timestamp}
            for r in reader.reflog()
        ]
        assert reflog == expected["reflog"]
        wl = reader.whitelist
        assert {
            "created": wl.created.strftime("%Y%m%d%H%M%S"),
            "expires": wl.expires.strftime("%Y%m%d%H%M%S"),
            "repository_name": wl.repository_name,
            "certificate_fingerprints": list(wl.certificate_fingerprints),
        } == expected["whitelist"]
        assert (
            manifest_record(
                (FIXTURE / "stratum0-history/manifest-rev3-after-tag-v1.txt").read_bytes()
            )
            == expected["manifest_rev3_after_tag_v1"]
        )


@pytest.mark.parametrize("name", ["expected-revA.json", "expected-revB.json"])
def test_older_revisions_from_saved_manifests(location: str, name: str) -> None:
    expected = load_expected(name)
    with open_reader(location) as latest:
        all_tags = latest.tags()
    manifest_data = (FIXTURE / expected["manifest_file"]).read_bytes()
    # the saved manifest is verified exactly like the current one
    with open_reader(location, manifest_data=manifest_data) as reader:
        assert reader.revision == expected["revision"]
        compare(revision_record(reader, manifest_data, all_tags), expected)


def test_every_revision_summary_and_tag_route(location: str) -> None:
    expected = load_expected("expected.json")
    with open_reader(location) as reader:
        for summary in expected["revisions"]:
            data = (FIXTURE / summary["manifest_file"]).read_bytes()
            assert manifest_record(data) == summary["manifest"]
            view = reader.at_revision(summary["revision"])
            assert view.root_hash.hex == summary["root_catalog_hash"]
            assert [c.content_hash.hex for c in view.catalogs()] == summary["catalog_hashes"]
        rev_b = load_expected("expected-revB.json")
        by_tag = reader.at_tag("v1")
        manifest_b = (FIXTURE / rev_b["manifest_file"]).read_bytes()
        compare(revision_record(by_tag, manifest_b, reader.tags()), rev_b)
        rev_a = load_expected("expected-revA.json")
        by_hash = reader.at_root_hash(rev_a["root_catalog_hash"])
        assert [e.path.lstrip("/") for e in by_hash.walk()] == sorted(
            (e["path"] for e in rev_a["entries"]),
            key=lambda p: [part.encode() for part in p.split("/")] if p else [],
        )
        with pytest.raises(NotFoundError):
            reader.at_tag("no-such-tag")


def test_stat_listdir_read_open() -> None:
    with open_reader(STRATUM0) as reader:
        assert [e.name for e in reader.listdir("/")][:3] == ["a", "bin", "data"]
        assert [e.name for e in reader.listdir("nested")] == [
            ".cvmfscatalog",
            "added-b.txt",
            "deeper",
            "n1.txt",
            "n2.txt",
            "sub",
        ]
        mount = reader.stat("/nested/deeper")
        assert mount.is_nested_root and mount.flags == 33
        assert reader.read("nested/deeper/d1.txt") == b"second-level nested catalog file d1\n"
        assert reader.read("empty-file") == b""
        assert reader.readlink("links/relative") == "../hello.txt"
        with reader.open_file("data/big-chunked.bin") as fh:
            head = fh.read(10)
            skipped = fh.read(5243911 - 5 - 10)
            across = fh.read(10)
            rest = fh.read()
        whole = reader.read("data/big-chunked.bin")
        assert whole[:10] == head and whole[5243911 - 5 : 5243911 + 5] == across
        assert len(skipped) == 5243911 - 15
        assert len(whole) == 12587233 and whole.endswith(rest)
        with pytest.raises(NotFoundError):
            reader.stat("does/not/exist")
        with pytest.raises(InvalidPathError):
            reader.listdir("hello.txt")
        with pytest.raises(InvalidPathError):
            reader.read("links")
        with pytest.raises(InvalidPathError):
            reader.stat("../etc")
        assert reader.metainfo() is not None


# --- refusals on a tampered copy ---------------------------------------------------------------
@pytest.fixture
def copy(tmp_path: Path) -> Path:
    return writable_copy(tmp_path / "stratum0")


def flip_byte(path: Path, offset: int) -> None:
    path.chmod(0o644)
    data = bytearray(path.read_bytes())
    data[offset] ^= 0x01
    path.write_bytes(bytes(data))


def test_flipped_data_object_is_refused(copy: Path) -> None:
    flip_byte(copy / HELLO_OBJECT, 20)
    with open_reader(copy) as reader:
        assert reader.read("one-byte") == b"x"
        with pytest.raises(IntegrityError, match="does not match"):
            reader.read("hello.txt")


def test_flipped_root_catalog_is_refused(copy: Path) -> None:
    flip_byte(copy / ROOT_CATALOG, 100)
    with pytest.raises(IntegrityError):
        open_reader(copy)


def test_flipped_nested_catalog_is_refused(copy: Path) -> None:
    flip_byte(copy / NESTED_CATALOG, 100)
    with open_reader(copy) as reader:
        assert reader.read("hello.txt").startswith(b"Hello")
        with pytest.raises(IntegrityError):
            reader.stat("nested/n1.txt")


@pytest.mark.parametrize("where", ["body", "signature"])
def test_flipped_manifest_is_refused(copy: Path, where: str) -> None:
    manifest = copy / ".cvmfspublished"
    data = manifest.read_bytes()
    offset = data.index(b"\nT") + 3 if where == "body" else len(data) - 10
    flip_byte(manifest, offset)
    with pytest.raises(SignatureError):
        open_reader(copy)


@pytest.mark.parametrize("where", ["body", "signature"])
def test_flipped_whitelist_is_refused(copy: Path, where: str) -> None:
    whitelist = copy / ".cvmfswhitelist"
    data = whitelist.read_bytes()
    offset = 3 if where == "body" else len(data) - 10
    flip_byte(whitelist, offset)
    with pytest.raises(SignatureError):
        open_reader(copy)


def test_deleted_chunk_is_refused(copy: Path) -> None:
    (copy / CHUNK_2).unlink()
    with open_reader(copy) as reader, pytest.raises(NotFoundError, match="missing"):
        reader.read("data/big-chunked.bin")


def test_wrong_public_key_is_refused(tmp_path: Path) -> None:
    other = tmp_path / "other.pub"
    other.write_text(generate_keyset("other.example.org").master_public_pem)
    with pytest.raises(SignatureError):
        RepositoryReader.open(STRATUM0, FQRN, [other], now=PINNED_NOW)
    # any one of several keys suffices (spec §3.3)
    with RepositoryReader.open(STRATUM0, FQRN, [other, PUBLIC_KEY], now=PINNED_NOW) as reader:
        assert reader.signatures_verified


def test_wrong_repository_name_is_refused() -> None:
    with pytest.raises(RepositoryNameMismatchError):
        open_reader(STRATUM0, fqrn="other.example.org")


def test_expired_whitelist_is_refused() -> None:
    after = dt.datetime(2026, 12, 28, 3, 37, 33, tzinfo=dt.UTC)
    with pytest.raises(WhitelistExpiredError, match="re-sign"):
        open_reader(STRATUM0, now=after)


def test_certificate_not_in_whitelist_is_refused(copy: Path) -> None:
    # A manifest signed by another certificate the whitelist does not list.
    from cvmfs.manifest import SignedManifest, sign_manifest
    from cvmfs.objects import ObjectSuffix, compress_and_hash

    other = generate_keyset(FQRN)
    stored, cert_hash = compress_and_hash(other.certificate_pem.encode())
    LocalStorage(copy).put(cert_hash.object_key(ObjectSuffix.CERTIFICATE), stored)
    old = SignedManifest.parse((copy / ".cvmfspublished").read_bytes()).manifest
    new = sign_manifest(old.evolve(certificate_hash=cert_hash), other.repository_private_pem or "")
    (copy / ".cvmfspublished").write_bytes(new)
    with pytest.raises(SignatureError, match="not listed"):
        open_reader(copy)


def test_unsigned_garbage_manifest_is_refused(copy: Path) -> None:
    (copy / ".cvmfspublished").write_bytes(b"hello\n")
    with pytest.raises(FormatError):
        open_reader(copy)


def test_missing_repository_is_refused(tmp_path: Path) -> None:
    with pytest.raises(NotFoundError):
        open_reader(tmp_path / "nothing")
    with pytest.raises(NotFoundError):
        open_reader(tmp_path)


def test_root_hash_view_verifies_catalog(copy: Path) -> None:
    with open_reader(copy) as reader:
        missing = ContentHash.from_hex("00" * 20)
        with pytest.raises(NotFoundError):
            reader.at_root_hash(missing)


def test_http_storage_errors(http_url: str) -> None:
    store = HttpStorage(http_url)
    try:
        assert store.exists(".cvmfspublished") and not store.exists("data/00/missing")
        with pytest.raises(NotFoundError, match="404"):
            store.get("data/00/missing")
        with pytest.raises(StorageError, match="read-only"):
            store.put("data/00/x", b"x")
        with pytest.raises(StorageError, match="read-only"):
            store.put_atomic(".cvmfspublished", b"x")
    finally:
        store.close()
    with pytest.raises(StorageError):
        HttpStorage("http://127.0.0.1:9").get(".cvmfspublished")  # nothing listens on port 9


def test_catalog_cache_dir_is_reused(copy: Path, tmp_path: Path) -> None:
    cache = tmp_path / "cache"
    with open_reader(copy, cache_dir=cache) as reader:
        first = reader.catalogs()
    (copy / NESTED_CATALOG).unlink()
    with open_reader(copy, cache_dir=cache) as reader:
        assert reader.catalogs() == first  # stored sizes included, nothing re-downloaded
        assert reader.read("nested/n1.txt") == b"nested catalog file n1\n"
    with open_reader(copy) as reader, pytest.raises(NotFoundError):
        reader.stat("nested/n1.txt")


def test_open_file_seeks_by_chunk(copy: Path) -> None:
    with open_reader(STRATUM0) as reader:
        whole = reader.read("data/big-chunked.bin")
        random_file = reader.read("data/random-1MiB.bin")
    (copy / "data/09/0d8d57cb02074e09b814ba17c4247a83c9c212P").unlink()  # first chunk
    with open_reader(copy) as reader:
        with reader.open_file("data/big-chunked.bin") as fh:
            fh.seek(9569064 + 100)  # inside the third chunk: the first is never fetched
            assert fh.read(50) == whole[9569164:9569214]
            fh.seek(9569064 - 3)  # across the boundary of chunks 2 and 3
            assert fh.read(10) == whole[9569061:9569071]
            assert fh.seek(-5, io.SEEK_END) == len(whole) - 5
            assert fh.read() == whole[-5:]
            assert fh.read() == b""
            fh.seek(0)
            with pytest.raises(NotFoundError):
                fh.read(1)
        with reader.open_file("data/random-1MiB.bin") as fh:
            fh.seek(1000)
            assert fh.read(24) == random_file[1000:1024]
            assert fh.tell() == 1024
        with pytest.raises(InvalidPathError):
            reader.open_file("links/relative")


def test_catalog_connections_are_bounded() -> None:
    expected = load_expected("expected.json")
    with open_reader(STRATUM0, max_open_catalogs=1) as reader:
        manifest = (STRATUM0 / ".cvmfspublished").read_bytes()
        compare(revision_record(reader, manifest, reader.tags()), expected)
        open_now = [
            loaded.catalog.is_open for loaded in reader._cache.catalogs.values()
        ]  # white-box: at most one connection stays open between calls
        assert len(open_now) == 3 and sum(open_now) <= 1
        assert fsck(reader, all_revisions=True).ok
