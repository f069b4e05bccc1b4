"""Each repository's gateway key (`<fqrn>.gw`: key id + secret), read from Vault and cached.

Provisioning stores the key beside the repository's other keys (service/keystore.py); the
gateway finds the owner in the registry, reads the key set, and keeps the key id and secret
for `key_cache_ttl_s`. An unknown key id or a failed HMAC reads Vault again (at most every
`key_refresh_min_s`), so a rotated key works at once, without a restart.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from dataclasses import dataclass

from cvmfs.errors import KeyFileError
from cvmfs.keys import KeySet, parse_gateway_key
from gateway.errors import GatewayError
from gateway.paths import LeasePath, parse_lease_path
from service.keystore import (
    FIELD_GATEWAY_KEY_PATH,
    KeyOwner,
    KeysNotFound,
    KeyStore,
    keyset_from_fields,
)
from service.repositories import RepositoryRegistry


@dataclass(frozen=True)
class GatewayKey:
    fqrn: str
    key_id: str
    secret: str
    path: str = "/"  # the sub path this key may lease (Vault field gatewayKeyPath)

    def check_may_lease(self, lease_path: LeasePath) -> None:
        """Like the stock gateway's per-key path (backend/access.go): at or below it only."""
        if not LeasePath(self.fqrn, self.path).contains(lease_path.path):
            raise GatewayError(
                f"invalid_path: key {self.key_id!r} may only lease paths under {self.path} of "
                f"{self.fqrn}, not {lease_path.path}"
            )


def _key_path(fqrn: str, value: object) -> str:
    """The key's path restriction; a malformed one restricts the key to nothing."""
    if value is None or value in ("", "/"):
        return "/"
    try:
        return parse_lease_path(f"{fqrn}/{str(value).strip('/')}").path
    except GatewayError:
        return "/.invalid-gateway-key-path"  # nothing can be leased below it


@dataclass
class _Cached:
    key: GatewayKey | None
    keys: KeySet | None
    read_at: float


class RepositoryKeys:
    """Gateway keys and signing key sets per repository, from the registry and Vault."""

    def __init__(
        self,
        registry: RepositoryRegistry,
        key_store: KeyStore,
        *,
        ttl_s: float,
        refresh_min_s: float,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._registry = registry
        self._key_store = key_store
        self._ttl_s = ttl_s
        self._refresh_min_s = refresh_min_s
        self._clock = clock
        self._cache: dict[str, _Cached] = {}
        self._lock = threading.Lock()

    def _read(self, fqrn: str) -> _Cached:
        repository = self._registry.get(fqrn)
        if repository is None or repository.status != "ready":
            return _Cached(None, None, self._clock())
        owner = KeyOwner.for_repository(repository.kind, repository.owner_subject, repository.group)
        try:
            fields = self._key_store.read_fields(owner, fqrn)
        except KeysNotFound:
            return _Cached(None, None, self._clock())
        keys = keyset_from_fields(fields)
        if keys.gateway_key is None:
            return _Cached(None, keys, self._clock())
        try:
            key_id, secret = parse_gateway_key(keys.gateway_key)
        except KeyFileError:
            return _Cached(None, keys, self._clock())
        path = _key_path(fqrn, fields.get(FIELD_GATEWAY_KEY_PATH))
        return _Cached(GatewayKey(fqrn, key_id, secret, path), keys, self._clock())

    def _entry(self, fqrn: str, *, refresh: bool) -> _Cached:
        with self._lock:
            cached = self._cache.get(fqrn)
        now = self._clock()
        stale = cached is None or now - cached.read_at > self._ttl_s
        may_refresh = cached is None or now - cached.read_at >= self._refresh_min_s
        if stale or (refresh and may_refresh):
            cached = self._read(fqrn)
            with self._lock:
                self._cache[fqrn] = cached
        assert cached is not None
        return cached

    def gateway_key(self, fqrn: str, key_id: str, *, refresh: bool = False) -> GatewayKey:
        """The repository's key if its id is `key_id`; Vault is read again once on a miss."""
        entry = self._entry(fqrn, refresh=refresh)
        if entry.key is None or entry.key.key_id != key_id:
            entry = self._entry(fqrn, refresh=True)
        if entry.key is None:
            raise GatewayError(
                f"invalid_repo: {fqrn} is not a repository of this gateway (or has no "
                "gateway key): check the repository name"
            )
        if entry.key.key_id != key_id:
            raise GatewayError(
                f"invalid_key: key {key_id!r} may not publish to {fqrn}: use the repository's "
                f"{fqrn}.gw key"
            )
        return entry.key

    def known_key(self, fqrn: str) -> GatewayKey | None:
        """The repository's gateway key as cached (read if absent), None if it has none."""
        return self._entry(fqrn, refresh=False).key

    def signing_keys(self, fqrn: str) -> KeySet:
        """The key set that signs the repository's manifests (read fresh from the cache)."""
        entry = self._entry(fqrn, refresh=False)
        if entry.keys is None:
            entry = self._entry(fqrn, refresh=True)
        if entry.keys is None:
            raise GatewayError(f"the keys of {fqrn} are not in Vault: provision it again")
        return entry.keys
