"""The RepositoryLookup the service runs with: bucket → repository from the registry database.

Only repositories whose bucket is wired (owner recorded) and not retired receive events.
"""

from __future__ import annotations

from bridge.errors import BridgeError
from bridge.repositories import RepositoryTarget
from service.repositories import RepositoryRegistry


class RepositoryNotReady(BridgeError):
    """The bucket's repository is still being provisioned: retry the event later."""


class RegistryRepositoryLookup:
    def __init__(self, registry: RepositoryRegistry) -> None:
        self.registry = registry

    def repository_for_bucket(self, bucket: str) -> RepositoryTarget | None:
        repository = self.registry.by_bucket(bucket)
        if repository is None or repository.status in ("deprovisioned", "failed"):
            return None
        if repository.bucket_owner_id is None:
            # Provisioning records the owner when it wires the bucket; an event can only come
            # after that, unless it is forged, so waiting costs little and refuses nothing.
            raise RepositoryNotReady(
                f"repository {repository.fqrn} has no recorded bucket owner yet "
                f"(status {repository.status}); the event is retried"
            )
        return RepositoryTarget(
            fqrn=repository.fqrn, bucket=repository.bucket, owner_id=repository.bucket_owner_id
        )
