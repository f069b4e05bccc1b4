"""Provenance looked up for a set of paths and below directories (the sync plan's queries), on
SQLite and PostgreSQL."""

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


def test_files_at_and_near_return_only_the_asked_paths_of_that_repository(
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

    # files_near: the asked paths, and what is strictly below the asked directories.
    near = ["/a", "/a/b", "/a/b/c", "/a/b/c/d", "/a/b/\u00fc", "/a/bc", "/a/b0", "/a0", "/b"]
    registry.record_sync(ALICE.fqrn, [record(p) for p in near], removed=[])
    registry.record_sync(CMS.fqrn, [record("/a/b/x", etag="cms")], removed=[])
    found = registry.files_near(ALICE.fqrn, paths=["/a", "/nothing"], below=["/a/b", "/b"])
    assert sorted(found) == ["/a", "/a/b/c", "/a/b/c/d", "/a/b/\u00fc"]
    assert [f.path for f in registry.files(ALICE.fqrn, "/a/b/")] == sorted(found)[1:]
    # The test databases order paths by code point (SQLite; PostgreSQL made with C.UTF-8); the
    # queries a linguistic collation gets instead (COLLATE "C") are forced here, as no such
    # database is at hand.
    registry._paths_by_code_point = False
    assert registry.files_near(ALICE.fqrn, paths=["/a"], below=["/a/b", "/b"]) == found
    assert [f.path for f in registry.files(ALICE.fqrn, "/a/b/")] == sorted(found)[1:]
    assert registry.count_files(ALICE.fqrn) == len(paths) + len(near)
    assert registry.count_files(CMS.fqrn) == 2
