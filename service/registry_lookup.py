"""The bridge's bucket → repository lookup, backed by the registry of repositories."""

from __future__ import annotations

from bridge.repositories import RepositoryTarget
from service.repositories import RepositoryRegistry


class RegistryLookup:
    """Only ready repositories whose bucket owner is known receive events."""

    def __init__(self, registry: RepositoryRegistry) -> None:
        self._registry = registry

    def repository_for_bucket(self, bucket: str) -> RepositoryTarget | None:
        repository = self._registry.by_bucket(bucket)
        if repository is None or repository.status != "ready":
            return None
        if repository.bucket_owner_id is None:
            return None
        return RepositoryTarget(
            fqrn=repository.fqrn, bucket=repository.bucket, owner_id=repository.bucket_owner_id
        )
