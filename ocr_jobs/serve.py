"""``ocr serve``: the map page and one environment's PMTiles on 127.0.0.1.

PMTiles readers fetch an archive in byte ranges (header, directories, one tile at a time), so
the server answers ``Range: bytes=…`` with 206 and the exact bytes; Python's ``http.server``
cannot. The page's libraries are files on local disk (``make web`` copies them from npm into
``ocr_jobs/web/vendor``); nothing is fetched from a CDN. Archives are read through the storage
resource's filesystem, so a local root and an ``s3://`` root are served the same way.
"""

from __future__ import annotations

import hashlib
import json
import mimetypes
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import unquote, urlsplit

import fsspec
import numpy as np

from ocr_assets.science.scoring import RISK_COLORS, SCORE_EDGES
from ocr_assets.science.tiling import BUILDINGS_ZOOM, CENTROIDS_ZOOM, REGIONS_ZOOM
from ocr_resources.layout import PMTILES_NAMES
from ocr_resources.storage import OcrStorage

HOST = "127.0.0.1"
WEB_DIR = Path(__file__).with_name("web")
VENDOR_DIR = WEB_DIR / "vendor"
# what `make web` copies from web/node_modules; the page loads exactly these
VENDOR_FILES: tuple[str, ...] = (
    "maplibre-gl.mjs",
    "maplibre-gl-worker.mjs",
    "maplibre-gl.css",
    "pmtiles.js",
    "topojson-client.min.js",
    "states-10m.json",
)
CHUNK_BYTES = 1 << 20  # a whole-file GET streams in pieces of this size
ARCHIVE_ZOOMS = {
    "regions": REGIONS_ZOOM,
    "building_centroids": CENTROIDS_ZOOM,
    "buildings": BUILDINGS_ZOOM,
}
CONTENT_TYPES = {
    ".mjs": "text/javascript",  # module scripts are refused under any non-JavaScript type
    ".js": "text/javascript",
    ".css": "text/css",
    ".html": "text/html; charset=utf-8",
    ".json": "application/json",
    ".pmtiles": "application/vnd.pmtiles",
    ".png": "image/png",
}


class ServeError(RuntimeError):
    """The server cannot start for this environment; the message says what to do."""


class RangeNotSatisfiable(ValueError):
    """A byte range that starts past the end of the file (answered with 416)."""


@dataclass(frozen=True)
class ByteRange:
    start: int
    stop: int  # exclusive

    @property
    def length(self) -> int:
        return self.stop - self.start

    def content_range(self, size: int) -> str:
        return f"bytes {self.start}-{self.stop - 1}/{size}"


def parse_range(header: str | None, size: int) -> ByteRange | None:
    """The one byte range a ``Range`` header asks for, or None for the whole file.

    RFC 9110 §14.2 lets a server ignore a Range it does not serve partially: another unit,
    several ranges, or bad syntax get the whole file (200). A range that starts at or past
    the end, or an empty suffix, is unsatisfiable (416); an end past the file is clipped.
    """
    if not header:
        return None
    unit, _, spec = header.strip().partition("=")
    if unit.strip().lower() != "bytes" or "," in spec:
        return None
    first, dash, last = spec.strip().partition("-")
    first, last = first.strip(), last.strip()
    if not dash or not (first.isdigit() or (not first and last.isdigit())):
        return None
    if last and not last.isdigit():
        return None
    if not first:  # suffix: the last N bytes
        suffix = int(last)
        if suffix == 0 or size == 0:
            raise RangeNotSatisfiable(f"bytes=-{suffix} of a {size}-byte file")
        return ByteRange(max(0, size - suffix), size)
    start = int(first)
    stop = min(size, int(last) + 1) if last else size
    if last and int(last) < start:
        return None  # invalid range: ignored, per the RFC
    if start >= size:
        raise RangeNotSatisfiable(f"bytes={start}- of a {size}-byte file")
    return ByteRange(start, stop)


@dataclass(frozen=True)
class ServedFile:
    """A file behind a URL: where it is, how big, and its validator (ETag)."""

    fs: fsspec.AbstractFileSystem
    path: str
    content_type: str

    def stat(self) -> tuple[int, str]:
        info = self.fs.info(self.path)
        if info.get("type") != "file":
            raise FileNotFoundError(self.path)
        size = int(info["size"])
        stamp = info.get("ETag") or info.get("mtime") or info.get("LastModified") or ""
        token = hashlib.sha1(f"{self.path}|{size}|{stamp}".encode()).hexdigest()[:20]
        return size, f'"{token}"'  # strong: PMTiles readers ignore weak (W/) ETags

    def read(self, start: int, stop: int) -> bytes:
        return self.fs.cat_file(self.path, start=start, end=stop)


@dataclass
class MapSite:
    """What the server serves: the page's folder, the archives by name, the page's config."""

    archives: dict[str, ServedFile]
    config: dict[str, Any]
    web_dir: Path = WEB_DIR
    missing: list[str] = field(default_factory=list)

    def static(self, relative: str) -> ServedFile | None:
        """A file under the page's folder, or None if the path would leave it."""
        parts = relative.split("/")
        if any(p in ("", ".", "..") or "\\" in p or "\0" in p for p in parts):
            return None
        root = self.web_dir.resolve()
        target = root.joinpath(*parts).resolve()
        if not target.is_relative_to(root):  # a symlink pointing out of the folder
            return None
        return ServedFile(fsspec.filesystem("file"), str(target), content_type(target.name))


def content_type(name: str) -> str:
    suffix = Path(name).suffix.lower()
    return CONTENT_TYPES.get(suffix) or mimetypes.guess_type(name)[0] or "application/octet-stream"


def page_config(storage: OcrStorage, available: list[str]) -> dict[str, Any]:
    """What the page needs from Python, so the map and the pipeline cannot disagree.

    ``score_edges`` are the binning function's edges in float32 — the precision RPS is
    stored in — so a building on an edge gets the same score on the map as in the tables.
    """
    return {
        "environment": storage.environment,
        "version": storage.version,
        "archives": {name: f"/pmtiles/{name}.pmtiles" for name in available},
        "zooms": {name: list(ARCHIVE_ZOOMS[name]) for name in available},
        "score_edges": [float(e) for e in SCORE_EDGES.astype(np.float32)],
        "colors": list(RISK_COLORS),
    }


def missing_vendor_files(vendor_dir: Path = VENDOR_DIR) -> list[str]:
    return [name for name in VENDOR_FILES if not (vendor_dir / name).is_file()]


def map_site(storage: OcrStorage, web_dir: Path = WEB_DIR) -> MapSite:
    """The site for one environment: refuse early if the page or every archive is missing."""
    missing_vendor = missing_vendor_files(web_dir / "vendor")
    if missing_vendor:
        raise ServeError(
            f"the map page's libraries are missing from {web_dir / 'vendor'} "
            f"({', '.join(missing_vendor)}); run `make web` (npm) to install them"
        )
    fs = storage.fs
    archives, missing = {}, []
    for name in PMTILES_NAMES:
        path = storage.layout.pmtiles(name)
        if fs.isfile(path):
            archives[name] = ServedFile(fs, path, CONTENT_TYPES[".pmtiles"])
        else:
            missing.append(name)
    if not archives:
        raise ServeError(
            f"no PMTiles under {storage.layout.vector_prefix}/pmtiles; materialize the tiles "
            "first (`make run`, or `ocr deploy` for this environment)"
        )
    return MapSite(archives, page_config(storage, list(archives)), web_dir, missing)


class MapRequestHandler(BaseHTTPRequestHandler):
    """GET/HEAD for ``/``, ``/config.json``, ``/static/…`` and ``/pmtiles/<name>.pmtiles``."""

    server: MapServer
    protocol_version = "HTTP/1.1"  # keep-alive: a map fetches many small ranges
    server_version = "ocr-serve"

    def do_GET(self) -> None:
        self._respond(body=True)

    def do_HEAD(self) -> None:
        self._respond(body=False)

    def log_message(self, format: str, *args: Any) -> None:
        self.server.log(f"{self.address_string()} {format % args}")

    def _respond(self, body: bool) -> None:
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

    def _send_file(self, served: ServedFile, body: bool) -> None:
        try:
            size, etag = served.stat()
        except FileNotFoundError:
            self._error(HTTPStatus.NOT_FOUND, "not found")
            return
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
            for start in range(part.start, part.stop, CHUNK_BYTES):
                self.wfile.write(served.read(start, min(part.stop, start + CHUNK_BYTES)))


class MapServer(ThreadingHTTPServer):
    """A threaded HTTP server bound to loopback, holding the site it serves."""

    daemon_threads = True

    def __init__(
        self, site: MapSite, port: int = 0, log: Callable[[str], None] | None = None
    ) -> None:
        self.site = site
        self.log = log or (lambda _message: None)
        super().__init__((HOST, port), MapRequestHandler)

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
