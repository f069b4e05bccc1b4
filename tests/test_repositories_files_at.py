"""Provenance looked up for a set of paths (the sync plan's query), on SQLite and PostgreSQL."""

from __future__ import annotations

from service.repositories import FileProvenance, RepositoryRegistry
from tests.test_repositories import (  # noqa: F401 (fixtures: both backends)
    ALICE,
    CMS,
    postgres_socket_dir,
    registry,
    settings,
)


def record(path: str, etag: str = "e") -> FileProvenance:
    return FileProvenance(
        path=path, s3_key=f"cvmfs{path}", etag=etag, version_id=None, size_bytes=1, revision=2
    )


def test_files_at_returns_only_the_asked_paths_of_that_repository(
    registry: RepositoryRegistry,  # noqa: F811
) -> None:
    registry.claim(ALICE)
    registry.claim(CMS)
    paths = [f"/d/f{n:04d}" for n in range(1200)]  # more than one bounded query
    registry.record_sync(ALICE.fqrn, [record(p) for p in paths], removed=[])
    registry.record_sync(CMS.fqrn, [record("/d/f0001", etag="cms")], removed=[])
    found = registry.files_at(ALICE.fqrn, [*paths[::2], "/d/absent", "/d/f0001"])
    assert sorted(found) == sorted({*paths[::2], "/d/f0001"})
    assert {f.etag for f in found.values()} == {"e"}  # nothing of the other repository
    assert registry.files_at(CMS.fqrn, ["/d/f0001"])["/d/f0001"].etag == "cms"
    assert registry.files_at(ALICE.fqrn, []) == {}
