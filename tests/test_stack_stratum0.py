"""The stratum-0 HTTP server: serves <data_dir>/stratum0/<fqrn>/ read-only under /cvmfs/<fqrn>/,
GET and HEAD only, no listings, no way out of the served tree, CVMFS content type for .cvmfs*.
"""

from __future__ import annotations

import email.utils
import http.client
import os
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from cvmfs.http_cache import CVMFS_CONTENT_TYPE, MANIFEST_MAX_AGE_S, OBJECT_MAX_AGE_S
from service.settings import Settings
from stack.stratum0_server import resolve

pytestmark = pytest.mark.stack


@dataclass(frozen=True)
class Repo:
    fqrn: str
    root: Path  # <data_dir>/stratum0/<fqrn>
    port: int


@pytest.fixture
def repo(stratum0_http: Settings) -> Iterator[Repo]:
    fqrn = f"t{uuid.uuid4().hex[:8]}.{stratum0_http.repository_domain}"
    root = stratum0_http.absolute_data_dir / "stratum0" / fqrn
    (root / "data" / "ab").mkdir(parents=True)
    (root / ".cvmfspublished").write_bytes(b"Cabc\nRdeadbeef\n--\n")
    (root / ".cvmfswhitelist").write_bytes(b"whitelist")
    (root / "data" / "ab" / "cdef0123C").write_bytes(b"\x78\x9c" + b"x" * 5000)
    yield Repo(fqrn, root, stratum0_http.stratum0.http_port)


def request(
    repo: Repo, method: str, path: str, headers: dict[str, str] | None = None
) -> tuple[int, dict[str, str], bytes]:
    conn = http.client.HTTPConnection("127.0.0.1", repo.port, timeout=10)
    try:
        conn.request(method, path, headers=headers or {})
        response = conn.getresponse()
        return response.status, dict(response.getheaders()), response.read()
    finally:
        conn.close()


def test_manifest_is_served_with_the_cvmfs_content_type(repo: Repo) -> None:
    status, headers, body = request(repo, "GET", f"/cvmfs/{repo.fqrn}/.cvmfspublished")
    assert status == 200
    assert headers["Content-Type"] == CVMFS_CONTENT_TYPE
    assert body == (repo.root / ".cvmfspublished").read_bytes()
    status, headers, _ = request(repo, "GET", f"/cvmfs/{repo.fqrn}/.cvmfswhitelist")
    assert (status, headers["Content-Type"]) == (200, CVMFS_CONTENT_TYPE)


def test_data_objects_are_served_whole_and_head_has_no_body(repo: Repo) -> None:
    path = f"/cvmfs/{repo.fqrn}/data/ab/cdef0123C"
    status, headers, body = request(repo, "GET", path)
    assert status == 200
    assert headers["Content-Type"] == "application/octet-stream"
    assert body == (repo.root / "data/ab/cdef0123C").read_bytes()
    status, headers, body = request(repo, "HEAD", path)
    assert (status, body) == (200, b"")
    assert headers["Content-Length"] == str(len(b"\x78\x9c" + b"x" * 5000))


def test_cache_headers_are_the_stock_web_servers(repo: Repo) -> None:
    _, manifest, _ = request(repo, "GET", f"/cvmfs/{repo.fqrn}/.cvmfspublished")
    _, data, _ = request(repo, "GET", f"/cvmfs/{repo.fqrn}/data/ab/cdef0123C")
    assert manifest["Cache-Control"] == f"max-age={MANIFEST_MAX_AGE_S}"
    assert data["Cache-Control"] == f"max-age={OBJECT_MAX_AGE_S}"


@pytest.mark.parametrize(
    ("header", "expected"),
    [("bytes=0-9", (0, 9)), ("bytes=4990-", (4990, 5001)), ("bytes=-2", (5000, 5001))],
)
def test_a_byte_range_is_served_partially(
    repo: Repo, header: str, expected: tuple[int, int]
) -> None:
    content = (repo.root / "data/ab/cdef0123C").read_bytes()
    status, headers, body = request(
        repo, "GET", f"/cvmfs/{repo.fqrn}/data/ab/cdef0123C", {"Range": header}
    )
    first, last = expected
    assert status == 206
    assert headers["Content-Range"] == f"bytes {first}-{last}/{len(content)}"
    assert body == content[first : last + 1]


def test_ranges_past_the_end_or_unparsed(repo: Repo) -> None:
    path = f"/cvmfs/{repo.fqrn}/data/ab/cdef0123C"
    status, headers, _ = request(repo, "GET", path, {"Range": "bytes=99999-"})
    assert (status, headers["Content-Range"]) == (416, "bytes */5002")
    for ignored in ("bytes=0-1,5-6", "bytes=9-2", "lines=1-2"):
        status, _, body = request(repo, "GET", path, {"Range": ignored})
        assert (status, len(body)) == (200, 5002)


@pytest.mark.parametrize("suffix", ["", "/", "/data", "/data/", "/data/ab"])
def test_directories_are_never_listed(repo: Repo, suffix: str) -> None:
    status, _, body = request(repo, "GET", f"/cvmfs/{repo.fqrn}{suffix}")
    assert status == 404
    assert b"cdef0123C" not in body and b".cvmfs" not in body


@pytest.mark.parametrize(
    "template",
    [
        "/cvmfs/{fqrn}/../../stratum0-http/stratum0-http.pid",
        "/cvmfs/{fqrn}/%2e%2e/%2e%2e/stratum0-http/stratum0-http.pid",
        "/cvmfs/..%2f..%2fstratum0-http/stratum0-http.pid",
        "/cvmfs/{fqrn}/data/ab/..%2f..%2f.cvmfspublished",
        "/cvmfs/{fqrn}/escape/stratum0-http.pid",
        "/{fqrn}/.cvmfspublished",
        "/cvmfs/{fqrn}//.cvmfspublished",
    ],
)
def test_paths_outside_the_served_tree_are_refused(repo: Repo, template: str) -> None:
    # A symlink inside the repository pointing out of the tree must not be followed either.
    link = repo.root / "escape"
    if not link.exists():
        os.symlink(repo.root.parent.parent / "stratum0-http", link)
    status, _, body = request(repo, "GET", template.format(fqrn=repo.fqrn))
    assert status == 404
    assert body == b"not found\n"


@pytest.mark.parametrize("method", ["POST", "PUT", "DELETE", "PATCH", "OPTIONS"])
def test_only_get_and_head_are_allowed(repo: Repo, method: str) -> None:
    status, headers, _ = request(repo, method, f"/cvmfs/{repo.fqrn}/.cvmfspublished")
    assert status == 405
    assert headers["Allow"] == "GET, HEAD"
    assert (repo.root / ".cvmfspublished").exists()


def test_resolve_accepts_only_regular_files_below_the_root(tmp_path: Path) -> None:
    (tmp_path / "r.example.org" / "data").mkdir(parents=True)
    (tmp_path / "r.example.org" / "data" / "f").write_bytes(b"x")
    (tmp_path / "outside").write_bytes(b"secret")
    assert resolve(tmp_path, "/cvmfs/r.example.org/data/f") == tmp_path / "r.example.org/data/f"
    assert resolve(tmp_path, "/cvmfs/r.example.org/data/f?x=1") is not None
    assert resolve(tmp_path, "/cvmfs/r.example.org/data") is None
    assert resolve(tmp_path, "/cvmfs/outside") is None  # not below a repository
    assert resolve(tmp_path, "/cvmfs/r.example.org/../outside") is None
    assert resolve(tmp_path, "/cvmfs/r.example.org/data/f\0") is None


def test_revalidation_answers_304_until_the_file_is_replaced(repo: Repo) -> None:
    # What a Squid in front does once its copy of the manifest is older than max-age=61.
    path = f"/cvmfs/{repo.fqrn}/.cvmfspublished"
    _, first, _ = request(repo, "GET", path)
    assert first["Last-Modified"].endswith(" GMT")
    status, headers, body = request(repo, "GET", path, {"If-None-Match": first["ETag"]})
    assert (status, body) == (304, b"")
    assert headers["ETag"] == first["ETag"]
    assert headers["Cache-Control"] == f"max-age={MANIFEST_MAX_AGE_S}"
    # A publish renames a new manifest over the old one, within the same second here.
    replacement = repo.root / ".cvmfspublished.new"
    replacement.write_bytes(b"Cdef\nRdeadbeef\n--\n")
    replacement.replace(repo.root / ".cvmfspublished")
    status, headers, body = request(
        repo,
        "GET",
        path,
        {"If-None-Match": first["ETag"], "If-Modified-Since": first["Last-Modified"]},
    )
    assert (status, body) == (200, b"Cdef\nRdeadbeef\n--\n")
    assert headers["ETag"] != first["ETag"]
    # If-Modified-Since alone: the same second is not enough to say "not modified".
    status, _, _ = request(repo, "GET", path, {"If-Modified-Since": headers["Last-Modified"]})
    assert status == 200
    old = time.time() - 3600
    os.utime(repo.root / ".cvmfspublished", (old, old))
    now = email.utils.formatdate(time.time(), usegmt=True)
    status, _, body = request(repo, "GET", path, {"If-Modified-Since": now})
    assert (status, body) == (304, b"")
