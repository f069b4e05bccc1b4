"""`.cvmfswhitelist`: the master-key-signed list of certificate fingerprints and its expiry.

Parse, build, sign (raw PKCS#1 type-1 private encrypt), verify, expiry check (spec §3.3).
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Sequence
from dataclasses import dataclass

from cvmfs.errors import (
    FormatError,
    RepositoryNameMismatchError,
    SignatureError,
    WhitelistExpiredError,
)
from cvmfs.keys import certificate_fingerprint, private_encrypt, verify_whitelist_hash
from cvmfs.objects import ContentHash, HashAlgorithm, hash_bytes
from cvmfs.signed_text import SignedText

TIMESTAMP_FORMAT = "%Y%m%d%H%M%S"  # spec §3.3: 14 characters, UTC
DEFAULT_VALIDITY = dt.timedelta(days=30)  # spec §3.3: 30 days with a master key file


def format_timestamp(moment: dt.datetime) -> str:
    return _as_utc(moment).strftime(TIMESTAMP_FORMAT)


def parse_timestamp(text: str) -> dt.datetime:
    if len(text) != 14 or not text.isdigit():
        raise FormatError(f"whitelist timestamp {text!r} is not YYYYMMDDhhmmss")
    # fields by position, not strptime: its first call imports and sets up `_strptime` (~1.5 ms
    # of a one-file CLI publish, which reads the whitelist once)
    try:
        return dt.datetime(
            int(text[0:4]),
            int(text[4:6]),
            int(text[6:8]),
            int(text[8:10]),
            int(text[10:12]),
            int(text[12:14]),
            tzinfo=dt.UTC,
        )
    except ValueError as exc:
        raise FormatError(f"whitelist timestamp {text!r} is not a valid time: {exc}") from exc


def _as_utc(moment: dt.datetime) -> dt.datetime:
    """A naive datetime is taken as UTC (the whitelist's own time zone), never local time."""
    if moment.tzinfo is None:
        return moment.replace(tzinfo=dt.UTC)
    return moment.astimezone(dt.UTC)


def normalize_fingerprint(text: str) -> str:
    """Comparable form of a fingerprint line: colons removed, lower case (spec §3.3)."""
    return text.replace(":", "").lower()


def _parse_fingerprint_line(line: str) -> str | None:
    # spec §3.3: the parser stops at space, tab or '#', removes ':' and lower-cases;
    # lines that do not parse as a hash are ignored.
    for stop in (" ", "\t", "#"):
        line = line.split(stop, 1)[0]
    candidate = normalize_fingerprint(line)
    try:
        ContentHash.from_hex(candidate)
    except FormatError:
        return None
    return line


@dataclass(frozen=True)
class Whitelist:
    """Fields of a whitelist (spec §3.3)."""

    created: dt.datetime
    expires: dt.datetime
    repository_name: str
    certificate_fingerprints: tuple[str, ...]  # as written: `AB:CD:…`

    def serialize(self) -> bytes:
        """The signed part, up to and including the `\\n` of the last fingerprint line."""
        lines = [
            format_timestamp(self.created),
            "E" + format_timestamp(self.expires),
            "N" + self.repository_name,
            *self.certificate_fingerprints,
        ]
        return ("\n".join(lines) + "\n").encode("ascii")

    def is_expired(self, now: dt.datetime) -> bool:
        """Expired unless now < expiry, compared at hour granularity in UTC (spec §3.3)."""
        now_utc = _as_utc(now)
        key_now = (now_utc.year, now_utc.month, now_utc.day, now_utc.hour)
        exp = self.expires
        return not key_now < (exp.year, exp.month, exp.day, exp.hour)

    def check_not_expired(self, now: dt.datetime) -> None:
        if self.is_expired(now):
            raise WhitelistExpiredError(
                f"the whitelist of {self.repository_name} expired at "
                f"{self.expires.isoformat()} (now {_as_utc(now).isoformat()}): "
                "re-sign it with the master key (resign-whitelist)"
            )

    def lists_fingerprint(self, fingerprint: str) -> bool:
        wanted = normalize_fingerprint(fingerprint)
        return any(normalize_fingerprint(f) == wanted for f in self.certificate_fingerprints)

    def check_certificate(self, certificate_pem: str | bytes) -> None:
        """Raise `SignatureError` unless the certificate's DER fingerprint is listed."""
        for algorithm in HashAlgorithm:
            fingerprint = certificate_fingerprint(certificate_pem, algorithm)
            if self.lists_fingerprint(fingerprint):
                return
        raise SignatureError(
            f"the repository certificate ({certificate_fingerprint(certificate_pem)}) is not "
            f"listed in the whitelist of {self.repository_name}: re-sign the whitelist"
        )

    def check_repository_name(self, fqrn: str) -> None:
        if self.repository_name != fqrn:
            raise RepositoryNameMismatchError(
                f"the whitelist is for {self.repository_name!r}, not {fqrn!r}"
            )


@dataclass(frozen=True)
class SignedWhitelist:
    """A whole `.cvmfswhitelist`: body, hash line and master-key signature."""

    whitelist: Whitelist
    body: bytes
    hash_text: str
    signature: bytes

    @classmethod
    def parse(cls, data: bytes) -> SignedWhitelist:
        parts = SignedText.split(data, "whitelist")
        try:
            lines = parts.body.decode("ascii").split("\n")[:-1]
        except UnicodeDecodeError:
            raise FormatError("whitelist text is not ASCII") from None
        if len(lines) < 3 or len(lines[0]) != 14 or not lines[1].startswith("E"):
            raise FormatError("whitelist must start with creation time, E<expiry>, N<fqrn>")
        if not lines[2].startswith("N"):
            raise FormatError("whitelist third line must be N<fqrn>")
        fingerprints = []
        for line in lines[3:]:
            if line in ("Vpkcs7", "Wcachain"):  # optional mode lines (spec §3.3)
                continue
            fingerprint = _parse_fingerprint_line(line)
            if fingerprint is not None:
                fingerprints.append(fingerprint)
        whitelist = Whitelist(
            created=parse_timestamp(lines[0]),
            expires=parse_timestamp(lines[1][1:]),
            repository_name=lines[2][1:],
            certificate_fingerprints=tuple(fingerprints),
        )
        return cls(whitelist, parts.body, parts.hash_text, parts.signature)

    def to_bytes(self) -> bytes:
        return SignedText(self.body, self.hash_text, self.signature).to_bytes()

    def verify(self, master_public_pems: Sequence[str]) -> None:
        """Check the hash line, then the signature with any of the master public keys."""
        SignedText(self.body, self.hash_text, self.signature).check_hash_line("whitelist")
        verify_whitelist_hash(tuple(master_public_pems), self.hash_text, self.signature)


def build_whitelist(
    fqrn: str,
    certificate_pems: Sequence[str],
    *,
    now: dt.datetime,
    validity: dt.timedelta = DEFAULT_VALIDITY,
    algorithm: HashAlgorithm = HashAlgorithm.SHA1,
) -> Whitelist:
    """A whitelist valid from `now` for `validity`, listing the given certificates."""
    created = _as_utc(now).replace(microsecond=0)
    return Whitelist(
        created=created,
        expires=created + validity,
        repository_name=fqrn,
        certificate_fingerprints=tuple(
            certificate_fingerprint(p, algorithm) for p in certificate_pems
        ),
    )


def sign_whitelist(
    whitelist: Whitelist, master_private_pem: str, algorithm: HashAlgorithm = HashAlgorithm.SHA1
) -> bytes:
    """The complete `.cvmfswhitelist` file (spec §3.3)."""
    body = whitelist.serialize()
    hash_text = hash_bytes(body, algorithm).hex
    signature = private_encrypt(master_private_pem, hash_text.encode("ascii"))
    return SignedWhitelist(whitelist, body, hash_text, signature).to_bytes()
