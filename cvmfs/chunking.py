"""Content-defined chunking of large files with the xor32 rolling hash of the stock publisher.

Reproduces the cut points of `cvmfs_server publish` byte for byte (spec §1.5), streaming.
"""

from __future__ import annotations

import io
from collections.abc import Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING, Protocol

from cvmfs.errors import CvmfsError

if TYPE_CHECKING:
    import numpy as np

MIB = 1024 * 1024
# Spec §1.5: CVMFS_MIN/AVG/MAX_CHUNK_SIZE defaults.
DEFAULT_MIN_SIZE = 4 * MIB
DEFAULT_AVG_SIZE = 8 * MIB
DEFAULT_MAX_SIZE = 16 * MIB
XOR32_WINDOW = 32  # spec §1.5: x depends only on the last 32 bytes fed
_MAGIC = 0x7FFFFFFF  # spec §1.5: UINT32_MAX / 2
_UINT32_MAX = 0xFFFFFFFF
# Positions examined per vectorised step: small enough that an early cut wastes little work,
# large enough that numpy's per-call overhead vanishes.
_SCAN_BLOCK = 1 * MIB


@dataclass(frozen=True)
class ChunkingParams:
    """Minimum, average and maximum chunk size in bytes (spec §1.5 sanity rules enforced)."""

    min_size: int = DEFAULT_MIN_SIZE
    avg_size: int = DEFAULT_AVG_SIZE
    max_size: int = DEFAULT_MAX_SIZE

    def __post_init__(self) -> None:
        if not (XOR32_WINDOW <= self.min_size < self.avg_size < self.max_size):
            raise CvmfsError(
                f"invalid chunk sizes min={self.min_size} avg={self.avg_size} "
                f"max={self.max_size}: need {XOR32_WINDOW} <= min < avg < max (spec §1.5)"
            )

    @property
    def threshold(self) -> int:
        """`UINT32_MAX // avg`: the half-width of the cut interval around the magic number."""
        return _UINT32_MAX // self.avg_size


DEFAULT_PARAMS = ChunkingParams()


class ReadableStream(Protocol):
    """Anything with a blocking `read(size)` returning b"" at the end (file, pipe, tar member)."""

    def read(self, size: int, /) -> bytes: ...


@dataclass(frozen=True)
class Chunk:
    """One piece of a file: its offset, its bytes, and whether it is the file's last piece.

    A file that yields a single piece (`offset == 0 and last`) is not chunked (spec §1.5 step 3):
    that piece is stored as the whole-file object.
    """

    offset: int
    data: bytes
    last: bool

    @property
    def size(self) -> int:
        return len(self.data)


def is_cut_value(x: int, threshold: int) -> bool:
    """The upstream test `abs(int32(x) - MAGIC) < threshold` with 32-bit wrap-around (§1.5).

    The subtraction wraps modulo 2**32 and `abs(INT32_MIN)` stays negative, so it counts as a cut.
    """
    d = (x - _MAGIC) & _UINT32_MAX
    if d >= 1 << 31:
        d -= 1 << 32
    return (d if d == -(1 << 31) else abs(d)) < threshold


def _cut_mask(x: np.ndarray, threshold: int) -> np.ndarray:
    """Vectorised `is_cut_value`: for threshold < 2**31 the cut set is the interval
    [2**31 - threshold, 2**31 + threshold - 2] plus 0xFFFFFFFF (where abs(INT32_MIN) < 0)."""
    import numpy as np

    low = np.uint32((1 << 31) - threshold)
    width = np.uint32(2 * threshold - 1)
    with np.errstate(over="ignore"):
        inside = (x - low) < width
    result: np.ndarray = inside | (x == np.uint32(_UINT32_MAX))
    return result


def _xor32_values(window: memoryview) -> np.ndarray:
    """x at every position p >= 31 of `window`, from the 32 bytes ending at p (index p - 31).

    x_p = XOR_{j<32} (b[p-j] << j) mod 2**32, built by doubling the span: 5 shift-xor passes
    instead of 32 per-byte updates.
    """
    import numpy as np

    y = np.frombuffer(window, dtype=np.uint8).astype(np.uint32)
    for span in (1, 2, 4, 8, 16):
        y = y[span:] ^ (y[:-span] << np.uint32(span))
    return y


def _first_cut(buffer: bytearray, start: int, end: int, threshold: int) -> int | None:
    """First position p in [start, end) of `buffer` whose xor32 value triggers a cut."""
    import numpy as np  # only files above the minimum chunk size are scanned

    view = memoryview(buffer)[start - (XOR32_WINDOW - 1) : end]
    try:
        hits = np.flatnonzero(_cut_mask(_xor32_values(view), threshold))
    finally:
        view.release()  # a live export would forbid resizing the bytearray
    if hits.size == 0:
        return None
    return start + int(hits[0])


def _read_into(stream: ReadableStream, buffer: bytearray, wanted: int, read_size: int) -> bool:
    """Read until `buffer` holds `wanted` bytes; False once the stream is exhausted.

    Reads at most `read_size` bytes at a time so the transient copy stays one block.
    """
    while len(buffer) < wanted:
        data = stream.read(min(read_size, wanted - len(buffer)))
        if not data:
            return False
        buffer += data
    return True


def iter_chunks(
    stream: ReadableStream,
    params: ChunkingParams = DEFAULT_PARAMS,
    *,
    block_size: int = _SCAN_BLOCK,
) -> Iterator[Chunk]:
    """Cut a binary stream into chunks exactly as the stock publisher does (spec §1.5).

    Memory stays bounded by about `max_size` plus two blocks of `block_size` bytes (the unit of
    reading and of vectorised scanning). An empty stream yields one empty piece. A cut at `p`
    puts byte `p` (the one that triggered the cut) into the next chunk.
    """
    if block_size < 1:
        raise CvmfsError(f"block_size must be positive, got {block_size}")
    buffer = bytearray()
    offset = 0
    exhausted = False
    while True:
        cut: int | None = None
        scan_from = params.min_size
        while cut is None and scan_from < params.max_size:
            scan_to = min(scan_from + block_size, params.max_size)
            if not exhausted:
                exhausted = not _read_into(stream, buffer, scan_to, block_size)
            scan_to = min(scan_to, len(buffer))
            if scan_from >= scan_to:
                break  # end of stream before a cut: the rest is the final piece
            cut = _first_cut(buffer, scan_from, scan_to, params.threshold)
            scan_from = scan_to
        if cut is None and scan_from >= params.max_size:
            cut = params.max_size  # hard cut (spec §1.5)
        if cut is None:  # the stream ended inside the search window
            yield Chunk(offset, bytes(buffer), last=True)
            return
        with memoryview(buffer) as view:
            piece = bytes(view[:cut])  # one copy; the view is released before the resize
        del buffer[:cut]
        if not buffer and not exhausted:
            exhausted = not _read_into(stream, buffer, 1, block_size)
        last = not buffer and exhausted
        yield Chunk(offset, piece, last=last)
        if last:
            return
        offset += cut


def cut_points(data: bytes, params: ChunkingParams = DEFAULT_PARAMS) -> list[int]:
    """Offsets where chunks start after the first (empty list: the data is not chunked)."""
    return [chunk.offset for chunk in iter_chunks(io.BytesIO(data), params)][1:]
