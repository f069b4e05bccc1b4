"""Repository key sets: generate them as `cvmfs_server mkfs` does, load and write the PEM files,
and the two RSA signature schemes (manifest: PKCS#1 v1.5 SHA-1; whitelist: raw private encrypt).
"""

from __future__ import annotations

import datetime as dt
import functools
import os
import secrets
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import padding, rsa
from cryptography.x509.oid import NameOID

from cvmfs.errors import KeyFileError, SignatureError
from cvmfs.objects import HashAlgorithm, hash_bytes

RSA_KEY_BITS = 2048  # spec §3.5
RSA_PUBLIC_EXPONENT = 65537  # spec §3.5
CERTIFICATE_VALIDITY = dt.timedelta(days=365)  # spec §3.5 (openssl x509 -days 365)
CN_FQRN_MAX = 30  # spec §3.5: longer names are cut to 30 chars + "[...]"
CN_SUFFIX = " CernVM-FS Release Managers"  # spec §3.5

# File name suffixes and modes as `cvmfs_server mkfs` leaves them (spec §3.5).
MASTER_KEY_SUFFIX = ".masterkey"
PUBLIC_KEY_SUFFIX = ".pub"
REPOSITORY_KEY_SUFFIX = ".key"
CERTIFICATE_SUFFIX = ".crt"
GATEWAY_KEY_SUFFIX = ".gw"
FILE_MODES = {
    MASTER_KEY_SUFFIX: 0o400,
    PUBLIC_KEY_SUFFIX: 0o444,
    REPOSITORY_KEY_SUFFIX: 0o400,
    CERTIFICATE_SUFFIX: 0o444,
    GATEWAY_KEY_SUFFIX: 0o600,
}
GATEWAY_KEY_TYPE = "plain_text"  # spec §3.5: `.gw` first line `plain_text <id> <secret>`


@dataclass(frozen=True)
class KeySet:
    """The PEM texts of one repository's keys; private parts are absent on verifiers."""

    master_private_pem: str | None
    master_public_pem: str
    repository_private_pem: str | None
    certificate_pem: str
    gateway_key: str | None = None  # the `.gw` line: `plain_text <id> <secret>`

    def __repr__(self) -> str:  # never print private keys
        return (
            f"KeySet(master_private={'yes' if self.master_private_pem else 'no'}, "
            f"repository_private={'yes' if self.repository_private_pem else 'no'}, "
            f"certificate={certificate_fingerprint(self.certificate_pem)}, "
            f"gateway_key={'yes' if self.gateway_key else 'no'})"
        )

    def certificate_fingerprint(self, algorithm: HashAlgorithm = HashAlgorithm.SHA1) -> str:
        return certificate_fingerprint(self.certificate_pem, algorithm)

    def require_master_key(self) -> str:
        if not self.master_private_pem:
            raise KeyFileError("this key set has no master key (<fqrn>.masterkey): load it first")
        return self.master_private_pem

    def require_repository_key(self) -> str:
        if not self.repository_private_pem:
            raise KeyFileError("this key set has no repository key (<fqrn>.key): load it first")
        return self.repository_private_pem

    def with_gateway_key(self, gateway_key: str) -> KeySet:
        parse_gateway_key(gateway_key)
        return KeySet(
            self.master_private_pem,
            self.master_public_pem,
            self.repository_private_pem,
            self.certificate_pem,
            gateway_key,
        )


# --- generation --------------------------------------------------------------------------------
def _new_rsa_key() -> rsa.RSAPrivateKey:
    return rsa.generate_private_key(public_exponent=RSA_PUBLIC_EXPONENT, key_size=RSA_KEY_BITS)


def _private_pem(key: rsa.RSAPrivateKey) -> str:
    # PKCS#8 `BEGIN PRIVATE KEY`, what `openssl genrsa` writes with OpenSSL 3 (spec §3.5).
    return key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    ).decode()


def _public_pem(key: rsa.RSAPublicKey) -> str:
    # SubjectPublicKeyInfo `BEGIN PUBLIC KEY`, the only form clients load (spec §3.5).
    return key.public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    ).decode()


def certificate_common_name(fqrn: str) -> str:
    """CN of the repository certificate (spec §3.5)."""
    name = fqrn if len(fqrn) <= CN_FQRN_MAX else fqrn[:CN_FQRN_MAX] + "[...]"
    return name + CN_SUFFIX


def generate_certificate(private_pem: str, fqrn: str, now: dt.datetime | None = None) -> str:
    """Self-signed X.509 certificate carrying the repository public key (spec §3.4, §3.5)."""
    key = load_private_key(private_pem)
    now = now or dt.datetime.now(dt.UTC)
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, certificate_common_name(fqrn))])
    certificate = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now)
        .not_valid_after(now + CERTIFICATE_VALIDITY)
        .sign(key, hashes.SHA256())
    )
    return certificate.public_bytes(serialization.Encoding.PEM).decode()


def generate_gateway_key(key_id: str | None = None) -> str:
    """A `.gw` line `plain_text <id> <secret>` with a random secret (spec §3.5)."""
    key_id = key_id or f"key-{secrets.token_hex(4)}"
    return f"{GATEWAY_KEY_TYPE} {key_id} {secrets.token_urlsafe(32)}\n"


def parse_gateway_key(text: str) -> tuple[str, str]:
    """(key id, secret) from a `.gw` file (spec §3.5: exactly 3 tokens, type plain_text)."""
    lines = text.splitlines()
    tokens = lines[0].split() if lines else []
    if len(tokens) != 3 or tokens[0] != GATEWAY_KEY_TYPE:
        raise KeyFileError("gateway key must be one line 'plain_text <key id> <secret>'")
    return tokens[1], tokens[2]


def generate_keyset(
    fqrn: str, *, now: dt.datetime | None = None, gateway_key_id: str | None = None
) -> KeySet:
    """Master key pair, repository key and certificate (and a gateway key if an id is given)."""
    master = _new_rsa_key()
    repository_pem = _private_pem(_new_rsa_key())
    return KeySet(
        master_private_pem=_private_pem(master),
        master_public_pem=_public_pem(master.public_key()),
        repository_private_pem=repository_pem,
        certificate_pem=generate_certificate(repository_pem, fqrn, now),
        gateway_key=generate_gateway_key(gateway_key_id) if gateway_key_id else None,
    )


# --- files -------------------------------------------------------------------------------------
def key_file_paths(directory: str | os.PathLike[str], fqrn: str) -> dict[str, Path]:
    base = Path(directory)
    return {suffix: base / f"{fqrn}{suffix}" for suffix in FILE_MODES}


def load_keyset(directory: str | os.PathLike[str], fqrn: str) -> KeySet:
    """Read `<fqrn>.masterkey/.pub/.key/.crt/.gw`; `.pub` and `.crt` are required."""
    paths = key_file_paths(directory, fqrn)

    def read(suffix: str, required: bool) -> str | None:
        try:
            return paths[suffix].read_text()
        except FileNotFoundError:
            if required:
                raise KeyFileError(
                    f"{paths[suffix]} is missing: copy the repository keys into {directory}"
                ) from None
            return None

    master_public = read(PUBLIC_KEY_SUFFIX, True)
    certificate = read(CERTIFICATE_SUFFIX, True)
    assert master_public is not None and certificate is not None
    keyset = KeySet(
        master_private_pem=read(MASTER_KEY_SUFFIX, False),
        master_public_pem=master_public,
        repository_private_pem=read(REPOSITORY_KEY_SUFFIX, False),
        certificate_pem=certificate,
        gateway_key=read(GATEWAY_KEY_SUFFIX, False),
    )
    validate_keyset(keyset)
    return keyset


def validate_keyset(keyset: KeySet) -> None:
    """Parse every PEM and check that private and public halves belong together."""
    master_public = load_public_key(keyset.master_public_pem)
    if keyset.master_private_pem is not None:
        master = _public_numbers_of_private(keyset.master_private_pem)
        if master != master_public.public_numbers():
            raise KeyFileError("the master key does not match the public master key (.pub)")
    cert_key = certificate_public_key(keyset.certificate_pem)
    if keyset.repository_private_pem is not None:
        repository = _public_numbers_of_private(keyset.repository_private_pem)
        if repository != cert_key.public_numbers():
            raise KeyFileError("the repository key (.key) does not match the certificate (.crt)")
    if keyset.gateway_key is not None:
        parse_gateway_key(keyset.gateway_key)


def _public_numbers_of_private(pem: str) -> rsa.RSAPublicNumbers:
    """The public half of a private key, to compare, without OpenSSL's consistency check.

    That check costs 26 ms per RSA-2048 key, and a publish loaded the master key only for this
    comparison. Nothing is signed with the key parsed here; whitelist signatures and
    certificates go through `load_private_key` (full check), manifest signatures are verified
    after signing (`sign_manifest_hash`).
    """
    return _load_private_key_unchecked(pem).public_key().public_numbers()


def _load_private_key_unchecked(pem: str) -> rsa.RSAPrivateKey:
    """An RSA private key parsed without OpenSSL's consistency check; see the callers for why
    that is safe where they use it."""
    try:
        key = serialization.load_pem_private_key(
            pem.encode(), password=None, unsafe_skip_rsa_key_validation=True
        )
    except (ValueError, TypeError) as exc:
        raise KeyFileError(f"not an unencrypted PEM private key: {exc}") from exc
    if not isinstance(key, rsa.RSAPrivateKey):
        raise KeyFileError("CVMFS keys must be RSA keys")
    return key


def write_keyset(keyset: KeySet, directory: str | os.PathLike[str], fqrn: str) -> None:
    """Write the key files with the modes `cvmfs_server` uses; existing files are replaced."""
    paths = key_file_paths(directory, fqrn)
    Path(directory).mkdir(parents=True, exist_ok=True)
    contents = {
        MASTER_KEY_SUFFIX: keyset.master_private_pem,
        PUBLIC_KEY_SUFFIX: keyset.master_public_pem,
        REPOSITORY_KEY_SUFFIX: keyset.repository_private_pem,
        CERTIFICATE_SUFFIX: keyset.certificate_pem,
        GATEWAY_KEY_SUFFIX: keyset.gateway_key,
    }
    for suffix, text in contents.items():
        if text is None:
            continue
        path = paths[suffix]
        if path.exists():
            path.chmod(0o600)
            path.unlink()
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "w") as out:
            out.write(text)
        path.chmod(FILE_MODES[suffix])


# --- parsing -----------------------------------------------------------------------------------
@functools.lru_cache(maxsize=32)
def load_private_key(pem: str) -> rsa.RSAPrivateKey:
    """An RSA private key from PKCS#1 (`BEGIN RSA PRIVATE KEY`) or PKCS#8 PEM.

    Cached: parsing checks the key (~25-60 ms for RSA-2048). Used for whitelist signatures and
    certificates; manifest signatures use `_manifest_signing_key`. The key objects are
    immutable.
    """
    try:
        key = serialization.load_pem_private_key(pem.encode(), password=None)
    except (ValueError, TypeError) as exc:
        raise KeyFileError(f"not an unencrypted PEM private key: {exc}") from exc
    if not isinstance(key, rsa.RSAPrivateKey):
        raise KeyFileError("CVMFS keys must be RSA keys")
    return key


def load_public_key(pem: str) -> rsa.RSAPublicKey:
    """An RSA public key from `BEGIN PUBLIC KEY` (or `BEGIN RSA PUBLIC KEY`) PEM."""
    try:
        key = serialization.load_pem_public_key(pem.encode())
    except (ValueError, TypeError) as exc:
        raise KeyFileError(f"not a PEM public key: {exc}") from exc
    if not isinstance(key, rsa.RSAPublicKey):
        raise KeyFileError("CVMFS keys must be RSA keys")
    return key


def load_certificate(pem: str | bytes) -> x509.Certificate:
    try:
        return x509.load_pem_x509_certificate(pem.encode() if isinstance(pem, str) else pem)
    except ValueError as exc:
        raise KeyFileError(f"not a PEM X.509 certificate: {exc}") from exc


def certificate_public_key(pem: str | bytes) -> rsa.RSAPublicKey:
    key = load_certificate(pem).public_key()
    if not isinstance(key, rsa.RSAPublicKey):
        raise KeyFileError("the repository certificate must carry an RSA key")
    return key


def public_pem_of(private_pem: str) -> str:
    return _public_pem(load_private_key(private_pem).public_key())


def certificate_fingerprint(pem: str | bytes, algorithm: HashAlgorithm = HashAlgorithm.SHA1) -> str:
    """Hash of the DER certificate, `AB:CD:…[-RMD160]` as in the whitelist (spec §3.3)."""
    der = load_certificate(pem).public_bytes(serialization.Encoding.DER)
    digest = hash_bytes(der, algorithm)
    pairs = ":".join(f"{byte:02X}" for byte in digest.digest)
    return pairs + algorithm.id_suffix.upper()


# --- manifest signatures (spec §3.2) -----------------------------------------------------------
@functools.lru_cache(maxsize=32)
def _manifest_signing_key(pem: str) -> rsa.RSAPrivateKey:
    """The repository key for manifest signatures, parsed without OpenSSL's consistency check.

    That check is 25 ms of a one-file CLI publish of ~0.2 s (RSA-2048, measured in
    bench/README.md); `sign_manifest_hash` instead verifies every signature it makes with the
    key's public half, which `validate_keyset` compared with the certificate, so a damaged key
    yields an error and never a signature clients would reject.
    """
    return _load_private_key_unchecked(pem)


def sign_manifest_hash(repository_private_pem: str, hash_text: str) -> bytes:
    """RSASSA-PKCS1-v1_5 with SHA-1 over the ASCII hex hash text (spec §3.2)."""
    key = _manifest_signing_key(repository_private_pem)
    message = hash_text.encode("ascii")
    signature = key.sign(message, padding.PKCS1v15(), hashes.SHA1())
    try:  # 0.05 ms; what stands in for the skipped key check
        key.public_key().verify(signature, message, padding.PKCS1v15(), hashes.SHA1())
    except InvalidSignature:
        raise KeyFileError(
            "the repository key (.key) made a signature its own public key rejects: the key "
            "file is damaged; restore it from the key store"
        ) from None
    return signature


def verify_manifest_hash(certificate_pem: str | bytes, hash_text: str, signature: bytes) -> None:
    """Raise `SignatureError` unless `signature` signs `hash_text` with the certificate's key."""
    key = certificate_public_key(certificate_pem)
    try:
        key.verify(signature, hash_text.encode("ascii"), padding.PKCS1v15(), hashes.SHA1())
    except InvalidSignature:
        raise SignatureError(
            "the manifest signature does not verify with the repository certificate"
        ) from None


# --- whitelist signatures (spec §3.3) ----------------------------------------------------------
_PKCS1_TYPE1_MIN_PADDING = 8  # spec §3.3: at least 8 bytes of 0xFF


def private_encrypt(private_pem: str, message: bytes) -> bytes:
    """Raw PKCS#1 v1.5 type-1 `RSA_private_encrypt` (no DigestInfo) (spec §3.3)."""
    numbers = load_private_key(private_pem).private_numbers()
    n, d = numbers.public_numbers.n, numbers.d
    k = (n.bit_length() + 7) // 8
    pad_len = k - 3 - len(message)
    if pad_len < _PKCS1_TYPE1_MIN_PADDING:
        raise ValueError(f"message of {len(message)} bytes is too long for a {k}-byte RSA key")
    encoded = b"\x00\x01" + b"\xff" * pad_len + b"\x00" + message
    return pow(int.from_bytes(encoded, "big"), d, n).to_bytes(k, "big")


def public_decrypt(public_key: rsa.RSAPublicKey, signature: bytes) -> bytes | None:
    """Inverse of `private_encrypt`; None if the padding is not a valid type-1 block."""
    numbers = public_key.public_numbers()
    k = (numbers.n.bit_length() + 7) // 8
    if len(signature) != k:
        return None
    value = int.from_bytes(signature, "big")
    if value >= numbers.n:
        return None
    encoded = pow(value, numbers.e, numbers.n).to_bytes(k, "big")
    if encoded[:2] != b"\x00\x01":
        return None
    separator = encoded.find(b"\x00", 2)
    if separator < 2 + _PKCS1_TYPE1_MIN_PADDING or set(encoded[2:separator]) != {0xFF}:
        return None
    return encoded[separator + 1 :]


def verify_whitelist_hash(
    master_public_pems: list[str] | tuple[str, ...], hash_text: str, signature: bytes
) -> None:
    """Raise `SignatureError` unless one of the master public keys recovers `hash_text`."""
    expected = hash_text.encode("ascii")
    for pem in master_public_pems:
        if public_decrypt(load_public_key(pem), signature) == expected:
            return
    raise SignatureError(
        "the whitelist signature does not verify with the given master public key(s): "
        "check CVMFS_PUBLIC_KEY / the <fqrn>.pub file"
    )
