"""Content-addressed objects: hash algorithms, `ContentHash`, object names and zlib streams.

The hash of an object is always over the bytes as stored (compressed for zlib objects, spec §1.4).
"""

from __future__ import annotations

import enum
import hashlib
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from typing import Protocol

from cvmfs._ripemd160 import Ripemd160
from cvmfs.codecs import Compression, compress_function, compressobj, inflate_errors, inflater
from cvmfs.errors import FormatError, IntegrityError

ZLIB_EMPTY = b"\x78\x9c\x03\x00\x00\x00\x00\x01"  # spec §1.4 test vector: zlib of b""
EMPTY_FILE_SHA1 = "e8ec3d88b62ebf526e4e5a4ff6162a3aa48a6b78"  # spec §1.4


class HashAlgorithm(enum.Enum):
    """Content hash algorithms (spec §1.2); the value is the configuration name."""

    SHA1 = "sha1"
    RMD160 = "rmd160"
    SHAKE128 = "shake128"

    @property
    def id_suffix(self) -> str:
        """The algorithm id appended to hex strings: '' for SHA-1 (spec §1.2)."""
        return "" if self is HashAlgorithm.SHA1 else f"-{self.value}"

    @property
    def flags_value(self) -> int:
        """Value stored in catalog flag bits 8-10: algorithm enum - 1 (spec §2.6)."""
        return {HashAlgorithm.SHA1: 0, HashAlgorithm.RMD160: 1, HashAlgorithm.SHAKE128: 2}[self]

    @classmethod
    def from_flags_value(cls, value: int) -> HashAlgorithm:
        for algorithm in cls:
            if algorithm.flags_value == value:
                return algorithm
        raise FormatError(f"unknown hash algorithm {value} in catalog flags (spec §2.6)")

    @classmethod
    def from_name(cls, name: str) -> HashAlgorithm:
        try:
            return cls(name.lower())
        except ValueError:
            raise FormatError(
                f"unknown hash algorithm {name!r}: use sha1, rmd160 or shake128"
            ) from None


DIGEST_SIZE = 20  # every content algorithm yields 20 bytes (spec §1.2)
_HEX_LENGTHS = {  # spec §1.2: the algorithm is inferred from the hex string length
    40: HashAlgorithm.SHA1,
    40 + len("-rmd160"): HashAlgorithm.RMD160,
    40 + len("-shake128"): HashAlgorithm.SHAKE128,
}


class Hasher(Protocol):
    def update(self, data: bytes, /) -> None: ...

    def digest(self) -> bytes: ...


class _Shake128Hasher:
    """SHAKE-128 squeezed to 160 bits (spec §1.2)."""

    def __init__(self) -> None:
        self._inner = hashlib.shake_128()

    def update(self, data: bytes, /) -> None:
        self._inner.update(data)

    def digest(self) -> bytes:
        return self._inner.digest(DIGEST_SIZE)


def new_hasher(algorithm: HashAlgorithm) -> Hasher:
    """A fresh incremental hasher for `algorithm` (RIPEMD-160 falls back to pure Python)."""
    if algorithm is HashAlgorithm.SHA1:
        return hashlib.sha1()
    if algorithm is HashAlgorithm.SHAKE128:
        return _Shake128Hasher()
    try:
        return hashlib.new("ripemd160")
    except ValueError:
        return Ripemd160()


class ObjectSuffix(enum.StrEnum):
    """Type suffix of an object name (spec §1.3)."""

    FILE = ""
    PARTIAL = "P"
    CATALOG = "C"
    HISTORY = "H"
    CERTIFICATE = "X"
    METAINFO = "M"


@dataclass(frozen=True, slots=True)
class ContentHash:
    """A content hash: raw digest plus its algorithm; `hex` carries the algorithm id."""

    digest: bytes
    algorithm: HashAlgorithm = HashAlgorithm.SHA1

    def __post_init__(self) -> None:
        if len(self.digest) != DIGEST_SIZE:
            raise FormatError(f"a content hash has {DIGEST_SIZE} bytes, got {len(self.digest)}")

    @property
    def hex(self) -> str:
        """Lower-case hex with the algorithm id, no type suffix (manifest/catalog form)."""
        return self.digest.hex() + self.algorithm.id_suffix

    def __str__(self) -> str:
        return self.hex

    @classmethod
    def from_hex(cls, text: str) -> ContentHash:
        """Parse `<hex>[-rmd160|-shake128]`; the algorithm follows from the length (spec §1.2)."""
        algorithm = _HEX_LENGTHS.get(len(text))
        if algorithm is None or not text.endswith(algorithm.id_suffix):
            raise FormatError(f"not a content hash: {text!r}")
        try:
            digest = bytes.fromhex(text[:40])
        except ValueError:
            raise FormatError(f"not a content hash: {text!r}") from None
        if text[:40] != text[:40].lower():
            raise FormatError(f"content hash must be lower-case hex: {text!r}")
        return cls(digest, algorithm)

    def object_key(self, suffix: ObjectSuffix | str = ObjectSuffix.FILE) -> str:
        return object_path(self, suffix)


def object_path(content_hash: ContentHash, suffix: ObjectSuffix | str = ObjectSuffix.FILE) -> str:
    """Storage key `data/<2 hex>/<rest><algorithm id><suffix>` (spec §1.3)."""
    text = content_hash.hex
    return f"data/{text[:2]}/{text[2:]}{suffix}"


def hash_bytes(data: bytes, algorithm: HashAlgorithm = HashAlgorithm.SHA1) -> ContentHash:
    hasher = new_hasher(algorithm)
    hasher.update(data)
    return ContentHash(hasher.digest(), algorithm)


def hex_hash_text(data: bytes, algorithm: HashAlgorithm = HashAlgorithm.SHA1) -> str:
    """Hex hash with algorithm id, as in manifest/whitelist signature lines (spec §3.2, §3.3)."""
    return hash_bytes(data, algorithm).hex


def compress(data: bytes, compression: Compression = Compression.ZLIB) -> bytes:
    """zlib stream; by default at the level the stock publisher writes (spec §1.4)."""
    return compress_function(compression)(data)


def compress_and_hash(
    data: bytes,
    algorithm: HashAlgorithm = HashAlgorithm.SHA1,
    compression: Compression = Compression.ZLIB,
) -> tuple[bytes, ContentHash]:
    """The stored bytes of an object and their hash (compress, then hash: spec §1.4)."""
    stored = compress(data, compression)
    return stored, hash_bytes(stored, algorithm)


class ObjectEncoder:
    """Streaming compress-then-hash of one object: feed plain bytes, get stored bytes back."""

    def __init__(
        self,
        algorithm: HashAlgorithm = HashAlgorithm.SHA1,
        *,
        compressed: bool = True,
        compression: Compression = Compression.ZLIB,
    ) -> None:
        self.algorithm = algorithm
        self._compressor = compressobj(compression) if compressed else None
        self._hasher = new_hasher(algorithm)
        self.plain_size = 0
        self.stored_size = 0
        self._hash: ContentHash | None = None

    def update(self, data: bytes) -> bytes:
        if self._hash is not None:
            raise RuntimeError("ObjectEncoder.update after finish")
        self.plain_size += len(data)
        out = self._compressor.compress(data) if self._compressor else bytes(data)
        self._account(out)
        return out

    def finish(self) -> bytes:
        out = self._compressor.flush() if self._compressor else b""
        self._account(out)
        self._hash = ContentHash(self._hasher.digest(), self.algorithm)
        return out

    def _account(self, out: bytes) -> None:
        if out:
            self._hasher.update(out)
            self.stored_size += len(out)

    @property
    def content_hash(self) -> ContentHash:
        if self._hash is None:
            raise RuntimeError("ObjectEncoder.content_hash before finish")
        return self._hash


class VerifyingDecoder:
    """Streaming inflate of a stored object that also checks its hash and inflated size.

    Inflated bytes are handed out before the end of the object is seen; `finish()` raises
    `IntegrityError` if the hash, the zlib stream or the expected size is wrong, so a consumer
    that needs all-or-nothing must buffer until `finish()` returns.
    """

    def __init__(
        self,
        expected: ContentHash,
        *,
        compressed: bool = True,
        expected_size: int | None = None,
        what: str = "object",
    ) -> None:
        self.expected = expected
        self.expected_size = expected_size
        self.what = what
        self._hasher = new_hasher(expected.algorithm)
        self._decompressor = inflater() if compressed else None
        self.plain_size = 0
        self.stored_size = 0

    def update(self, stored: bytes) -> bytes:
        self._hasher.update(stored)
        self.stored_size += len(stored)
        if self._decompressor is None:
            out = bytes(stored)
        else:
            if self._decompressor.eof and stored:
                raise IntegrityError(f"{self.what}: trailing bytes after the zlib stream")
            try:
                out = self._decompressor.decompress(stored)
            except inflate_errors() as exc:
                raise IntegrityError(f"{self.what}: corrupt zlib stream ({exc})") from exc
        self.plain_size += len(out)
        if self.expected_size is not None and self.plain_size > self.expected_size:
            raise IntegrityError(
                f"{self.what}: inflates to more than the recorded {self.expected_size} bytes"
            )
        return out

    def finish(self) -> None:
        actual = ContentHash(self._hasher.digest(), self.expected.algorithm)
        if actual != self.expected:
            raise IntegrityError(
                f"{self.what}: content hash {actual.hex} does not match its name "
                f"{self.expected.hex}; the stored object is corrupt, restore it from a replica"
            )
        if self._decompressor is not None and not self._decompressor.eof:
            raise IntegrityError(f"{self.what}: truncated zlib stream")
        if self._decompressor is not None and self._decompressor.unused_data:
            raise IntegrityError(f"{self.what}: trailing bytes after the zlib stream")
        if self.expected_size is not None and self.plain_size != self.expected_size:
            raise IntegrityError(
                f"{self.what}: inflates to {self.plain_size} bytes, "
                f"the catalog records {self.expected_size}"
            )


def decode_verified(
    stored: bytes,
    expected: ContentHash,
    *,
    compressed: bool = True,
    expected_size: int | None = None,
    what: str = "object",
) -> bytes:
    """Check the hash of a whole stored object, then inflate it."""
    decoder = VerifyingDecoder(
        expected, compressed=compressed, expected_size=expected_size, what=what
    )
    # Hash first so a corrupt object is reported as a hash mismatch, not a zlib error.
    actual = hash_bytes(stored, expected.algorithm)
    if actual != expected:
        raise IntegrityError(
            f"{what}: content hash {actual.hex} does not match its name {expected.hex}; "
            "the stored object is corrupt, restore it from a replica"
        )
    out = decoder.update(stored)
    decoder.finish()
    return out


def iter_decode_verified(
    stored_pieces: Iterable[bytes],
    expected: ContentHash,
    *,
    compressed: bool = True,
    expected_size: int | None = None,
    what: str = "object",
) -> Iterator[bytes]:
    """Inflate a stream of stored bytes; raises `IntegrityError` at the end if it is corrupt."""
    decoder = VerifyingDecoder(
        expected, compressed=compressed, expected_size=expected_size, what=what
    )
    for piece in stored_pieces:
        out = decoder.update(piece)
        if out:
            yield out
    decoder.finish()
