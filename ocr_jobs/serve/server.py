"""The HTTP server of ``ocr serve``, on 127.0.0.1 only.

PMTiles readers fetch an archive in byte ranges (header, directories, one tile at a time), so
the server answers ``Range: bytes=…`` with 206 and the exact bytes; Python's ``http.server``
cannot.
"""

from __future__ import annotations

import errno
import hashlib
import json
import re
import sys
import threading
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import unquote, urlsplit

from ocr_jobs.serve.ranges import ByteRange, RangeNotSatisfiable, parse_range
from ocr_jobs.serve.raster import RASTER_VARIABLES
from ocr_jobs.serve.site import MapSite, ServedFile

HOST = "127.0.0.1"
# a tile's address: digits of bounded length only (z ≤ 99, x and y < 2^z are checked after)
TILE_PATH = re.compile(
    r"/tiles/(?P<variable>\w{1,32})/(?P<z>\d{1,2})/(?P<x>\d{1,9})/(?P<y>\d{1,9})\.png"
)
CHUNK_BYTES = 1 << 20  # a whole-file GET streams in pieces of this size
# file errors that mean "no such file" to a client: a name longer than the file system takes
# (ENAMETOOLONG) or one that runs through a file (ENOTDIR) cannot name anything served
NOT_FOUND_ERRNOS = frozenset(
    {errno.ENOENT, errno.ENOTDIR, errno.EISDIR, errno.ENAMETOOLONG, errno.ELOOP}
)
FORBIDDEN_ERRNOS = frozenset({errno.EACCES, errno.EPERM})
# a map page opens a burst of tile connections at once: the listen backlog holds them all
# (Python's default, 5, drops the rest, whose clients wait out SYN retries)
LISTEN_BACKLOG = 1024
# requests are answered by a bounded pool: a burst queues for a worker, never a thread each
WORKERS = 32
# a keep-alive connection with no request for this long is closed: its worker is freed
IDLE_SECONDS = 15.0


class MapRequestHandler(BaseHTTPRequestHandler):
    """GET/HEAD for ``/``, ``/config.json``, ``/static/…``, ``/pmtiles/<name>.pmtiles`` and
    ``/tiles/<variable>/<z>/<x>/<y>.png``."""

    server: MapServer
    protocol_version = "HTTP/1.1"  # keep-alive: a map fetches many small ranges
    timeout = IDLE_SECONDS  # the socket's: an idle or stalled connection ends, freeing its worker
    # headers and body leave in separate writes: with Nagle's algorithm the body waits for the
    # client's delayed ACK of the headers (~40 ms a tile)
    disable_nagle_algorithm = True
    server_version = "ocr-serve"

    def do_GET(self) -> None:
        self._respond(body=True)

    def do_HEAD(self) -> None:
        self._respond(body=False)

    def log_message(self, format: str, *args: Any) -> None:
        self.server.log(f"{self.address_string()} {format % args}")

    def end_headers(self) -> None:
        self._headers_sent = True  # from here on a failure cannot become an error answer
        super().end_headers()

    def _respond(self, body: bool) -> None:
        """Answer one request. Whatever fails (a file name longer than the file system takes,
        an unreadable file, a bug) gets an error answer, or, once the headers are out, a
        closed connection: never an unanswered request or a traceback."""
        self._headers_sent = False
        try:
            self._route(body)
        except Exception as exc:  # the request's boundary: every failure is answered here
            self._fail(exc)

    def _fail(self, exc: Exception) -> None:
        """Answer a failed request with ``failure_status``; the server's fault, or a failure
        after the headers, is logged in one line (the access log has the rest)."""
        status, message = failure_status(exc)
        if self._headers_sent or status >= HTTPStatus.INTERNAL_SERVER_ERROR:
            self.server.log(
                f"{self.address_string()} {self.command} {self.path[:200]}: "
                f"{type(exc).__name__}: {str(exc)[:300]}"
            )
        if self._headers_sent:
            self.close_connection = True  # the client was promised bytes it will not get
            return
        try:
            self._error(status, message)
        except OSError:
            self.close_connection = True  # the client has gone

    def _route(self, body: bool) -> None:
        if not self._host_allowed():
            self._error(HTTPStatus.FORBIDDEN, "unexpected Host header")
            return
        path = unquote(urlsplit(self.path).path)
        site = self.server.site
        if path == "/":
            path = "/static/index.html"
        if path == "/config.json":
            self._send_bytes(json.dumps(site.config).encode(), "application/json", body)
        elif path.startswith("/pmtiles/"):
            name = path.removeprefix("/pmtiles/").removesuffix(".pmtiles")
            served = site.archives.get(name)
            if served is None or not path.endswith(".pmtiles"):
                self._error(HTTPStatus.NOT_FOUND, "no such archive")
            else:
                self._send_file(served, body)
        elif path.startswith("/tiles/"):
            self._send_tile(path, body)
        elif path.startswith("/static/"):
            served = site.static(path.removeprefix("/static/"))
            if served is None:
                self._error(HTTPStatus.FORBIDDEN, "path outside the served folder")
            else:
                self._send_file(served, body)
        else:
            self._error(HTTPStatus.NOT_FOUND, "not found")

    def _host_allowed(self) -> bool:
        """Only our own address: a page on another site cannot reach us by DNS rebinding."""
        host = (self.headers.get("Host") or "").strip().lower()
        port = self.server.server_address[1]
        return host in {f"{HOST}:{port}", f"localhost:{port}"}

    def _error(self, status: HTTPStatus, message: str) -> None:
        data = f"{status.value} {status.phrase}: {message}\n".encode()
        self.send_response(status)
        self.send_header("Content-Type", "text/plain; charset=utf-8")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(data)

    def _send_bytes(self, data: bytes, kind: str, body: bool) -> None:
        self.send_response(HTTPStatus.OK)
        self.send_header("Content-Type", kind)
        self.send_header("Content-Length", str(len(data)))
        self.send_header("Cache-Control", "no-cache")
        self.end_headers()
        if body:
            self.wfile.write(data)

    def _send_tile(self, path: str, body: bool) -> None:
        """``/tiles/<variable>/<z>/<x>/<y>.png`` of the risk surface: 200 with the PNG, 204
        where the tile has no data, 304 when the client's copy is current, 404 for a tile
        that cannot exist (unknown variable or level, x or y off the world)."""
        tiles = self.server.site.raster
        found = TILE_PATH.fullmatch(path)
        if tiles is None or found is None or found["variable"] not in RASTER_VARIABLES:
            self._error(HTTPStatus.NOT_FOUND, "no such tile")
            return
        z, x, y = (int(found[k]) for k in ("z", "x", "y"))
        if z not in tiles.zooms() or x >= 2**z or y >= 2**z:
            self._error(HTTPStatus.NOT_FOUND, "no such tile")
            return
        tag = hashlib.sha1(f"{tiles.stamp}|{path}".encode()).hexdigest()[:20]
        etag = f'"{tag}"'
        if self.headers.get("If-None-Match") == etag:
            self._send_empty(HTTPStatus.NOT_MODIFIED, etag)
            return
        png = tiles.png(found["variable"], z, x, y)
        if png is None:
            self._send_empty(HTTPStatus.NO_CONTENT, etag)
            return
        self.send_response(HTTPStatus.OK)
        self.send_header("Content-Type", "image/png")
        self.send_header("Content-Length", str(len(png)))
        self._cache_headers(etag)
        self.end_headers()
        if body:
            self.wfile.write(png)

    def _send_empty(self, status: HTTPStatus, etag: str) -> None:
        self.send_response(status)
        self._cache_headers(etag)
        if status != HTTPStatus.NOT_MODIFIED:
            self.send_header("Content-Length", "0")
        self.end_headers()

    def _cache_headers(self, etag: str) -> None:
        """Kept by the browser, checked again on each use: a redeploy changes the ETag."""
        self.send_header("ETag", etag)
        self.send_header("Cache-Control", "no-cache")

    def _send_file(self, served: ServedFile, body: bool) -> None:
        size, etag = served.stat()
        try:
            wanted = parse_range(self.headers.get("Range"), size)
        except RangeNotSatisfiable:
            self.send_response(HTTPStatus.REQUESTED_RANGE_NOT_SATISFIABLE)
            self.send_header("Content-Range", f"bytes */{size}")
            self.send_header("Content-Length", "0")
            self.end_headers()
            return
        if wanted is not None and self.headers.get("If-Range", etag) != etag:
            wanted = None  # the file changed since the client's first piece: send all of it
        part = wanted or ByteRange(0, size)
        # the first piece is read before any header goes out, so an unreadable file is
        # answered with its error (a HEAD reads one byte to know the same)
        first = self._read(
            served, part.start, min(part.stop, part.start + (CHUNK_BYTES if body else 1))
        )
        self.send_response(HTTPStatus.PARTIAL_CONTENT if wanted else HTTPStatus.OK)
        self.send_header("Content-Type", served.content_type)
        self.send_header("Content-Length", str(part.length))
        self.send_header("Accept-Ranges", "bytes")
        self.send_header("ETag", etag)
        self.send_header("Cache-Control", "no-cache")  # a redeploy replaces the archives
        if wanted:
            self.send_header("Content-Range", wanted.content_range(size))
        self.end_headers()
        if body:
            self.wfile.write(first)
            for start in range(part.start + len(first), part.stop, CHUNK_BYTES):
                self.wfile.write(self._read(served, start, min(part.stop, start + CHUNK_BYTES)))

    @staticmethod
    def _read(served: ServedFile, start: int, stop: int) -> bytes:
        """Bytes ``start:stop`` of the file, all of them: a file that shrank since its size
        was taken (replaced by a redeploy) is an error, not a short answer."""
        if stop <= start:
            return b""
        data = served.read(start, stop)
        if len(data) != stop - start:
            raise OSError(errno.EIO, f"read {len(data)} of {stop - start} bytes: the file changed")
        return data


def failure_status(exc: Exception) -> tuple[HTTPStatus, str]:
    """The answer to a request that failed with ``exc``: a file that cannot exist or be
    reached is not found (404), one that may not be read is forbidden (403), anything else
    is the server's fault (500). Messages give the reason, never a server path."""
    number = getattr(exc, "errno", None)
    reason = getattr(exc, "strerror", None)
    if isinstance(exc, FileNotFoundError | NotADirectoryError | IsADirectoryError) or (
        number in NOT_FOUND_ERRNOS
    ):
        return HTTPStatus.NOT_FOUND, f"not found ({reason or 'no such file'})"
    if isinstance(exc, PermissionError) or number in FORBIDDEN_ERRNOS:
        return HTTPStatus.FORBIDDEN, f"not readable ({reason or 'permission denied'})"
    if isinstance(exc, OSError):
        return (
            HTTPStatus.INTERNAL_SERVER_ERROR,
            f"could not read the file ({reason or type(exc).__name__})",
        )
    return HTTPStatus.INTERNAL_SERVER_ERROR, "internal error (see the server's log)"


class MapServer(ThreadingHTTPServer):
    """An HTTP server bound to loopback, holding the site it serves: connections wait in a
    deep listen backlog and are answered by a bounded pool of ``workers`` threads."""

    daemon_threads = True
    request_queue_size = LISTEN_BACKLOG

    def __init__(
        self,
        site: MapSite,
        port: int = 0,
        log: Callable[[str], None] | None = None,
        workers: int = WORKERS,
    ) -> None:
        self.site = site
        self.log = log or (lambda _message: None)
        self._pool = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="ocr-serve")
        super().__init__((HOST, port), MapRequestHandler)

    def process_request(self, request: Any, client_address: Any) -> None:
        """A pool worker answers the connection (socketserver's own per-connection body:
        handle, close, report what escaped)."""
        self._pool.submit(self.process_request_thread, request, client_address)

    def server_close(self) -> None:
        super().server_close()
        self._pool.shutdown(wait=False, cancel_futures=True)

    def handle_error(self, request: Any, client_address: Any) -> None:
        """One log line, not socketserver's traceback on stderr, for what escapes a request
        (the client hung up while the request was read)."""
        kind, exc, _ = sys.exc_info()
        self.log(f"{client_address[0]}: connection ended: {kind.__name__ if kind else ''}: {exc}")

    @property
    def url(self) -> str:
        return f"http://{HOST}:{self.server_address[1]}/"


@contextmanager
def serve_in_thread(site: MapSite, port: int = 0) -> Iterator[MapServer]:
    """Run a server on a background thread until the generator is closed (tests, scripts)."""
    server = MapServer(site, port)
    thread = threading.Thread(
        target=server.serve_forever, kwargs={"poll_interval": 0.05}, name="ocr-serve", daemon=True
    )
    thread.start()
    try:
        yield server
    finally:
        server.shutdown()
        server.server_close()
        thread.join(10)
