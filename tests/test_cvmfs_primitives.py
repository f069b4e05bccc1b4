"""Unit tests of the cvmfs format primitives on tiny literal inputs and the spec's test vectors."""

from __future__ import annotations

import datetime as dt
import hashlib
import io
import os
import sqlite3
import stat
import zlib
from pathlib import Path

import pytest

from cvmfs import catalog, history, keys, manifest, objects, reflog, whitelist
from cvmfs._ripemd160 import Ripemd160
from cvmfs.errors import (
    FormatError,
    IntegrityError,
    InvalidPathError,
    KeyFileError,
    NotFoundError,
    SignatureError,
    WhitelistExpiredError,
)
from cvmfs.objects import ContentHash, HashAlgorithm, ObjectSuffix
from cvmfs.storage import LocalStorage
from tests.shared_paths import GOLDEN

FIXTURE = GOLDEN
KEYS = FIXTURE / "keys"
FQRN = "golden.example.org"
PINNED_NOW = dt.datetime(2026, 12, 1, tzinfo=dt.UTC)


# --- objects (spec §1.2-§1.4) ------------------------------------------------------------------
def test_empty_file_vectors() -> None:
    stored = objects.compress(b"")
    assert stored == objects.ZLIB_EMPTY == bytes.fromhex("789c030000000001")
    assert objects.hash_bytes(stored).hex == "e8ec3d88b62ebf526e4e5a4ff6162a3aa48a6b78"
    shake = objects.hash_bytes(stored, HashAlgorithm.SHAKE128)
    assert shake.hex == "28d94b83b7229b331fc601362b8e272e02665122-shake128"
    rmd = objects.hash_bytes(stored, HashAlgorithm.RMD160)
    assert rmd.hex == "fcdb20b894f31f1306d56294c049ca7293dde0fc-rmd160"


@pytest.mark.parametrize("size", [0, 1, 55, 56, 63, 64, 65, 127, 1000])
def test_pure_python_ripemd160(size: int) -> None:
    data = bytes(range(256)) * 4
    data = data[:size]
    assert Ripemd160(data).hexdigest() == hashlib.new("ripemd160", data).hexdigest()


def test_content_hash_parse_and_paths() -> None:
    sha = ContentHash.from_hex("e8ec3d88b62ebf526e4e5a4ff6162a3aa48a6b78")
    assert sha.algorithm is HashAlgorithm.SHA1
    assert objects.object_path(sha) == "data/e8/ec3d88b62ebf526e4e5a4ff6162a3aa48a6b78"
    assert sha.object_key(ObjectSuffix.CATALOG).endswith("a6b78C")
    rmd = ContentHash.from_hex("fcdb20b894f31f1306d56294c049ca7293dde0fc-rmd160")
    assert rmd.algorithm is HashAlgorithm.RMD160
    assert rmd.object_key("P") == "data/fc/db20b894f31f1306d56294c049ca7293dde0fc-rmd160P"
    shake = ContentHash.from_hex("28d94b83b7229b331fc601362b8e272e02665122-shake128")
    assert shake.algorithm is HashAlgorithm.SHAKE128
    bad_hashes = [
        "",
        "xyz",
        "e8ec3d88b62ebf526e4e5a4ff6162a3aa48a6b7",
        "d41d8cd98f00b204e9800998ecf8427e",
        "E8EC3D88B62EBF526E4E5A4FF6162A3AA48A6B78",
        "fcdb20b894f31f1306d56294c049ca7293dde0fc-shake1",
    ]
    for bad in bad_hashes:
        with pytest.raises(FormatError):
            ContentHash.from_hex(bad)


def test_streaming_encoder_matches_one_shot_and_decoder_verifies() -> None:
    data = os.urandom(3000) + b"a" * 100_000
    encoder = objects.ObjectEncoder()
    stored = b"".join(encoder.update(data[i : i + 4096]) for i in range(0, len(data), 4096))
    stored += encoder.finish()
    assert stored == zlib.compress(data)
    assert encoder.content_hash == objects.hash_bytes(stored)
    assert encoder.plain_size == len(data) and encoder.stored_size == len(stored)

    pieces = [stored[i : i + 1000] for i in range(0, len(stored), 1000)]
    out = b"".join(objects.iter_decode_verified(pieces, encoder.content_hash))
    assert out == data
    assert objects.decode_verified(stored, encoder.content_hash, expected_size=len(data)) == data

    corrupt = bytearray(stored)
    corrupt[len(corrupt) // 2] ^= 1
    with pytest.raises(IntegrityError):
        objects.decode_verified(bytes(corrupt), encoder.content_hash)
    with pytest.raises(IntegrityError):
        b"".join(objects.iter_decode_verified([bytes(corrupt)], encoder.content_hash))
    with pytest.raises(IntegrityError, match="inflates"):
        objects.decode_verified(stored, encoder.content_hash, expected_size=len(data) - 1)
    # a valid object name over a zlib stream with garbage appended, or cut short
    for bad in (stored + b"junk", stored[:-4]):
        with pytest.raises(IntegrityError, match=r"trailing|truncated"):
            objects.decode_verified(bad, objects.hash_bytes(bad))


def test_uncompressed_objects() -> None:
    encoder = objects.ObjectEncoder(compressed=False)
    stored = encoder.update(b"raw bytes") + encoder.finish()
    assert stored == b"raw bytes"
    assert encoder.content_hash == objects.hash_bytes(b"raw bytes")
    decoded = objects.decode_verified(stored, encoder.content_hash, compressed=False)
    assert decoded == b"raw bytes"


# --- catalog primitives (spec §2) --------------------------------------------------------------
def test_md5path_vectors() -> None:
    assert catalog.md5path_pair(b"") == (338333539836370388, 9098107892288553193)
    assert catalog.md5path_pair("/software") == (3445601412511816508, 6267067367417020806)
    assert catalog.md5path_pair("/software/v1") == (5933606009665733622, -8320353742129006166)
    assert catalog.md5path_pair("/data/big-chunked.bin") == (
        -711879931229870707,
        4843715369071302171,
    )
    assert catalog.parent_pair("") == (0, 0)
    assert catalog.parent_pair("/software") == catalog.md5path_pair("")


def test_normalize_path() -> None:
    assert catalog.normalize_path("") == ""
    assert catalog.normalize_path("/") == ""
    assert catalog.normalize_path("a/b/") == "/a/b"
    assert catalog.normalize_path("/a/b") == "/a/b"
    for bad in ["a/../b", "a//b", "./a", "a\0b", "x" * 256]:
        with pytest.raises(InvalidPathError):
            catalog.normalize_path(bad)


def test_hardlinks_and_flags() -> None:
    assert catalog.encode_hardlinks(0, 1) == 1
    assert catalog.encode_hardlinks(3, 2) == (3 << 32) | 2
    assert catalog.decode_hardlinks((3 << 32) | 2) == (3, 2)
    with pytest.raises(ValueError):
        catalog.encode_hardlinks(0, 0)
    assert catalog.FLAG_FILE | catalog.FLAG_LINK == 12
    assert catalog.FLAG_FILE | catalog.FLAG_FILE_CHUNK == 68
    external = catalog.FLAG_FILE | catalog.FLAG_FILE_EXTERNAL
    external |= catalog.COMPRESSION_NONE << catalog.FLAG_COMPRESSION_SHIFT
    assert external == 2180
    assert catalog.hash_algorithm_from_flags(260) is HashAlgorithm.RMD160
    assert catalog.compression_from_flags(2052) == catalog.COMPRESSION_NONE


def test_xattr_blob_vector() -> None:
    blob = catalog.encode_xattrs({b"user.foo": b"bar"})
    assert blob == bytes.fromhex("0101080375736572") + b".foo" + b"bar"
    assert catalog.decode_xattrs(blob) == {b"user.foo": b"bar"}
    assert catalog.encode_xattrs({}) is None
    two = {b"user.b": b"", b"user.a": b"1"}
    assert catalog.decode_xattrs(catalog.encode_xattrs(two)) == two
    for bad in [b"\x02\x00", b"\x01\x01\x08", b"\x01\x01\x00\x00"]:
        with pytest.raises(FormatError):
            catalog.decode_xattrs(bad)


def test_statistics_counter_names() -> None:
    assert len(catalog.STATISTICS_COUNTERS) == 24
    assert "self_external_file_size" in catalog.STATISTICS_COUNTERS
    assert list(catalog.STATISTICS_COUNTERS) == sorted(catalog.STATISTICS_COUNTERS)


def _tiny_catalog(path: Path) -> None:
    db = sqlite3.connect(path)
    for ddl in catalog.CATALOG_DDL:
        db.execute(ddl)
    db.executemany(
        "INSERT INTO properties VALUES (?, ?)",
        [("schema", "2.5"), ("schema_revision", 7), ("revision", 3), ("last_modified", 10)],
    )
    db.executemany(
        "INSERT INTO statistics VALUES (?, 0)", [(n,) for n in catalog.STATISTICS_COUNTERS]
    )
    empty = ContentHash.from_hex(objects.EMPTY_FILE_SHA1)
    xattr = catalog.encode_xattrs({b"user.x": b"y"})
    rows = [
        ("", "", 16877, 4096, 1, None, "", catalog.encode_hardlinks(0, 3), None, 5),
        ("/d", "d", 16877, 4096, 1, None, "", 2, None, None),
        ("/d/f", "f", 33188, 0, 4, empty.digest, "", 1, xattr, None),
        ("/l", "l", 41471, 2, 12, None, "/d", 1, None, None),
        ("/big", "big", 33188, 6, 68, None, "", 1, None, None),
    ]  # fmt: skip
    for path_, name, mode, size, flags, digest, target, hardlinks, blob, mtimens in rows:
        db.execute(
            "INSERT INTO catalog VALUES (?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?)",
            (
                *catalog.md5path_pair(path_),
                *catalog.parent_pair(path_),
                hardlinks, digest, size, mode, 1700000000, mtimens, flags, name, target, 0, 0,
                blob,
            ),
        )  # fmt: skip
    for offset, size in [(0, 4), (4, 2)]:
        db.execute(
            "INSERT INTO chunks VALUES (?,?,?,?,?)",
            (*catalog.md5path_pair("/big"), offset, size, bytes([offset]) * 20),
        )
    db.execute("INSERT INTO nested_catalogs VALUES ('/n', ?, 4096)", (objects.EMPTY_FILE_SHA1,))
    db.commit()
    db.close()


def test_catalog_reader_on_a_tiny_catalog(tmp_path: Path) -> None:
    path = tmp_path / "c.db"
    _tiny_catalog(path)
    with catalog.Catalog(path) as cat:
        assert (cat.schema, cat.schema_revision, cat.revision) == ("2.5", 7, 3)
        assert cat.root_prefix is None and cat.ttl_s == 240
        root = cat.lookup("")
        assert root is not None and root.is_dir and root.linkcount == 3 and root.mtimens == 5
        assert [e.name for e in cat.listdir("/")] == ["big", "d", "l"]
        f = cat.lookup("d/f")
        assert f is not None and f.is_regular and f.xattrs == {b"user.x": b"y"}
        assert f.object_key == "data/e8/ec3d88b62ebf526e4e5a4ff6162a3aa48a6b78"
        link = cat.lookup("/l")
        assert link is not None and link.is_symlink and link.symlink == "/d"
        big = cat.lookup("/big")
        assert big is not None and big.is_chunked and big.object_key is None
        assert [(c.offset, c.size) for c in big.chunks] == [(0, 4), (4, 2)]
        assert big.chunks[1].object_key.endswith("P")
        assert cat.lookup("/missing") is None
        assert [r.path for r in cat.nested_catalogs()] == ["/n"]
        assert sorted(e.path for e in cat.entries()) == ["", "/big", "/d", "/d/f", "/l"]
        assert cat.statistics()["self_regular"] == 0


def test_catalog_rejects_non_catalog(tmp_path: Path) -> None:
    junk = tmp_path / "junk"
    junk.write_bytes(b"not sqlite at all" * 100)
    with pytest.raises(FormatError):
        catalog.Catalog(junk)


# --- keys, manifest, whitelist (spec §3) -------------------------------------------------------
@pytest.fixture(scope="module")
def fixture_keys() -> keys.KeySet:
    return keys.load_keyset(KEYS, FQRN)


@pytest.fixture(scope="module")
def fresh_keys() -> keys.KeySet:
    return keys.generate_keyset("a-very-long-repository-name.example.org", gateway_key_id="gw1")


def test_fixture_certificate_fingerprint(fixture_keys: keys.KeySet) -> None:
    assert (
        fixture_keys.master_private_pem and "BEGIN PRIVATE KEY" in fixture_keys.master_private_pem
    )
    assert fixture_keys.certificate_fingerprint() == (
        "BB:DC:0C:37:6A:D3:DD:45:58:C1:DD:E1:B4:B8:8A:10:26:3E:9C:A7"
    )
    assert keys.certificate_fingerprint(
        fixture_keys.certificate_pem, HashAlgorithm.RMD160
    ).endswith("-RMD160")


def test_generated_keyset(fresh_keys: keys.KeySet, tmp_path: Path) -> None:
    cert = keys.load_certificate(fresh_keys.certificate_pem)
    cn = cert.subject.rfc4514_string()
    assert cn == "CN=a-very-long-repository-name.ex[...] CernVM-FS Release Managers"
    assert cert.issuer == cert.subject
    assert (cert.not_valid_after_utc - cert.not_valid_before_utc).days == 365
    assert fresh_keys.master_public_pem.startswith("-----BEGIN PUBLIC KEY-----")
    key_id, secret = keys.parse_gateway_key(fresh_keys.gateway_key or "")
    assert key_id == "gw1" and len(secret) >= 32
    keys.write_keyset(fresh_keys, tmp_path, "x.org")
    modes = {p.name: stat.S_IMODE(p.stat().st_mode) for p in tmp_path.iterdir()}
    assert modes == {
        "x.org.masterkey": 0o400,
        "x.org.pub": 0o444,
        "x.org.key": 0o400,
        "x.org.crt": 0o444,
        "x.org.gw": 0o600,
    }
    assert keys.load_keyset(tmp_path, "x.org") == fresh_keys
    keys.write_keyset(fresh_keys, tmp_path, "x.org")  # rewriting read-only files works


def test_load_keyset_accepts_pkcs1_and_refuses_mismatch(
    fixture_keys: keys.KeySet, fresh_keys: keys.KeySet, tmp_path: Path
) -> None:
    from cryptography.hazmat.primitives import serialization

    pkcs1 = (
        keys.load_private_key(fixture_keys.repository_private_pem or "")
        .private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.TraditionalOpenSSL,
            serialization.NoEncryption(),
        )
        .decode()
    )
    assert pkcs1.startswith("-----BEGIN RSA PRIVATE KEY-----")
    mixed = keys.KeySet(
        fixture_keys.master_private_pem,
        fixture_keys.master_public_pem,
        pkcs1,
        fixture_keys.certificate_pem,
    )
    keys.write_keyset(mixed, tmp_path, FQRN)
    assert keys.load_keyset(tmp_path, FQRN).repository_private_pem == pkcs1
    wrong = keys.KeySet(
        fresh_keys.master_private_pem,
        fixture_keys.master_public_pem,
        None,
        fixture_keys.certificate_pem,
    )
    with pytest.raises(KeyFileError, match="master key"):
        keys.validate_keyset(wrong)
    with pytest.raises(KeyFileError, match="missing"):
        keys.load_keyset(tmp_path / "nowhere", FQRN)
    with pytest.raises(KeyFileError):
        keys.parse_gateway_key("hmac id secret")


def test_manifest_signature_from_a_damaged_key_is_refused(fixture_keys: keys.KeySet) -> None:
    """Manifest signing skips OpenSSL's key check (25 ms) and verifies each signature instead:
    a key whose private exponents are wrong must raise, never return a bad signature."""
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import rsa

    good = keys.load_private_key(fixture_keys.repository_private_pem or "").private_numbers()
    damaged = rsa.RSAPrivateNumbers(
        p=good.p,
        q=good.q,
        d=good.d + 2,
        dmp1=good.dmp1 + 2,  # OpenSSL falls back from a bad CRT result to d: damage both
        dmq1=good.dmq1,
        iqmp=good.iqmp,
        public_numbers=good.public_numbers,
    ).private_key(unsafe_skip_rsa_key_validation=True)
    pem = damaged.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    ).decode()
    hash_text = "0123456789abcdef0123456789abcdef01234567"
    with pytest.raises(KeyFileError, match="damaged"):
        keys.sign_manifest_hash(pem, hash_text)
    signature = keys.sign_manifest_hash(fixture_keys.repository_private_pem or "", hash_text)
    keys.verify_manifest_hash(fixture_keys.certificate_pem, hash_text, signature)


def test_raw_private_encrypt_matches_fixture_whitelist(fixture_keys: keys.KeySet) -> None:
    data = (FIXTURE / "stratum0/.cvmfswhitelist").read_bytes()
    signed = whitelist.SignedWhitelist.parse(data)
    # PKCS#1 type-1 padding is deterministic: re-signing reproduces the stock signature.
    again = keys.private_encrypt(fixture_keys.master_private_pem or "", signed.hash_text.encode())
    assert again == signed.signature
    assert whitelist.sign_whitelist(signed.whitelist, fixture_keys.master_private_pem or "") == data


def test_fixture_whitelist_parse_verify_expiry(fixture_keys: keys.KeySet) -> None:
    signed = whitelist.SignedWhitelist.parse((FIXTURE / "stratum0/.cvmfswhitelist").read_bytes())
    wl = signed.whitelist
    assert wl.repository_name == FQRN
    assert wl.created == dt.datetime(2026, 11, 28, 3, 37, 32, tzinfo=dt.UTC)
    assert wl.expires == dt.datetime(2026, 12, 28, 3, 37, 32, tzinfo=dt.UTC)
    assert wl.certificate_fingerprints == (
        "BB:DC:0C:37:6A:D3:DD:45:58:C1:DD:E1:B4:B8:8A:10:26:3E:9C:A7",
    )
    signed.verify([fixture_keys.master_public_pem])
    wl.check_certificate(fixture_keys.certificate_pem)
    wl.check_not_expired(PINNED_NOW)
    # hour granularity (spec §3.3): 02:59 still valid, 03:00 already expired
    wl.check_not_expired(dt.datetime(2026, 12, 28, 2, 59, 59, tzinfo=dt.UTC))
    with pytest.raises(WhitelistExpiredError):
        wl.check_not_expired(dt.datetime(2026, 12, 28, 3, 0, tzinfo=dt.UTC))
    with pytest.raises(WhitelistExpiredError):
        wl.check_not_expired(dt.datetime(2026, 12, 28, 3, 37, 33, tzinfo=dt.UTC))


def test_whitelist_build_sign_verify_and_tamper(
    fresh_keys: keys.KeySet, fixture_keys: keys.KeySet
) -> None:
    now = dt.datetime(2026, 1, 2, 3, 4, 5, 678, tzinfo=dt.UTC)
    wl = whitelist.build_whitelist("x.org", [fresh_keys.certificate_pem], now=now)
    assert wl.expires - wl.created == dt.timedelta(days=30)
    data = whitelist.sign_whitelist(wl, fresh_keys.master_private_pem or "")
    assert data.startswith(b"20260102030405\nE20260201030405\nNx.org\n")
    signed = whitelist.SignedWhitelist.parse(data)
    assert signed.whitelist == wl
    signed.verify([fixture_keys.master_public_pem, fresh_keys.master_public_pem])
    with pytest.raises(SignatureError):
        signed.verify([fixture_keys.master_public_pem])
    tampered = data.replace(b"Nx.org", b"Ny.org")
    with pytest.raises(SignatureError):
        whitelist.SignedWhitelist.parse(tampered).verify([fresh_keys.master_public_pem])
    with pytest.raises(SignatureError):
        wl.check_certificate(fixture_keys.certificate_pem)
    assert whitelist.parse_timestamp("20260201030405") == dt.datetime(
        2026, 2, 1, 3, 4, 5, tzinfo=dt.UTC
    )
    with pytest.raises(FormatError, match="not a valid time"):
        whitelist.parse_timestamp("20261301030405")  # month 13


def test_whitelist_fingerprint_line_parsing() -> None:
    body = (
        b"20260101000000\nE20260201000000\nNx.org\n"
        b"AA:BB:CC:DD:EE:FF:00:11:22:33:44:55:66:77:88:99:AA:BB:CC:DD # a comment\n"
        b"garbage line\n--\nabc\n"
    )
    wl = whitelist.SignedWhitelist.parse(body).whitelist
    assert wl.certificate_fingerprints == (
        "AA:BB:CC:DD:EE:FF:00:11:22:33:44:55:66:77:88:99:AA:BB:CC:DD",
    )
    with pytest.raises(FormatError):
        whitelist.SignedWhitelist.parse(b"20260101000000\nNx.org\n")


def test_fixture_manifests_parse_and_verify(fixture_keys: keys.KeySet) -> None:
    import json

    expected = json.loads((FIXTURE / "expected.json").read_text())
    for revision in expected["revisions"]:
        data = (FIXTURE / revision["manifest_file"]).read_bytes()
        signed = manifest.SignedManifest.parse(data)
        assert signed.manifest.raw_lines() == revision["manifest"]["raw_lines"]
        assert signed.manifest.fields() == revision["manifest"]["fields"]
        assert signed.hash_text == revision["manifest"]["signature_hash_line"]
        assert len(signed.signature) == revision["manifest"]["signature_bytes"]
        signed.verify(fixture_keys.certificate_pem)
        # serialization reproduces the stock body byte for byte
        assert signed.manifest.serialize() == signed.body
        assert signed.to_bytes() == data


def test_manifest_sign_and_tamper(fresh_keys: keys.KeySet, fixture_keys: keys.KeySet) -> None:
    m = manifest.Manifest(
        root_catalog_hash=ContentHash.from_hex(objects.EMPTY_FILE_SHA1),
        revision=7,
        root_catalog_size=45056,
        repository_name="x.org",
        publish_timestamp=1717000000,
    )
    data = manifest.sign_manifest(m, fresh_keys.repository_private_pem or "")
    assert data.startswith(
        b"Ce8ec3d88b62ebf526e4e5a4ff6162a3aa48a6b78\nB45056\n"
        b"Rd41d8cd98f00b204e9800998ecf8427e\nD240\nS7\nGno\nAno\nNx.org\nT1717000000\n--\n"
    )
    signed = manifest.SignedManifest.parse(data)
    assert signed.manifest == m
    signed.verify(fresh_keys.certificate_pem)
    with pytest.raises(SignatureError):
        signed.verify(fixture_keys.certificate_pem)
    with pytest.raises(SignatureError):
        manifest.SignedManifest.parse(data.replace(b"S7", b"S8")).verify(fresh_keys.certificate_pem)
    with pytest.raises(FormatError):
        manifest.Manifest.parse(b"Cabc\n")
    with pytest.raises(FormatError):
        manifest.SignedManifest.parse(m.serialize())


# --- history and reflog (spec §4) --------------------------------------------------------------
def test_history_create_and_tags(tmp_path: Path) -> None:
    path = tmp_path / "history.db"
    history.create_history_db(path, "x.org")
    root = ContentHash.from_hex(objects.EMPTY_FILE_SHA1)
    with history.HistoryDb(path, writable=True) as db:
        assert db.properties == {"schema": "1.0", "schema_revision": "3", "fqrn": "x.org"}
        db.put(history.Tag("trunk", root, 1, 100, "current HEAD", 4096))
        db.put(history.Tag("v1", root, 1, 100, "first"))
        db.put(history.Tag("trunk", root, 2, 200, "current HEAD", 4096))  # replaces
        db.set_previous_revision(root)
    with history.HistoryDb(path) as db:
        assert [(t.name, t.revision) for t in db.tags()] == [("v1", 1), ("trunk", 2)]
        assert db.get("v1").description == "first"
        assert db.previous_revision == objects.EMPTY_FILE_SHA1
        with pytest.raises(NotFoundError):
            db.get("nope")
    check = sqlite3.connect(path)
    assert check.execute("PRAGMA journal_mode").fetchone() == ("delete",)
    assert check.execute("SELECT * FROM branches").fetchall() == [("", None, 0)]
    assert history.generic_tag_name(1795837083) == "generic-2026-11-28T03:38:03Z"


def test_history_ddl_matches_fixture(tmp_path: Path) -> None:
    fixture_db = tmp_path / "fixture-history.db"
    stored = (FIXTURE / "stratum0/data/dc/9a6e44168288b0b4b5367a58056ef43a08cde0H").read_bytes()
    fixture_db.write_bytes(zlib.decompress(stored))
    ours = tmp_path / "ours.db"
    history.create_history_db(ours, FQRN)

    def tables(path: Path) -> dict[str, list[tuple[object, ...]]]:
        db = sqlite3.connect(path)
        names = [r[0] for r in db.execute("SELECT name FROM sqlite_master WHERE type='table'")]
        return {n: db.execute(f"PRAGMA table_info({n})").fetchall() for n in names}

    assert tables(ours) == tables(fixture_db)


def test_reflog_create_and_refs(tmp_path: Path) -> None:
    path = tmp_path / ".cvmfsreflog"
    reflog.create_reflog_db(path, "x.org")
    a = ContentHash.from_hex(objects.EMPTY_FILE_SHA1)
    b = objects.hash_bytes(b"other")
    with reflog.ReflogDb(path, writable=True) as db:
        db.add(a, reflog.RefType.CATALOG, 1)
        db.add(b, reflog.RefType.CERTIFICATE, 2)
        db.add(a, reflog.RefType.CATALOG, 3)
    with reflog.ReflogDb(path) as db:
        assert db.properties == {"schema": "1.0", "schema_revision": "0", "fqrn": "x.org"}
        assert [(r.content_hash, r.type, r.timestamp) for r in db.refs()] == [
            (b, reflog.RefType.CERTIFICATE, 2),
            (a, reflog.RefType.CATALOG, 3),
        ]
        assert db.contains(a) and db.refs()[0].object_key.endswith("X")


# --- storage -----------------------------------------------------------------------------------
def test_local_storage(tmp_path: Path) -> None:
    store = LocalStorage(tmp_path)
    key = "data/ab/cdef"
    store.put(key, b"one")
    assert store.get(key) == b"one" and store.exists(key)
    assert stat.S_IMODE((tmp_path / key).stat().st_mode) == 0o644
    store.put(key, b"two")  # objects are content-addressed: never rewritten
    assert store.get(key) == b"one"
    store.put("data/cd/stream", io.BytesIO(b"x" * 3_000_000))
    with store.open("data/cd/stream") as fh:
        assert len(fh.read()) == 3_000_000
    store.put_atomic(".cvmfspublished", b"m1")
    store.put_atomic(".cvmfspublished", b"m2")
    assert store.get(".cvmfspublished") == b"m2"
    assert list(store.list("data/txn")) == []
    assert sorted(store.list("data/")) == ["data/ab/cdef", "data/cd/stream"]
    store.delete(key)
    assert not store.exists(key)
    with pytest.raises(NotFoundError):
        store.get(key)
    for bad in ["../x", "/etc/passwd", "data/../../x", ""]:
        with pytest.raises(InvalidPathError):
            store.get(bad)


def test_catalog_rows_deep_tree_and_orphans(tmp_path: Path) -> None:
    path = tmp_path / "deep.db"
    db = sqlite3.connect(path)
    for ddl in catalog.CATALOG_DDL:
        db.execute(ddl)
    db.execute("INSERT INTO properties VALUES ('schema', '2.5')")
    paths = [""] + ["/d" * depth for depth in range(1, 3001)] + ["/orphan/x"]
    for entry_path in paths:
        db.execute(
            "INSERT INTO catalog (md5path_1, md5path_2, parent_1, parent_2, hardlinks, size, mode, "
            "mtime, flags, name, symlink, uid, gid) VALUES (?,?,?,?,2,4096,16877,0,1,?,'',0,0)",
            (*catalog.md5path_pair(entry_path), *catalog.parent_pair(entry_path),
             entry_path.rsplit("/", 1)[-1]),
        )  # fmt: skip
    db.commit()
    db.close()
    problems: list[str] = []
    with catalog.Catalog(path) as cat:
        rows = list(cat.rows(on_problem=problems.append))
        assert len(rows) == 3001 and max(len(r.entry.path) for r in rows) == 6000
        assert problems == ["row 'x' has no parent directory in its catalog"]
        with pytest.raises(FormatError, match="no parent directory"):
            list(cat.entries())


def test_naive_clock_is_utc() -> None:
    signed = whitelist.SignedWhitelist.parse((FIXTURE / "stratum0/.cvmfswhitelist").read_bytes())
    assert not signed.whitelist.is_expired(dt.datetime(2026, 12, 28, 2, 59))
    assert signed.whitelist.is_expired(dt.datetime(2026, 12, 28, 3, 0))
