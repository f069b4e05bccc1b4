"""The registry-backed RepositoryLookup on a real SQLite registry database."""

from __future__ import annotations

from pathlib import Path

import pytest

from bridge.registry_lookup import RegistryRepositoryLookup, RepositoryNotReady
from bridge.repositories import RepositoryTarget
from service.repositories import RepositoryClaim, RepositoryRegistry


def test_lookup_follows_the_registry(tmp_path: Path) -> None:
    registry = RepositoryRegistry.open_url(f"sqlite:///{tmp_path / 'registry.sqlite3'}")
    try:
        registry.claim(
            RepositoryClaim(
                fqrn="alice.sw.example.org",
                kind="personal",
                owner_subject="sub-alice",
                owner_username="alice",
                bucket="alice-bucket",
            )
        )
        lookup = RegistryRepositoryLookup(registry)
        assert lookup.repository_for_bucket("nobody-bucket") is None
        with pytest.raises(RepositoryNotReady, match="no recorded bucket owner"):
            lookup.repository_for_bucket("alice-bucket")
        registry.set_bucket_owner("alice.sw.example.org", "alice-rgw")
        assert lookup.repository_for_bucket("alice-bucket") == RepositoryTarget(
            fqrn="alice.sw.example.org", bucket="alice-bucket", owner_id="alice-rgw"
        )
        registry.set_status("alice.sw.example.org", "deprovisioned")
        assert lookup.repository_for_bucket("alice-bucket") is None
    finally:
        registry.close()
