"""Who is calling and what they may do: bearer JWT → Identity, and the access rules.

Rules: a personal repository belongs to its owner (token subject); a group repository is read by
the group's members, and its keys are also given to the group's managers, the members of
`<group>/<api.manager_subgroup>` (`cms/managers` with the default). Sync and rollback: owner only.
"""

from __future__ import annotations

from typing import Literal

from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer

from service.api.errors import Forbidden, Unauthenticated, Unavailable
from service.auth import AuthError, IssuerUnavailable, TokenVerifier
from service.identity import Identity
from service.repositories import Repository

Right = Literal["read", "keys", "sync", "rollback"]

# auto_error=False: a missing header gets the API's own 401 body, not FastAPI's 403.
bearer_scheme = HTTPBearer(
    auto_error=False,
    description="An access token (JWT) from the service's OIDC issuer, e.g. INDIGO IAM.",
)


def authenticate(
    verifier: TokenVerifier, credentials: HTTPAuthorizationCredentials | None
) -> tuple[Identity, str]:
    """The caller's identity and raw token, or Unauthenticated with the reason."""
    if credentials is None:
        raise Unauthenticated("missing 'Authorization: Bearer <access token>' header")
    token = credentials.credentials
    try:
        return verifier.verify(token), token
    except IssuerUnavailable as error:
        raise Unavailable(error.reason) from None
    except AuthError as error:
        # `from None`: the cause chain of a JWT error can hold decoded token parts.
        raise Unauthenticated(error.reason) from None


class Caller:
    """An authenticated caller; the raw token is kept only to forward it to provisioning."""

    def __init__(self, identity: Identity, token: str, manager_subgroup: str) -> None:
        self.identity = identity
        self._token = token
        self._manager_subgroup = manager_subgroup.strip("/")

    def __repr__(self) -> str:  # never the token
        return f"Caller(subject={self.identity.subject!r})"

    @property
    def subject(self) -> str:
        return self.identity.subject

    def token(self) -> str:
        return self._token

    @property
    def managed_groups(self) -> frozenset[str]:
        """The groups the caller manages: `atlas` for membership of `atlas/<manager_subgroup>`."""
        suffix = "/" + self._manager_subgroup
        return frozenset(g.removesuffix(suffix) for g in self.identity.groups if g.endswith(suffix))

    @property
    def member_groups(self) -> frozenset[str]:
        """The caller's groups, without the manager role's paths (`atlas/managers` names a role,
        not a group whose repository would be called `managers`)."""
        suffix = "/" + self._manager_subgroup
        return frozenset(g for g in self.identity.groups if not g.endswith(suffix))

    def is_owner(self, repository: Repository) -> bool:
        return repository.owner_subject == self.identity.subject

    def is_member(self, repository: Repository) -> bool:
        return (
            repository.kind == "group"
            and repository.group is not None
            and self.identity.is_member(repository.group)
        )

    def is_manager(self, repository: Repository) -> bool:
        return (
            repository.kind == "group"
            and repository.group is not None
            and self.identity.is_member(f"{repository.group}/{self._manager_subgroup}")
        )

    def rights(self, repository: Repository) -> list[Right]:
        owner = self.is_owner(repository)
        rights: list[Right] = []
        if owner or self.is_member(repository) or self.is_manager(repository):
            rights.append("read")
        if owner or self.is_manager(repository):
            rights.append("keys")
        if owner:
            rights += ["sync", "rollback"]
        return rights

    def require(self, repository: Repository, right: Right) -> None:
        if right in self.rights(repository):
            return
        if "read" not in self.rights(repository):
            whose = (
                f"group {repository.group!r}, and you are not a member"
                if repository.kind == "group"
                else "another user"
            )
            raise Forbidden(f"repository {repository.fqrn!r} belongs to {whose}")
        if right == "keys":
            raise Forbidden(
                f"the keys of {repository.fqrn!r} are given only to its owner or to a manager "
                f"of group {repository.group!r} (a member of "
                f"'{repository.group}/{self._manager_subgroup}')"
            )
        raise Forbidden(f"only the owner of {repository.fqrn!r} may {right} it")
