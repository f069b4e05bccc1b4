"""`.cvmfspublished`: the signed manifest naming the root catalog of the current revision.

Parse, build in upstream field order, sign with the repository key, verify (spec §3.1, §3.2).
"""

from __future__ import annotations

from dataclasses import dataclass, replace

from cvmfs.errors import FormatError
from cvmfs.keys import sign_manifest_hash, verify_manifest_hash
from cvmfs.objects import ContentHash, hash_bytes
from cvmfs.signed_text import SignedText

ROOT_PATH_MD5 = "d41d8cd98f00b204e9800998ecf8427e"  # spec §3.1: R = md5("") always
FIELD_ORDER = "CBRDSGALNXHTMY"  # spec §3.1: the order upstream writes
FIELD_NAMES = {  # letter -> descriptive name (as in the fixture's expected.json `fields`)
    "C": "root_catalog_hash",
    "B": "root_catalog_size",
    "R": "root_path_md5",
    "D": "ttl_seconds",
    "S": "revision",
    "G": "garbage_collectable",
    "A": "alternative_name_catalogs",
    "L": "micro_catalog_hash",
    "N": "repository_name",
    "X": "certificate_hash",
    "H": "history_hash",
    "T": "publish_timestamp",
    "M": "metainfo_hash",
    "Y": "reflog_hash",
}
_MANDATORY = "CRDS"  # spec §3.1


def _yes_no(value: bool) -> str:
    return "yes" if value else "no"


@dataclass(frozen=True)
class Manifest:
    """The fields of `.cvmfspublished` (spec §3.1)."""

    root_catalog_hash: ContentHash
    revision: int
    ttl_seconds: int = 240
    root_catalog_size: int | None = None
    root_path_md5: str = ROOT_PATH_MD5
    garbage_collectable: bool = False
    alternative_name_catalogs: bool = False
    micro_catalog_hash: str | None = None
    repository_name: str | None = None
    certificate_hash: ContentHash | None = None
    history_hash: ContentHash | None = None
    publish_timestamp: int | None = None
    metainfo_hash: ContentHash | None = None
    reflog_hash: ContentHash | None = None

    def raw_lines(self) -> dict[str, str]:
        """Letter -> value text, in upstream order, optional fields only when set."""
        values: dict[str, str | None] = {
            "C": self.root_catalog_hash.hex,
            "B": None if self.root_catalog_size is None else str(self.root_catalog_size),
            "R": self.root_path_md5,
            "D": str(self.ttl_seconds),
            "S": str(self.revision),
            "G": _yes_no(self.garbage_collectable),
            "A": _yes_no(self.alternative_name_catalogs),
            "L": self.micro_catalog_hash,
            "N": self.repository_name,
            "X": self.certificate_hash.hex if self.certificate_hash else None,
            "H": self.history_hash.hex if self.history_hash else None,
            # spec §3.1: T is written only if > 0
            "T": str(self.publish_timestamp) if self.publish_timestamp else None,
            "M": self.metainfo_hash.hex if self.metainfo_hash else None,
            "Y": self.reflog_hash.hex if self.reflog_hash else None,
        }
        return {letter: value for letter, value in values.items() if value is not None}

    def fields(self) -> dict[str, str]:
        """Descriptive name -> value text (the fixture's `fields`)."""
        return {FIELD_NAMES[letter]: value for letter, value in self.raw_lines().items()}

    def serialize(self) -> bytes:
        """The unsigned body: `<letter><value>\\n` lines, without the `--` line."""
        return "".join(f"{k}{v}\n" for k, v in self.raw_lines().items()).encode("utf-8")

    def evolve(self, **changes: object) -> Manifest:
        return replace(self, **changes)  # type: ignore[arg-type]

    @classmethod
    def parse(cls, data: bytes) -> Manifest:
        """Parse the field lines; stops at the `--` line (spec §3.1)."""
        lines: dict[str, str] = {}
        for raw in data.split(b"\n"):
            if raw == b"--":
                break
            if not raw:
                continue
            try:
                line = raw.decode("utf-8")
            except UnicodeDecodeError:
                raise FormatError("manifest line is not text: is this a .cvmfspublished?") from None
            lines[line[0]] = line[1:]  # duplicate letters: last wins (spec §3.1)
        missing = [letter for letter in _MANDATORY if letter not in lines]
        if missing:
            raise FormatError(f"manifest lacks mandatory field(s) {', '.join(missing)}")

        def opt_hash(letter: str) -> ContentHash | None:
            return ContentHash.from_hex(lines[letter]) if lines.get(letter) else None

        def opt_int(letter: str) -> int | None:
            return int(lines[letter]) if lines.get(letter) else None

        try:
            return cls(
                root_catalog_hash=ContentHash.from_hex(lines["C"]),
                revision=int(lines["S"]),
                ttl_seconds=int(lines["D"]),
                root_catalog_size=opt_int("B"),
                root_path_md5=lines["R"],
                garbage_collectable=lines.get("G") == "yes",
                alternative_name_catalogs=lines.get("A") == "yes",
                micro_catalog_hash=lines.get("L"),
                repository_name=lines.get("N"),
                certificate_hash=opt_hash("X"),
                history_hash=opt_hash("H"),
                publish_timestamp=opt_int("T"),
                metainfo_hash=opt_hash("M"),
                reflog_hash=opt_hash("Y"),
            )
        except ValueError as exc:
            raise FormatError(f"malformed manifest field: {exc}") from exc


@dataclass(frozen=True)
class SignedManifest:
    """A whole `.cvmfspublished`: body, hash line and signature (spec §3.2)."""

    manifest: Manifest
    body: bytes  # the field lines, each ending in \n: what the hash line covers
    hash_text: str
    signature: bytes

    @classmethod
    def parse(cls, data: bytes) -> SignedManifest:
        parts = SignedText.split(data, "manifest")
        return cls(Manifest.parse(parts.body), parts.body, parts.hash_text, parts.signature)

    def to_bytes(self) -> bytes:
        return SignedText(self.body, self.hash_text, self.signature).to_bytes()

    def verify(self, certificate_pem: str | bytes) -> None:
        """Check the hash line against the body, then the signature (spec §3.2)."""
        SignedText(self.body, self.hash_text, self.signature).check_hash_line("manifest")
        verify_manifest_hash(certificate_pem, self.hash_text, self.signature)


def sign_manifest(manifest: Manifest, repository_private_pem: str) -> bytes:
    """The complete `.cvmfspublished` file for `manifest` (spec §3.2)."""
    body = manifest.serialize()
    hash_text = hash_bytes(body, manifest.root_catalog_hash.algorithm).hex
    signature = sign_manifest_hash(repository_private_pem, hash_text)
    return SignedManifest(manifest, body, hash_text, signature).to_bytes()
