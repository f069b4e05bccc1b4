"""Per-repository Vault access for publishers: a policy that reads one key set and nothing
else, a token role bound to it, publisher tokens minted from that role, and revocation.

Least privilege per repository (peers.md §1.3 item 16: one AppRole could read every key set).
"""

from __future__ import annotations

import logging

import hvac
import hvac.exceptions
from pydantic import BaseModel, ConfigDict, SecretStr
from requests.exceptions import RequestException

from service.keystore import (
    VAULT_UNAVAILABLE,
    KeyOwner,
    KeystoreError,
    VaultUnavailable,
    check_fqrn,
    secret_path,
    unavailable_reason,
)

log = logging.getLogger(__name__)

POLICY_PREFIX = "cvmfs-publisher-"
DEFAULT_TOKEN_TTL = "1h"
DEFAULT_TOKEN_MAX_TTL = "24h"


def publisher_policy_name(fqrn: str) -> str:
    """The policy (and token role) name of a repository's publisher."""
    return POLICY_PREFIX + check_fqrn(fqrn)


def publisher_policy(mount: str, owner: KeyOwner, fqrn: str) -> str:
    """HCL: read exactly this repository's key set (current version) and nothing else.

    No wildcard, no `list`, no metadata access: the path is matched exactly, so neither other
    repositories of the same owner nor sub-paths are covered.
    """
    path = f"{mount}/data/{secret_path(owner, fqrn)}"
    return f'path "{path}" {{\n  capabilities = ["read"]\n}}\n'


class PublisherToken(BaseModel):
    """A token that can read one repository's keys; `token` is secret, `accessor` is not."""

    model_config = ConfigDict(frozen=True)

    token: SecretStr
    accessor: str
    policies: tuple[str, ...]
    ttl_s: int


class PublisherAccess:
    """Creates, mints and revokes per-repository publisher access in Vault."""

    def __init__(self, client: hvac.Client, mount: str = "secret") -> None:
        self._client = client
        self._mount = mount

    def grant(self, owner: KeyOwner, fqrn: str, max_ttl: str = DEFAULT_TOKEN_MAX_TTL) -> str:
        """Write the policy and the token role (idempotent: rewriting is harmless)."""
        name = publisher_policy_name(fqrn)
        try:
            self._client.sys.create_or_update_policy(
                name=name, policy=publisher_policy(self._mount, owner, fqrn)
            )
            # A token role lets a service token with no sudo mint orphan tokens restricted to
            # exactly this policy (orphans survive the service token's own renewal/revocation).
            self._client.auth.token.create_or_update_role(
                role_name=name,
                allowed_policies=[name],
                orphan=True,
                renewable=True,
                token_explicit_max_ttl=max_ttl,
            )
        except (hvac.exceptions.VaultError, RequestException) as error:
            raise _translate(self._client, error, f"granting publisher access to {fqrn}") from error
        log.info("event=publisher_access_granted fqrn=%s policy=%s", fqrn, name)
        return name

    def mint_token(self, fqrn: str, ttl: str = DEFAULT_TOKEN_TTL) -> PublisherToken:
        """A new publisher token for the repository (call `grant` first)."""
        name = publisher_policy_name(fqrn)
        try:
            response = self._client.auth.token.create(
                role_name=name,
                policies=[name],
                # The default policy grants only self-service on the token itself
                # (lookup/renew/revoke-self), which a long publish needs to renew it.
                no_default_policy=False,
                ttl=ttl,
                display_name=name,
                meta={"fqrn": fqrn},
            )
        except hvac.exceptions.InvalidRequest as error:
            raise KeystoreError(
                f"cannot mint a publisher token for {fqrn}: is its access granted? ({error})"
            ) from error
        except (hvac.exceptions.VaultError, RequestException) as error:
            raise _translate(
                self._client, error, f"minting a publisher token for {fqrn}"
            ) from error
        auth = response["auth"]
        return PublisherToken(
            token=SecretStr(auth["client_token"]),
            accessor=auth["accessor"],
            policies=tuple(auth["policies"]),
            ttl_s=int(auth["lease_duration"]),
        )

    def revoke(self, fqrn: str) -> None:
        """Remove the role and the policy: tokens already minted lose access at once."""
        name = publisher_policy_name(fqrn)
        try:
            self._client.auth.token.delete_role(role_name=name)
            self._client.sys.delete_policy(name=name)
        except (hvac.exceptions.VaultError, RequestException) as error:
            raise _translate(self._client, error, f"revoking publisher access to {fqrn}") from error
        log.info("event=publisher_access_revoked fqrn=%s policy=%s", fqrn, name)

    def is_granted(self, fqrn: str) -> bool:
        name = publisher_policy_name(fqrn)
        try:
            self._client.sys.read_policy(name=name)
        except hvac.exceptions.InvalidPath:
            return False
        except (hvac.exceptions.VaultError, RequestException) as error:
            raise _translate(
                self._client, error, f"reading the publisher policy of {fqrn}"
            ) from error
        return True


def _translate(client: hvac.Client, error: Exception, doing: str) -> KeystoreError:
    if isinstance(error, VAULT_UNAVAILABLE):
        return VaultUnavailable(unavailable_reason(client, f"while {doing}", error))
    if isinstance(error, hvac.exceptions.Forbidden):
        return KeystoreError(
            f"the service's Vault token may not manage policies/token roles ({doing}): "
            f"give it sys/policies/acl/{POLICY_PREFIX}* and auth/token/roles/{POLICY_PREFIX}*"
        )
    return KeystoreError(f"Vault error while {doing}: {error}")
