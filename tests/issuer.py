"""A local OIDC issuer for tests: signing keys, discovery document and JWKS over real HTTP.

It mints tokens with any claims (valid or deliberately broken) and can rotate its key, so the
verifier is tested against the same HTTP exchange it has with INDIGO IAM.
"""

from __future__ import annotations

import json
import threading
import time
import uuid
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import jwt
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from jwt.algorithms import ECAlgorithm, RSAAlgorithm

PrivateKey = rsa.RSAPrivateKey | ec.EllipticCurvePrivateKey


@dataclass(frozen=True)
class IssuerKey:
    kid: str
    private_key: PrivateKey
    algorithm: str  # RS256 or ES256

    @classmethod
    def new_rsa(cls) -> IssuerKey:
        key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
        return cls(kid=f"rsa-{uuid.uuid4().hex[:8]}", private_key=key, algorithm="RS256")

    @classmethod
    def new_ec(cls) -> IssuerKey:
        key = ec.generate_private_key(ec.SECP256R1())
        return cls(kid=f"ec-{uuid.uuid4().hex[:8]}", private_key=key, algorithm="ES256")

    def public_jwk(self) -> dict[str, Any]:
        public = self.private_key.public_key()
        if isinstance(public, rsa.RSAPublicKey):
            jwk = RSAAlgorithm.to_jwk(public, as_dict=True)
        else:
            jwk = ECAlgorithm.to_jwk(public, as_dict=True)
        return {**jwk, "kid": self.kid, "use": "sig"}

    def public_pem(self) -> bytes:
        return self.private_key.public_key().public_bytes(
            serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
        )


class TestIssuer:
    """An OIDC issuer on 127.0.0.1 (ephemeral port). Use as a context manager."""

    __test__ = False  # not a pytest test class

    def __init__(self, audience: str = "cvmfs-distribution-service") -> None:
        self.audience = audience
        self._keys: list[IssuerKey] = [IssuerKey.new_rsa()]
        self._lock = threading.Lock()
        # Raw JWKs published beside the issuer's keys (e.g. a symmetric or an `enc` key).
        self.extra_jwks: list[dict[str, Any]] = []
        self.jwks_requests = 0
        self.discovery_requests = 0
        self._server = ThreadingHTTPServer(("127.0.0.1", 0), self._handler_class())
        self._thread = threading.Thread(
            target=self._server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True
        )

    # -- lifecycle -------------------------------------------------------------------------

    def __enter__(self) -> TestIssuer:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._server.shutdown()
        self._server.server_close()
        self._thread.join()

    @property
    def url(self) -> str:
        """The issuer identifier (the `iss` of its tokens), with a trailing slash like IAM's."""
        host, port = self._server.server_address[:2]
        return f"http://{host!s}:{port}/"

    @property
    def jwks_url(self) -> str:
        return self.url + "jwks"

    # -- keys ------------------------------------------------------------------------------

    @property
    def current_key(self) -> IssuerKey:
        with self._lock:
            return self._keys[-1]

    def rotate(self, keep_old: bool = False, new_key: IssuerKey | None = None) -> IssuerKey:
        """Switch to a new signing key; the old one stays published only if keep_old."""
        key = new_key or IssuerKey.new_rsa()
        with self._lock:
            self._keys = [*self._keys, key] if keep_old else [key]
        return key

    def publish(self, key: IssuerKey) -> None:
        """Add a key to the JWKS without making it the signing key."""
        with self._lock:
            self._keys = [key, *self._keys]

    def jwks(self) -> dict[str, Any]:
        with self._lock:
            return {"keys": [k.public_jwk() for k in self._keys] + list(self.extra_jwks)}

    # -- tokens ----------------------------------------------------------------------------

    def claims(self, **overrides: Any) -> dict[str, Any]:
        """Valid claims for a user `alice` in group `cms`; overrides replace or add claims.

        An override whose value is None removes that claim.
        """
        now = int(time.time())
        claims: dict[str, Any] = {
            "iss": self.url,
            "sub": "7f3c1b2a-0000-4000-8000-00000000a11c",
            "aud": self.audience,
            "iat": now,
            "nbf": now,
            "exp": now + 600,
            "preferred_username": "alice",
            "groups": ["cms"],
            "wlcg.groups": ["/cms", "/cms/production"],
        }
        claims.update(overrides)
        return {k: v for k, v in claims.items() if v is not None}

    def mint(
        self,
        key: IssuerKey | None = None,
        headers: dict[str, Any] | None = None,
        algorithm: str | None = None,
        **claim_overrides: Any,
    ) -> str:
        """A token signed by `key` (default: the current key) with `claims(**claim_overrides)`."""
        key = key or self.current_key
        return jwt.encode(
            self.claims(**claim_overrides),
            key.private_key,
            algorithm=algorithm or key.algorithm,
            headers={"kid": key.kid, **(headers or {})},
        )

    # -- HTTP ------------------------------------------------------------------------------

    def _handler_class(self) -> type[BaseHTTPRequestHandler]:
        issuer = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                if self.path == "/.well-known/openid-configuration":
                    with issuer._lock:
                        issuer.discovery_requests += 1
                    body: dict[str, Any] = {
                        "issuer": issuer.url,
                        "jwks_uri": issuer.jwks_url,
                        "id_token_signing_alg_values_supported": ["RS256", "ES256"],
                    }
                elif self.path == "/jwks":
                    with issuer._lock:
                        issuer.jwks_requests += 1
                    body = issuer.jwks()
                else:
                    self.send_error(404)
                    return
                data = json.dumps(body).encode()
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def log_message(self, format: str, *args: Any) -> None:
                pass  # keep test output clean

        return Handler
