"""A read-only HTTP server for stratum-0 storage: /cvmfs/<fqrn>/... from <root>/<fqrn>/...

Run as `python -m stack.stratum0_server --root DIR --port N`; GET and HEAD only, no listings;
validators (ETag, Last-Modified) and 304s, so a Squid in front revalidates instead of refetching.
"""

from __future__ import annotations

import argparse
import email.utils
import io
import os
import re
import urllib.parse
from email.message import Message
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import BinaryIO

from cvmfs.http_cache import content_headers

HEALTH_PATH = "/healthz"
COPY_BLOCK = 1 << 20
_SINGLE_RANGE = re.compile(r"bytes=(\d*)-(\d*)")


def resolve(root: Path, url_path: str) -> Path | None:
    """The regular file under `root` that `url_path` names, or None (missing or not allowed)."""
    path = urllib.parse.unquote(urllib.parse.urlsplit(url_path).path)
    parts = path.split("/")
    # "", "cvmfs", fqrn, at least one name below it
    if len(parts) < 4 or parts[0] != "" or parts[1] != "cvmfs":
        return None
    names = parts[2:]
    if any(name in ("", ".", "..") or "\0" in name or "\\" in name for name in names):
        return None
    candidate = root.joinpath(*names)
    try:
        real = candidate.resolve(strict=True)
    except (OSError, RuntimeError):
        return None
    # A symlink must not lead out of the served tree.
    if not real.is_relative_to(root.resolve()) or not real.is_file():
        return None
    return real


def entity_tag(stat: os.stat_result) -> str:
    """A strong validator that changes whenever the file does: writers replace a manifest by
    renaming a new file over it (a new inode), and objects never change."""
    return f'"{stat.st_ino:x}-{stat.st_mtime_ns:x}-{stat.st_size:x}"'


def not_modified(headers: Message, stat: os.stat_result) -> bool:
    """Whether a conditional GET/HEAD may be answered 304 (RFC 9110 §13.2.2: If-None-Match
    decides when present). Squid revalidates an expired manifest with these, as with Apache.

    If-Modified-Since alone answers 304 only for a file last changed in a whole second before
    the given date: Last-Modified has one-second resolution, and a manifest replaced within the
    second a cache fetched it has the same Last-Modified as the copy the cache holds.
    """
    tags = headers.get("If-None-Match")
    if tags is not None:
        wanted = {tag.strip().removeprefix("W/") for tag in tags.split(",")}
        return "*" in wanted or entity_tag(stat) in wanted
    since = headers.get("If-Modified-Since")
    if since is None:
        return False
    try:
        date = email.utils.parsedate_to_datetime(since)
    except (TypeError, ValueError):
        return False  # an invalid date is ignored (RFC 9110 §13.1.3)
    if date.tzinfo is None:
        return False
    return int(stat.st_mtime) < int(date.timestamp())


class Unsatisfiable(ValueError):
    """A byte range that starts beyond the end of the file (HTTP 416)."""


def byte_range(header: str | None, size: int) -> tuple[int, int] | None:
    """The inclusive (first, last) byte of a single `Range: bytes=...` header, or None to serve
    the whole file (no header, several ranges, or an invalid one: RFC 9110 §14.2 lets a server
    ignore those). Raises Unsatisfiable for a range that starts past the end.
    """
    match = _SINGLE_RANGE.fullmatch(header.strip()) if header is not None else None
    if match is None or match.group(1) == match.group(2) == "":
        return None
    first_text, last_text = match.groups()
    if not first_text:  # the last N bytes
        suffix = int(last_text)
        if suffix == 0 or size == 0:
            raise Unsatisfiable(f"bytes=-{suffix} of {size}")
        return max(size - suffix, 0), size - 1
    first = int(first_text)
    last = int(last_text) if last_text else size - 1
    if last_text and last < first:
        return None
    if first >= size:
        raise Unsatisfiable(f"bytes={first}- of {size}")
    return first, min(last, size - 1)


def make_handler(root: Path) -> type[BaseHTTPRequestHandler]:
    class Stratum0Handler(BaseHTTPRequestHandler):
        server_version = "cvmfs-svc-stratum0/1"
        protocol_version = "HTTP/1.1"

        def do_GET(self) -> None:
            self._serve(send_body=True)

        def do_HEAD(self) -> None:
            self._serve(send_body=False)

        def _refuse(self) -> None:
            self.send_response(HTTPStatus.METHOD_NOT_ALLOWED)
            self.send_header("Allow", "GET, HEAD")
            self.send_header("Content-Length", "0")
            self.end_headers()

        do_POST = do_PUT = do_DELETE = do_PATCH = do_OPTIONS = _refuse

        def _serve(self, send_body: bool) -> None:
            if self.path == HEALTH_PATH:
                self._small(HTTPStatus.OK, b"ok\n", send_body)
                return
            path = resolve(root, self.path)
            if path is None:
                self._small(HTTPStatus.NOT_FOUND, b"not found\n", send_body)
                return
            try:
                handle = path.open("rb")
            except OSError:
                self._small(HTTPStatus.NOT_FOUND, b"not found\n", send_body)
                return
            with handle:
                stat = os.fstat(handle.fileno())
                size = stat.st_size
                validators = {
                    "ETag": entity_tag(stat),
                    "Last-Modified": email.utils.formatdate(stat.st_mtime, usegmt=True),
                }
                if not_modified(self.headers, stat):
                    self.send_response(HTTPStatus.NOT_MODIFIED)
                    for key, value in {**content_headers(path.name), **validators}.items():
                        if key != "Content-Type":
                            self.send_header(key, value)
                    self.end_headers()
                    return
                try:
                    wanted = byte_range(self.headers.get("Range"), size)
                except Unsatisfiable:
                    self.send_response(HTTPStatus.REQUESTED_RANGE_NOT_SATISFIABLE)
                    self.send_header("Content-Range", f"bytes */{size}")
                    self.send_header("Content-Length", "0")
                    self.end_headers()
                    return
                first, last = wanted if wanted is not None else (0, size - 1)
                self.send_response(HTTPStatus.PARTIAL_CONTENT if wanted else HTTPStatus.OK)
                for key, value in {**content_headers(path.name), **validators}.items():
                    self.send_header(key, value)
                self.send_header("Accept-Ranges", "bytes")
                if wanted is not None:
                    self.send_header("Content-Range", f"bytes {first}-{last}/{size}")
                self.send_header("Content-Length", str(max(last - first + 1, 0)))
                self.end_headers()
                if send_body:
                    handle.seek(first)
                    _copy(handle, self.wfile, last - first + 1)

        def _small(self, status: HTTPStatus, body: bytes, send_body: bool) -> None:
            self.send_response(status)
            self.send_header("Content-Type", "text/plain")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            if send_body:
                self.wfile.write(body)

    return Stratum0Handler


def _copy(source: BinaryIO, target: io.BufferedIOBase, count: int) -> None:
    while count > 0:
        block = source.read(min(count, COPY_BLOCK))
        if not block:
            return
        target.write(block)
        count -= len(block)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--root", type=Path, required=True, help="directory holding <fqrn>/")
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--host", default="127.0.0.1")
    args = parser.parse_args(argv)
    server = ThreadingHTTPServer((args.host, args.port), make_handler(args.root.resolve()))
    server.daemon_threads = True
    with server:
        server.serve_forever()


if __name__ == "__main__":
    main()
