"""Tests of the xor32 chunker: equivalence with a literal per-byte model of spec §1.5 and the
fixture's known cut points and chunk objects."""

from __future__ import annotations

import hashlib
import io
import random
import zlib

import numpy as np
import pytest

from cvmfs.chunking import (
    DEFAULT_PARAMS,
    Chunk,
    ChunkingParams,
    _cut_mask,
    cut_points,
    is_cut_value,
    iter_chunks,
)
from cvmfs.errors import CvmfsError
from tests.shared_paths import GOLDEN

FIXTURE = GOLDEN
M32 = 0xFFFFFFFF


# -- a literal, per-byte transcription of spec §1.5, written independently of the library ------


def _c_style_cut(x: int, threshold: int) -> bool:
    """abs(static_cast<int32_t>(x) - 0x7FFFFFFF) < threshold, in wrapping 32-bit arithmetic."""
    signed = x - (1 << 32) if x & 0x80000000 else x
    difference = signed - 0x7FFFFFFF
    difference = (difference + (1 << 31)) % (1 << 32) - (1 << 31)  # wrap into int32
    magnitude = -difference if difference < 0 else difference
    if magnitude == 1 << 31:  # abs(INT32_MIN) overflows back to INT32_MIN
        magnitude = -(1 << 31)
    return magnitude < threshold


def reference_cut_points(data: bytes, min_size: int, avg_size: int, max_size: int) -> list[int]:
    threshold = M32 // avg_size
    cuts: list[int] = []
    last = 0
    while True:
        x = 0
        position = last + min_size - 32
        while position < last + min_size and position < len(data):  # warm-up, no cut checks
            x = ((x << 1) ^ data[position]) & M32
            position += 1
        cut = None
        while position < last + max_size and position < len(data):
            x = ((x << 1) ^ data[position]) & M32
            if _c_style_cut(x, threshold):
                cut = position
                break
            position += 1
        if cut is None and position == last + max_size:
            cut = last + max_size  # hard cut
        if cut is None or cut >= len(data):
            return cuts
        cuts.append(cut)
        last = cut


# -- helpers -------------------------------------------------------------------------------------


class ShortReads(io.RawIOBase):
    """A real byte stream that returns at most `limit` bytes per read, like a pipe or socket."""

    def __init__(self, data: bytes, limit: int) -> None:
        self._data = memoryview(data)
        self._position = 0
        self._limit = limit
        self.bytes_read = 0

    def readable(self) -> bool:
        return True

    def read(self, size: int = -1) -> bytes:
        if size < 0:
            size = len(self._data)
        size = min(size, self._limit, len(self._data) - self._position)
        piece = bytes(self._data[self._position : self._position + size])
        self._position += size
        self.bytes_read += size
        return piece


def _mixed_data(rng: random.Random, size: int) -> bytes:
    """Random runs of random bytes, zeros, 0x01 (a cut everywhere), 0xff and short patterns."""
    parts: list[bytes] = []
    total = 0
    while total < size:
        length = rng.randint(1, 400)
        kind = rng.randrange(5)
        if kind == 0:
            part = rng.randbytes(length)
        elif kind == 1:
            part = bytes(length)
        elif kind == 2:
            part = b"\x01" * length
        elif kind == 3:
            part = b"\xff" * length
        else:
            part = (rng.randbytes(rng.randint(1, 5)) * length)[:length]
        parts.append(part)
        total += length
    return b"".join(parts)[:size]


def prng(seed: bytes, size: int) -> bytes:
    """The fixture README's SHA-256 counter-mode generator."""
    out = bytearray()
    counter = 0
    while len(out) < size:
        out += hashlib.sha256(seed + counter.to_bytes(8, "big")).digest()
        counter += 1
    return bytes(out[:size])


def big_chunked_bin() -> bytes:
    """`data/big-chunked.bin` regenerated from the fixture README recipe."""
    size = 12587233
    blocks: list[bytes] = []
    total = 0
    block_number = 0
    while total < size:
        text = bytearray()
        line = 0
        while len(text) < 57344:
            text += (
                b"golden.example.org big-chunked.bin block %06d line %04d "
                b"abcdefghijklmnopqrstuvwxyz\n" % (block_number, line)
            )
            line += 1
        block = prng(b"golden/big-chunked/block-%d" % block_number, 8192) + bytes(text[:57344])
        blocks.append(block)
        total += len(block)
        block_number += 1
    data = bytearray(b"".join(blocks)[:size])
    marker = bytearray(32)
    marker[7] = 0x7F
    marker[15] = marker[23] = marker[31] = 0xFF
    data[5243880 : 5243880 + 32] = marker
    data[9569033 : 9569033 + 32] = marker
    return bytes(data)


# -- the cut predicate ---------------------------------------------------------------------------


@pytest.mark.parametrize("avg_size", [48, 64, 100, 1000, 4096, DEFAULT_PARAMS.avg_size, 3 << 30])
def test_cut_predicate_matches_the_c_model_at_every_boundary(avg_size: int) -> None:
    threshold = M32 // avg_size
    probes = {0, 1, M32, M32 - 1, 1 << 31, (1 << 31) - 1, 0x7FFFFFFF, 0x80000001}
    for centre in ((1 << 31) - threshold, (1 << 31) + threshold - 2, 0x7FFFFFFF, 0x80000000):
        probes.update((centre + delta) & M32 for delta in range(-3, 4))
    rng = random.Random(avg_size)
    probes.update(rng.getrandbits(32) for _ in range(2000))
    values = sorted(probes)
    expected = [_c_style_cut(x, threshold) for x in values]
    assert [is_cut_value(x, threshold) for x in values] == expected
    vectorised = _cut_mask(np.array(values, dtype=np.uint32), threshold)
    assert vectorised.tolist() == expected
    assert is_cut_value(M32, threshold)  # abs(INT32_MIN) stays negative: a cut
    assert is_cut_value(0x7FFFFFFF, threshold)  # exactly the magic number


def test_default_threshold_is_511() -> None:
    assert DEFAULT_PARAMS.threshold == 511  # spec §1.5


# -- equivalence with the per-byte model -----------------------------------------------------------


@pytest.mark.parametrize("seed", range(12))
def test_chunker_equals_the_per_byte_model_on_random_data(seed: int) -> None:
    rng = random.Random(seed)
    min_size = rng.randint(32, 200)
    avg_size = min_size + rng.randint(1, 300)
    max_size = avg_size + rng.randint(1, 400)
    data = _mixed_data(rng, rng.randint(0, 20000)) if seed % 2 else rng.randbytes(20000)
    params = ChunkingParams(min_size, avg_size, max_size)
    expected = reference_cut_points(data, min_size, avg_size, max_size)
    block_size = rng.choice([1, 7, 64, 1000, 1 << 20])
    stream = ShortReads(data, limit=rng.randint(1, 5000))
    chunks = list(iter_chunks(stream, params, block_size=block_size))
    assert [c.offset for c in chunks][1:] == expected
    assert b"".join(c.data for c in chunks) == data
    assert [c.last for c in chunks] == [False] * (len(chunks) - 1) + [True]
    assert all(c.size <= max_size for c in chunks)
    assert all(c.size >= min_size for c in chunks[:-1])
    assert cut_points(data, params) == expected


def test_hard_cuts_at_max_when_no_candidate_exists() -> None:
    # All-zero data has x == 0 everywhere: never a cut candidate, so only hard cuts happen.
    params = ChunkingParams(64, 128, 256)
    data = bytes(1000)
    assert cut_points(data, params) == [256, 512, 768]
    assert reference_cut_points(data, 64, 128, 256) == [256, 512, 768]


def test_every_position_is_a_candidate_so_cuts_fall_exactly_at_min() -> None:
    # 0x01 bytes give x == 0xFFFFFFFF: int32 -1 minus MAGIC wraps to INT32_MIN, a cut.
    params = ChunkingParams(64, 128, 256)
    data = b"\x01" * 300
    assert cut_points(data, params) == [64, 128, 192, 256]


def test_a_file_ending_exactly_at_a_hard_cut_has_no_empty_tail() -> None:
    params = ChunkingParams(64, 128, 256)
    chunks = list(iter_chunks(io.BytesIO(bytes(512)), params))
    assert [(c.offset, c.size, c.last) for c in chunks] == [(0, 256, False), (256, 256, True)]


@pytest.mark.parametrize("size", [0, 1, 64, 65, 200])
def test_small_or_uncut_files_are_a_sole_piece(size: int) -> None:
    params = ChunkingParams(64, 128, 256)
    data = bytes(size)  # zeros never cut before max
    chunks = list(iter_chunks(io.BytesIO(data), params))
    assert chunks == [Chunk(0, data, last=True)]


@pytest.mark.parametrize(
    ("min_size", "avg_size", "max_size"), [(31, 64, 128), (64, 64, 128), (64, 128, 128)]
)
def test_invalid_sizes_are_refused(min_size: int, avg_size: int, max_size: int) -> None:
    with pytest.raises(CvmfsError, match="min < avg < max"):
        ChunkingParams(min_size, avg_size, max_size)


def test_memory_is_bounded_by_max_chunk_plus_blocks() -> None:
    params = ChunkingParams(1000, 2000, 4000)
    data = bytes(100_000)  # only hard cuts: the reader must never run far ahead
    stream = ShortReads(data, limit=10**9)
    consumed = 0
    for chunk in iter_chunks(stream, params, block_size=500):
        consumed += chunk.size
        assert stream.bytes_read - consumed <= params.max_size + 2 * 500
    assert consumed == len(data)


# -- the golden fixture ----------------------------------------------------------------------------


@pytest.fixture(scope="module")
def big_chunked() -> bytes:
    data = big_chunked_bin()
    assert (
        hashlib.sha256(data).hexdigest()
        == "115bc2139707c4586fcf56c16bc2bebb46eea85a50e201f33634c71c3ecb523d"
    )
    return data


def test_fixture_big_chunked_cuts_where_the_stock_publisher_did(big_chunked: bytes) -> None:
    chunks = list(iter_chunks(io.BytesIO(big_chunked)))
    assert [(c.offset, c.size) for c in chunks] == [
        (0, 5243911),
        (5243911, 4325153),
        (9569064, 3018169),
    ]
    names = [hashlib.sha1(zlib.compress(c.data)).hexdigest() for c in chunks]
    assert names == [
        "090d8d57cb02074e09b814ba17c4247a83c9c212",
        "d8ce481831d04ee3ee6c2e8084d87bb3a53deed5",
        "0b1daaa22ba0664ba21d41bcaa6bf9ea685a5f4c",
    ]
    for name in names:  # the stock publisher stored exactly these chunk objects
        stored = FIXTURE / "stratum0" / "data" / name[:2] / f"{name[2:]}P"
        assert hashlib.sha1(stored.read_bytes()).hexdigest() == name


def test_fixture_random_file_is_not_chunked() -> None:
    data = prng(b"golden/random-1MiB", 1048576)
    assert [c.size for c in iter_chunks(io.BytesIO(data))] == [1048576]
