"""What the bridge needs to know about repositories: which one a bucket feeds, and its owner.

`RepositoryLookup` is the seam: the service backs it with its registry of repositories.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Protocol


@dataclass(frozen=True)
class RepositoryTarget:
    fqrn: str
    bucket: str
    # The S3 (RGW) user id that owns the bucket, as RGW reports it in `ownerIdentity`.
    owner_id: str


class RepositoryLookup(Protocol):
    def repository_for_bucket(self, bucket: str) -> RepositoryTarget | None:
        """The repository fed by `bucket`, or None when no repository uses it."""
        ...


class StaticRepositoryLookup:
    """A fixed bucket → repository table (development, and tests' injection point)."""

    def __init__(self, targets: Mapping[str, RepositoryTarget]) -> None:
        self._targets = dict(targets)

    def repository_for_bucket(self, bucket: str) -> RepositoryTarget | None:
        return self._targets.get(bucket)
