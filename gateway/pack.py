"""Object packs, the payload format of the gateway protocol: parse them from a stream.

Format (upstream cvmfs/pack.cc, ObjectPackProducer/ObjectPackConsumer): a header
`V2\\nS<sum of object sizes>\\nN<object count>\\n--\\n` followed by one line per object,
`C <hash><suffix> <size>\\n` for a content-addressed object (`N <hash> <size> <base64url name>`
for a named file), then the objects' bytes back to back in header order. The payload digest the
publisher sends is the hex SHA-1 of the header bytes alone. An object's bytes are what the
stratum-0 stores (compressed, spec §1.4), so they must hash to the object's name.
"""

from __future__ import annotations

import hashlib
import hmac
import tempfile
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import BinaryIO, Protocol

from cvmfs.errors import FormatError
from cvmfs.objects import ContentHash, ObjectSuffix, new_hasher, object_path
from gateway.errors import GatewayError

PACK_VERSION = "2"
# ObjectPackConsumer refuses headers above 100 bytes per object of kMaxObjects (100,000).
MAX_HEADER_BYTES = 100 * 100_000
READ_BLOCK = 1 << 20
# Objects up to this size are verified in memory; larger ones spool to a temporary file.
IN_MEMORY_OBJECT_BYTES = 8 << 20
_SUFFIXES = {s.value for s in ObjectSuffix if s.value}


class Readable(Protocol):
    def read(self, size: int = -1, /) -> bytes: ...


class PackError(GatewayError):
    """The payload is not a well-formed object pack or does not match what it declares."""


@dataclass(frozen=True)
class PackEntry:
    content_hash: ContentHash
    suffix: str
    size: int

    @property
    def object_key(self) -> str:
        return object_path(self.content_hash, self.suffix)

    @property
    def name(self) -> str:
        return self.content_hash.hex + self.suffix


def parse_object_name(text: str) -> tuple[ContentHash, str]:
    """`<hex>[-rmd160|-shake128][suffix]` as shash::Any::ToString(true) writes it."""
    suffix = ""
    if text and text[-1] in _SUFFIXES:
        text, suffix = text[:-1], text[-1]
    try:
        return ContentHash.from_hex(text), suffix
    except FormatError:
        raise PackError(f"object pack: {text[:80]!r} is not an object name") from None


def _number(value: str, what: str) -> int:
    if not value.isdigit():
        raise PackError(f"object pack header: {what} {value[:40]!r} is not a number")
    return int(value)


def parse_header(raw: bytes) -> list[PackEntry]:
    """The entries of a pack header; sizes must add up to S and count N entries."""
    try:
        text = raw.decode("ascii")
    except UnicodeDecodeError:
        raise PackError("object pack header is not ASCII") from None
    head, separator, index = text.partition("--\n")
    if not separator:
        raise PackError("object pack header has no '--' line")
    fields: dict[str, str] = {}
    for line in head.split("\n"):
        if line:
            fields[line[0]] = line[1:]
    if fields.get("V") != PACK_VERSION:
        raise PackError(f"object pack version {fields.get('V')!r} is not supported (2 is)")
    total = _number(fields.get("S", ""), "total size")
    count = _number(fields.get("N", ""), "object count")
    entries: list[PackEntry] = []
    lines = index.split("\n")
    if lines[-1] != "":
        raise PackError("object pack header does not end with a newline")
    for line in lines[:-1]:
        parts = line.split(" ")
        if parts[0] == "N":
            raise PackError(
                "object pack: named objects are not accepted by this gateway (only "
                "content-addressed 'C' objects, which the stock publisher sends)"
            )
        if parts[0] != "C" or len(parts) != 3:
            raise PackError(f"object pack header: bad line {line[:120]!r}")
        content_hash, suffix = parse_object_name(parts[1])
        entries.append(PackEntry(content_hash, suffix, _number(parts[2], "object size")))
    if len(entries) != count or sum(e.size for e in entries) != total:
        raise PackError(
            f"object pack header declares {count} objects of {total} bytes but lists "
            f"{len(entries)} of {sum(e.size for e in entries)}"
        )
    return entries


@dataclass(frozen=True)
class VerifiedObject:
    entry: PackEntry
    data: bytes | BinaryIO  # bytes, or a temporary file positioned at 0 (closed by the caller)


def _read_exactly(stream: Readable, size: int, what: str) -> Iterator[bytes]:
    left = size
    while left:
        block = stream.read(min(left, READ_BLOCK))
        if not block:
            raise PackError(f"object pack is truncated: {left} bytes of {what} are missing")
        left -= len(block)
        yield block


def read_pack(
    stream: Readable,
    *,
    payload_digest: str,
    header_size: int,
    on_object: Callable[[VerifiedObject], None],
) -> list[PackEntry]:
    """Read a pack from `stream`: check the header digest, then each object's hash, calling
    `on_object` for every object only after its bytes verified. Memory stays bounded: large
    objects pass through a temporary file."""
    if not 0 < header_size <= MAX_HEADER_BYTES:
        raise PackError(f"object pack header size {header_size} is out of range")
    raw = b"".join(_read_exactly(stream, header_size, "the pack header"))
    digest = hashlib.sha1(raw).hexdigest()
    if not hmac.compare_digest(digest, payload_digest.lower()):
        raise PackError("payload digest mismatch: the pack header does not hash to payload_digest")
    entries = parse_header(raw)
    for entry in entries:
        hasher = new_hasher(entry.content_hash.algorithm)
        what = f"object {entry.name}"
        if entry.size <= IN_MEMORY_OBJECT_BYTES:
            data = b"".join(_read_exactly(stream, entry.size, what))
            hasher.update(data)
            _check(entry, hasher.digest())
            on_object(VerifiedObject(entry, data))
            continue
        with tempfile.TemporaryFile(prefix="cvmfs-gateway-object-") as spool:
            for block in _read_exactly(stream, entry.size, what):
                hasher.update(block)
                spool.write(block)
            _check(entry, hasher.digest())
            spool.seek(0)
            on_object(VerifiedObject(entry, spool))
    if stream.read(1):
        raise PackError("object pack has trailing bytes after its last object")
    return entries


def _check(entry: PackEntry, digest: bytes) -> None:
    if not hmac.compare_digest(digest, entry.content_hash.digest):
        raise PackError(
            f"object {entry.name} does not match its name: its content hashes to "
            f"{digest.hex()}{entry.content_hash.algorithm.id_suffix}"
        )


def build_pack(objects: list[tuple[str, bytes]]) -> tuple[bytes, bytes]:
    """(header, objects) for `(name with suffix, stored bytes)` pairs, as the publisher's
    ObjectPackProducer lays them out; for tests and benchmarks that play the publisher."""
    body = b"".join(data for _name, data in objects)
    lines = "".join(f"C {name} {len(data)}\n" for name, data in objects)
    header = f"V2\nS{len(body)}\nN{len(objects)}\n--\n{lines}".encode()
    return header, body
