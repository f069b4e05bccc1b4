"""Deflate implementations for objects: stock zlib, or ISA-L's faster zlib streams.

Both write standard zlib streams (RFC 1950) that every CVMFS client inflates; only the bytes
differ, hence the object names. Measured on the benchmark tree (bench/README.md, "Fast mode").
Content objects use the repository's choice; catalogs always use ISA-L (`CATALOG_COMPRESSION`).
"""

from __future__ import annotations

import enum
import json
import zlib
from collections.abc import Callable
from typing import Any, Protocol

from cvmfs.errors import CvmfsError

STOCK_ZLIB_LEVEL = 6  # zlib's default: what `cvmfs_server` writes (spec §1.4)
# ISA-L level 3 (its highest): 2.44x on the benchmark tree against 2.58x for zlib level 6, at
# 449 MB/s per core instead of 43 (level 1: 2.32x, 702 MB/s). The 5 % of storage buys most of
# the speed; level 1 would shave only ~1 CPU s per GiB more.
ISAL_LEVEL = 3
# Where a repository records its choice: the `custom` object of its meta-info JSON (the place
# upstream's meta-info template keeps for site data), so every writer that opens it agrees.
METAINFO_CUSTOM = "custom"
METAINFO_COMPRESSION = "compression"


class Compression(enum.StrEnum):
    """How content objects are deflated (always a zlib stream)."""

    ZLIB = "zlib"  # stdlib zlib level 6: byte-identical to the stock publisher's objects
    ISAL = "isal"  # python-isal level 3: ~10x faster, ~5 % larger, object names differ


# Catalogs are SQLite files full of hashes: ISA-L deflates a 100,000-row catalog (15.7 MB) to
# the same size as zlib level 6 (2.12x against 2.13x) in a sixth of the CPU (0.036 s against
# 0.228 s), and that catalog is rewritten by every publish that touches it (bench/README.md,
# "Publish one changed file"). A catalog's bytes never match another publisher's anyway (they
# carry the revision and timestamps), so no deduplication is lost; every client inflates them.
CATALOG_COMPRESSION = Compression.ISAL


class Deflater(Protocol):
    def compress(self, data: bytes, /) -> bytes: ...

    def flush(self, mode: int = ..., /) -> bytes: ...


def compress_function(compression: Compression) -> Callable[[bytes], bytes]:
    """One-shot compression of a whole object (both release the GIL while they work)."""
    if compression is Compression.ZLIB:
        return _zlib_compress
    isal_zlib = _isal_zlib()
    return lambda data: isal_zlib.compress(data, ISAL_LEVEL)


def compressobj(compression: Compression) -> Deflater:
    """A streaming compressor writing the same stream as `compress_function`."""
    if compression is Compression.ZLIB:
        return zlib.compressobj(STOCK_ZLIB_LEVEL)
    compressor: Deflater = _isal_zlib().compressobj(ISAL_LEVEL)
    return compressor


class Inflater(Protocol):
    eof: bool
    unused_data: bytes

    def decompress(self, data: bytes, /) -> bytes: ...


def inflater() -> Inflater:
    """A streaming inflater for any zlib stream, whoever deflated it: ISA-L's, which inflates a
    15.7 MB catalog in 19 ms where zlib takes 39 ms (every transaction opens the catalogs it
    changes, every reader the ones it walks). Errors: `inflate_errors()`."""
    decompressor: Inflater = _isal_zlib().decompressobj()
    return decompressor


def inflate_errors() -> tuple[type[Exception], ...]:
    """What `inflater()` raises on a corrupt stream."""
    return (zlib.error, _isal_zlib().error)


def _zlib_compress(data: bytes) -> bytes:
    return zlib.compress(data, STOCK_ZLIB_LEVEL)


def _isal_zlib() -> Any:
    # Imported on first use: stock-mode publishes never load it.
    from isal import isal_zlib

    return isal_zlib


def compression_from_metainfo(text: bytes | None) -> Compression:
    """The compression a repository's meta info asks for (stock zlib when it says nothing)."""
    if not text:
        return Compression.ZLIB
    try:
        info = json.loads(text)
    except ValueError:
        return Compression.ZLIB  # free-form meta info written by other tools
    custom = info.get(METAINFO_CUSTOM) if isinstance(info, dict) else None
    value = custom.get(METAINFO_COMPRESSION) if isinstance(custom, dict) else None
    if value is None:
        return Compression.ZLIB
    try:
        return Compression(value)
    except ValueError:
        raise CvmfsError(
            f"the repository's meta info asks for compression {value!r}; this writer knows "
            f"{', '.join(c.value for c in Compression)}: upgrade it or fix the meta info"
        ) from None


def metainfo_with_compression(
    meta_info: dict[str, Any] | None, compression: Compression
) -> dict[str, Any]:
    """`meta_info` with the compression recorded in its `custom` object."""
    info = dict(meta_info or {})
    custom = dict(info.get(METAINFO_CUSTOM) or {})
    custom[METAINFO_COMPRESSION] = compression.value
    info[METAINFO_CUSTOM] = custom
    return info
