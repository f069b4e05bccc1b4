"""The signed-file layout `.cvmfspublished` and `.cvmfswhitelist` share (spec §3.2, §3.3):
text lines, a `--` line, the hex hash of those lines, then the binary signature.
"""

from __future__ import annotations

from dataclasses import dataclass

from cvmfs.errors import FormatError, SignatureError
from cvmfs.objects import ContentHash, hash_bytes

SEPARATOR = b"--\n"  # spec §3.2


@dataclass(frozen=True)
class SignedText:
    body: bytes  # the text lines, each ending in \n: what the hash line covers
    hash_text: str
    signature: bytes

    @classmethod
    def split(cls, data: bytes, what: str) -> SignedText:
        """Cut a signed file of kind `what` ("manifest", "whitelist") into its three parts."""
        cut = data.find(b"\n" + SEPARATOR)
        if cut < 0:
            raise FormatError(f"{what} has no '--' line: it is unsigned or truncated")
        body = data[: cut + 1]
        rest = data[cut + 1 + len(SEPARATOR) :]
        newline = rest.find(b"\n")
        if newline < 0:
            raise FormatError(f"{what} has no hash line after '--'")
        try:
            hash_text = rest[:newline].decode("ascii")
        except UnicodeDecodeError:
            raise FormatError(f"{what} hash line is not hex text") from None
        return cls(body, hash_text, rest[newline + 1 :])

    def to_bytes(self) -> bytes:
        return self.body + SEPARATOR + self.hash_text.encode("ascii") + b"\n" + self.signature

    def check_hash_line(self, what: str) -> None:
        """The hash line must be the hash of the body; the signature is checked separately."""
        try:
            expected = ContentHash.from_hex(self.hash_text)
        except FormatError:
            raise SignatureError(f"{what} hash line {self.hash_text!r} is not a hash") from None
        if hash_bytes(self.body, expected.algorithm) != expected:
            raise SignatureError(
                f"{what} content does not match its signed hash line: the {what} was altered"
            )
