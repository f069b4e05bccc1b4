"""Property-based round trips of the format primitives (hypothesis)."""

from __future__ import annotations

import datetime as dt
import zlib

from hypothesis import given, settings
from hypothesis import strategies as st

from cvmfs import catalog, manifest, objects, whitelist
from cvmfs.objects import ContentHash, HashAlgorithm

algorithms = st.sampled_from(list(HashAlgorithm))
content_hashes = st.builds(ContentHash, st.binary(min_size=20, max_size=20), algorithms)


@given(content_hashes)
def test_content_hash_hex_round_trip(content_hash: ContentHash) -> None:
    assert ContentHash.from_hex(content_hash.hex) == content_hash
    key = content_hash.object_key("C")
    assert key == f"data/{content_hash.hex[:2]}/{content_hash.hex[2:]}C"


@given(st.lists(st.binary(max_size=5000), max_size=8), algorithms, st.booleans())
@settings(max_examples=50)
def test_encoder_decoder_round_trip(
    pieces: list[bytes], algorithm: HashAlgorithm, compressed: bool
) -> None:
    encoder = objects.ObjectEncoder(algorithm, compressed=compressed)
    stored = b"".join(encoder.update(p) for p in pieces) + encoder.finish()
    plain = b"".join(pieces)
    if compressed:
        assert zlib.decompress(stored) == plain
    assert encoder.content_hash == objects.hash_bytes(stored, algorithm)
    decoded = objects.decode_verified(
        stored, encoder.content_hash, compressed=compressed, expected_size=len(plain)
    )
    assert decoded == plain


xattr_maps = st.dictionaries(
    st.binary(min_size=1, max_size=255).filter(lambda k: b"\0" not in k),
    st.binary(max_size=255),
    max_size=20,
)


@given(xattr_maps)
def test_xattr_blob_round_trip(xattrs: dict[bytes, bytes]) -> None:
    assert catalog.decode_xattrs(catalog.encode_xattrs(xattrs)) == xattrs


@given(st.binary(max_size=300))
def test_md5path_pair_is_signed_int64(path: bytes) -> None:
    first, second = catalog.md5path_pair(path)
    assert -(2**63) <= first < 2**63 and -(2**63) <= second < 2**63


optional_hash = st.none() | st.builds(
    ContentHash, st.binary(min_size=20, max_size=20), st.just(HashAlgorithm.SHA1)
)
manifests = st.builds(
    manifest.Manifest,
    root_catalog_hash=content_hashes,
    revision=st.integers(min_value=0, max_value=2**40),
    ttl_seconds=st.integers(min_value=0, max_value=10**6),
    root_catalog_size=st.none() | st.integers(min_value=0, max_value=2**40),
    garbage_collectable=st.booleans(),
    alternative_name_catalogs=st.booleans(),
    repository_name=st.none() | st.from_regex(r"[a-z0-9][a-z0-9.-]{0,40}", fullmatch=True),
    certificate_hash=optional_hash,
    history_hash=optional_hash,
    publish_timestamp=st.none() | st.integers(min_value=1, max_value=2**40),
    metainfo_hash=optional_hash,
    reflog_hash=optional_hash,
)


@given(manifests)
def test_manifest_serialize_parse_round_trip(value: manifest.Manifest) -> None:
    assert manifest.Manifest.parse(value.serialize()) == value
    letters = "".join(value.raw_lines())
    assert letters == "".join(c for c in manifest.FIELD_ORDER if c in letters)  # upstream order


@given(
    st.datetimes(
        min_value=dt.datetime(2000, 1, 1),
        max_value=dt.datetime(2090, 1, 1),
        timezones=st.just(dt.UTC),
    ),
    st.integers(min_value=1, max_value=400),
    st.lists(st.binary(min_size=20, max_size=20), min_size=1, max_size=4),
)
def test_whitelist_body_round_trip(created: dt.datetime, days: int, digests: list[bytes]) -> None:
    created = created.replace(microsecond=0)
    fingerprints = tuple(":".join(f"{b:02X}" for b in digest) for digest in digests)
    value = whitelist.Whitelist(created, created + dt.timedelta(days=days), "x.org", fingerprints)
    parsed = whitelist.SignedWhitelist.parse(value.serialize() + b"--\nabc\n").whitelist
    assert parsed == value
    assert not value.is_expired(created)
    assert value.is_expired(created + dt.timedelta(days=days, hours=1))
