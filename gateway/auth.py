"""HMAC-SHA1 request authentication as the stock publisher computes it.

The `Authorization` header is `<key id> <base64 of the lower-case hex HMAC-SHA1>`; the HMAC
covers the request body for a new lease, the session token for calls on a lease, and the JSON
message (its first `Message-Size` bytes) for the legacy payload form. Upstream:
gateway/internal/gateway/frontend/authz.go and hmac.go; cvmfs/swissknife_lease_curl.cc.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
from dataclasses import dataclass

from gateway.errors import GatewayError


@dataclass(frozen=True)
class Authorization:
    key_id: str
    hmac_hex: bytes  # the base64-decoded header value: hex digits, as the publisher sends


def hmac_hex(secret: str, message: bytes) -> bytes:
    return hmac.new(secret.encode(), message, hashlib.sha1).hexdigest().encode()


def authorization_header(key_id: str, secret: str, message: bytes) -> str:
    """What the publisher puts in `Authorization` for `message` (used by test publishers)."""
    return f"{key_id} {base64.b64encode(hmac_hex(secret, message)).decode()}"


def parse_authorization(header: str | None) -> Authorization:
    tokens = (header or "").split(" ")
    if len(tokens) != 2 or not tokens[0]:
        raise GatewayError("invalid_hmac: the Authorization header must be '<key id> <hmac>'")
    try:
        value = base64.b64decode(tokens[1], validate=True)
    except (binascii.Error, ValueError):
        raise GatewayError(
            "invalid_hmac: the HMAC in the Authorization header is not base64"
        ) from None
    return Authorization(tokens[0], value)


def check_hmac(auth: Authorization, secret: str, message: bytes) -> None:
    """Constant-time comparison of the sent HMAC with the one `secret` gives `message`."""
    if not hmac.compare_digest(auth.hmac_hex, hmac_hex(secret, message)):
        raise GatewayError(
            "invalid_hmac: the request's HMAC does not match the key; check the .gw key file"
        )
