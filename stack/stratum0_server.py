"""A read-only HTTP server for stratum-0 storage: /cvmfs/<fqrn>/... from <root>/<fqrn>/...

Run as `python -m stack.stratum0_server --root DIR --port N`; GET and HEAD only, no listings.
"""

from __future__ import annotations

import argparse
import shutil
import urllib.parse
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

from cvmfs.http_cache import content_headers

HEALTH_PATH = "/healthz"


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
                size = path.stat().st_size
                self.send_response(HTTPStatus.OK)
                for key, value in content_headers(path.name).items():
                    self.send_header(key, value)
                self.send_header("Content-Length", str(size))
                self.end_headers()
                if send_body:
                    shutil.copyfileobj(handle, self.wfile)

        def _small(self, status: HTTPStatus, body: bytes, send_body: bool) -> None:
            self.send_response(status)
            self.send_header("Content-Type", "text/plain")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            if send_body:
                self.wfile.write(body)

    return Stratum0Handler


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
