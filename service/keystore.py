"""Repository key sets in Vault/OpenBao KV v2, at the paths the service we replace uses.

Writes are check-and-set with version 0 ("only if absent"), so a retried or duplicated
provisioning step can never replace a repository's keys: it reads back the first key set.
"""

from __future__ import annotations

import logging
import re
from typing import Literal

import hvac
import hvac.exceptions
from pydantic import BaseModel, ConfigDict, SecretStr, model_validator
from requests.exceptions import RequestException

from cvmfs.errors import CvmfsError
from cvmfs.keys import KeySet, validate_keyset
from service.identity import is_path_segment
from service.settings import VaultSettings

log = logging.getLogger(__name__)

# Vault field name ↔ KeySet attribute (the first four are the INFN service's field names).
FIELD_PUBLIC_KEY = "publicKey"  # <fqrn>.pub (master public key)
FIELD_MASTER_KEY = "masterKey"  # <fqrn>.masterkey
FIELD_CERTIFICATE = "certificateKey"  # <fqrn>.crt
FIELD_GATEWAY_KEY = "gatewayKey"  # <fqrn>.gw line
FIELD_REPOSITORY_KEY = "repositoryKey"  # <fqrn>.key (signs manifests); not in the INFN set
# Optional: the sub path the gateway key may lease (`/sub`); absent means the whole repository.
FIELD_GATEWAY_KEY_PATH = "gatewayKeyPath"
_FIELDS = {
    FIELD_PUBLIC_KEY: "master_public_pem",
    FIELD_MASTER_KEY: "master_private_pem",
    FIELD_CERTIFICATE: "certificate_pem",
    FIELD_REPOSITORY_KEY: "repository_private_pem",
    FIELD_GATEWAY_KEY: "gateway_key",
}
_FQRN = re.compile(r"^[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?(\.[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?)+$")


class KeystoreError(Exception):
    """A key-store operation failed; the message says what to check."""


class UnsafeKeyPath(KeystoreError):
    """A subject, group or fqrn cannot be used in a Vault path."""


class KeysNotFound(KeystoreError):
    pass


class VaultUnavailable(KeystoreError):
    """Vault did not answer (or answered with a server error): retry later."""


def _check_segment(value: str, what: str) -> str:
    # Subjects and groups come from token claims; group paths are checked segment by segment.
    if not is_path_segment(value):
        raise UnsafeKeyPath(f"{what} {value[:80]!r} cannot be used in a Vault path")
    return value


def check_fqrn(fqrn: str) -> str:
    if not _FQRN.match(fqrn) or len(fqrn) > 253:
        raise UnsafeKeyPath(f"repository name {fqrn[:80]!r} cannot be used in a Vault path")
    return fqrn


class KeyOwner(BaseModel):
    """Whose keys: a user's (by subject) or a group's (by normalised group path)."""

    model_config = ConfigDict(frozen=True)

    kind: Literal["personal", "group"]
    subject: str | None = None
    group: str | None = None

    @model_validator(mode="after")
    def _check(self) -> KeyOwner:
        if self.kind == "personal":
            if self.subject is None or self.group is not None:
                raise ValueError("a personal key owner has a subject and no group")
            _check_segment(self.subject, "subject")
        else:
            if self.group is None or self.subject is not None:
                raise ValueError("a group key owner has a group and no subject")
            for segment in self.group.split("/"):
                _check_segment(segment, "group")
        return self

    @classmethod
    def personal(cls, subject: str) -> KeyOwner:
        return cls(kind="personal", subject=subject)

    @classmethod
    def of_group(cls, group: str) -> KeyOwner:
        return cls(kind="group", group=group.strip().strip("/"))

    @classmethod
    def for_repository(
        cls, kind: Literal["personal", "group"], owner_subject: str, group: str | None
    ) -> KeyOwner:
        """From an AuthorizedProvisionRequest or a registry Repository (same three fields)."""
        if kind == "group":
            if group is None:
                raise ValueError("a group repository needs its group")
            return cls.of_group(group)
        return cls.personal(owner_subject)


# The service itself owns unpacked repositories (`unpacked.<domain>`): their keys live in Vault
# like every other repository's, at `<mount>/data/groups/cvmfs-service/cvmfs_keys/<fqrn>`.
SERVICE_KEY_OWNER = KeyOwner.of_group("cvmfs-service")


def unpacked_fqrn(repository_domain: str) -> str:
    """The repository image unpacks go into (DUCC layout)."""
    return f"unpacked.{repository_domain}"


def secret_path(owner: KeyOwner, fqrn: str) -> str:
    """The KV v2 path inside the mount (the API path is `<mount>/data/<this>`).

    Personal: `<subject>/cvmfs_keys/<fqrn>`; group: `groups/<group>/cvmfs_keys/<fqrn>`, where
    a sub-group `cms/production` becomes nested segments `groups/cms/production/...`.
    """
    check_fqrn(fqrn)
    if owner.kind == "personal":
        assert owner.subject is not None
        return f"{owner.subject}/cvmfs_keys/{fqrn}"
    assert owner.group is not None
    return f"groups/{owner.group}/cvmfs_keys/{fqrn}"


def keyset_to_fields(keys: KeySet) -> dict[str, str]:
    """Vault secret fields for a key set; absent parts (None) are left out."""
    fields = {name: getattr(keys, attribute) for name, attribute in _FIELDS.items()}
    return {name: value for name, value in fields.items() if value is not None}


def keyset_from_fields(fields: dict[str, object]) -> KeySet:
    """A KeySet from Vault fields; publicKey and certificateKey are required."""
    values: dict[str, str | None] = {}
    for name, attribute in _FIELDS.items():
        value = fields.get(name)
        if value is not None and not isinstance(value, str):
            raise KeystoreError(f"Vault field {name!r} is not a string")
        values[attribute] = value
    if values["master_public_pem"] is None or values["certificate_pem"] is None:
        raise KeystoreError(
            f"the stored key set lacks {FIELD_PUBLIC_KEY!r} or {FIELD_CERTIFICATE!r}"
        )
    keys = KeySet(
        master_private_pem=values["master_private_pem"],
        master_public_pem=values["master_public_pem"],
        repository_private_pem=values["repository_private_pem"],
        certificate_pem=values["certificate_pem"],
        gateway_key=values["gateway_key"],
    )
    try:
        validate_keyset(keys)
    except CvmfsError as error:
        raise KeystoreError(f"the stored key set is inconsistent: {error}") from error
    return keys


def vault_client(settings: VaultSettings, token: SecretStr | None = None) -> hvac.Client:
    """An hvac client for settings.addr with `token` (default: settings.token)."""
    token = token or settings.token
    if token is None:
        raise KeystoreError("no Vault token: set vault.token (CVMFS_SVC_VAULT__TOKEN)")
    return hvac.Client(url=settings.addr, token=token.get_secret_value())


# Errors that mean Vault did not answer (down, unreachable, sealed, failing): transient.
VAULT_UNAVAILABLE = (
    RequestException,
    hvac.exceptions.InternalServerError,
    hvac.exceptions.VaultDown,
)


def unavailable_reason(client: hvac.Client, doing: str, error: Exception) -> str:
    """Which Vault and what for. The run's state message and a failed provision's reason (which
    its user sees) carry it; whether to retry is the operator's line (flows/failure_hint.py)."""
    kind = type(error).__name__
    return f"Vault at {client.url} did not answer {doing} ({kind}): is it up and unsealed?"


class KeyStore:
    """Reads and writes repository key sets in one KV v2 mount."""

    def __init__(self, client: hvac.Client, mount: str = "secret") -> None:
        self._client = client
        self._mount = mount

    @classmethod
    def from_settings(cls, settings: VaultSettings) -> KeyStore:
        return cls(vault_client(settings), settings.kv_mount)

    @property
    def mount(self) -> str:
        return self._mount

    def store_if_absent(self, owner: KeyOwner, fqrn: str, keys: KeySet) -> tuple[KeySet, bool]:
        """Store `keys` unless a key set is already there; returns (stored key set, created).

        The stored key set is read back in both cases, so the caller always continues with
        the keys that are really in Vault.
        """
        path = secret_path(owner, fqrn)
        try:
            self._client.secrets.kv.v2.create_or_update_secret(
                path=path, secret=keyset_to_fields(keys), cas=0, mount_point=self._mount
            )
            created = True
        except hvac.exceptions.InvalidRequest as error:
            # cas=0 refused: a version exists already. Anything else is a real error.
            if "check-and-set" not in str(error):
                raise KeystoreError(f"Vault refused writing keys at {path}: {error}") from error
            created = False
        except (hvac.exceptions.VaultError, RequestException) as error:
            raise self._translate(error, path) from error
        try:
            stored = self.read(owner, fqrn)
        except KeysNotFound as error:
            # cas=0 failed yet nothing is readable: the current version was soft-deleted.
            raise KeystoreError(
                f"a deleted key set exists at {self._mount}/data/{path}: undelete it, or "
                f"destroy it (KeyStore.destroy) before provisioning {fqrn} again"
            ) from error
        log.info("event=keys_stored fqrn=%s path=%s created=%s", fqrn, path, created)
        return stored, created

    def read(self, owner: KeyOwner, fqrn: str) -> KeySet:
        return keyset_from_fields(self.read_fields(owner, fqrn))

    def read_fields(self, owner: KeyOwner, fqrn: str) -> dict[str, object]:
        """The raw fields of the key set (with optional ones such as gatewayKeyPath)."""
        path = secret_path(owner, fqrn)
        try:
            response = self._client.secrets.kv.v2.read_secret_version(
                path=path, mount_point=self._mount, raise_on_deleted_version=True
            )
        except hvac.exceptions.InvalidPath as error:
            raise KeysNotFound(f"no keys for {fqrn} at {self._mount}/data/{path}") from error
        except (hvac.exceptions.VaultError, RequestException) as error:
            raise self._translate(error, path) from error
        fields: dict[str, object] = response["data"]["data"]
        return fields

    def exists(self, owner: KeyOwner, fqrn: str) -> bool:
        try:
            self.read(owner, fqrn)
        except KeysNotFound:
            return False
        return True

    def destroy(self, owner: KeyOwner, fqrn: str) -> None:
        """Delete every version of the key set (after a deprovisioned repository's grace)."""
        path = secret_path(owner, fqrn)
        try:
            self._client.secrets.kv.v2.delete_metadata_and_all_versions(
                path=path, mount_point=self._mount
            )
        except (hvac.exceptions.VaultError, RequestException) as error:
            raise self._translate(error, path) from error
        log.info("event=keys_destroyed fqrn=%s path=%s", fqrn, path)

    def _translate(self, error: Exception, path: str) -> KeystoreError:
        if isinstance(error, hvac.exceptions.Forbidden):
            return KeystoreError(
                f"the Vault token may not access {self._mount}/data/{path}: check its policies"
            )
        if isinstance(error, VAULT_UNAVAILABLE):
            return VaultUnavailable(unavailable_reason(self._client, f"for {path}", error))
        return KeystoreError(f"Vault error for {path}: {error}")
