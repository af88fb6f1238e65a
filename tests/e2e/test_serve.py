"""`ocr serve`: byte ranges as PMTiles readers ask for them, and nothing outside its folders."""

from __future__ import annotations

import http.client
import json
import os
import re
import subprocess
import sys
import time
from functools import cache
from pathlib import Path

import pytest

from ocr_assets.tiles import TILESET_BY_ARCHIVE
from ocr_jobs import serve
from ocr_jobs.serve import (
    VENDOR_FILES,
    ByteRange,
    RangeNotSatisfiable,
    ServeError,
    map_site,
    parse_range,
    serve_in_thread,
)
from ocr_jobs.serve import server as http_server
from ocr_resources.storage import OcrStorage

SIZE = 300_000
SECRET = b"not for the browser"


@cache
def _payload(name: str) -> bytes:
    """Distinct bytes per archive and per offset, so a wrong slice cannot pass."""
    seed = sum(name.encode())
    return bytes((i * 7 + seed + (i >> 8)) % 256 for i in range(SIZE))


@pytest.fixture
def web_dir(tmp_path) -> Path:
    """A page folder with stand-in libraries, and a secret beside it (outside it)."""
    web = tmp_path / "web"
    (web / "vendor").mkdir(parents=True)
    (web / "index.html").write_text("<!doctype html><title>map</title>")
    for name in VENDOR_FILES:
        (web / "vendor" / name).write_text(f"/* {name} */")
    (tmp_path / "secret.txt").write_bytes(SECRET)
    (web / "escape").symlink_to(tmp_path / "secret.txt")
    return web


@pytest.fixture
def storage(tmp_path) -> OcrStorage:
    store = OcrStorage(root=str(tmp_path / "data"), environment="local")
    for name in TILESET_BY_ARCHIVE:
        path = Path(store.layout.pmtiles(name))
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(_payload(name))
    return store


@pytest.fixture
def server(storage, web_dir, monkeypatch):
    monkeypatch.setattr(http_server, "CHUNK_BYTES", 4096)  # a whole-file GET streams many chunks
    with serve_in_thread(map_site(storage, web_dir)) as running:
        yield running


def _get(server, path: str, headers: dict | None = None, method: str = "GET"):
    """One raw request: the path goes out exactly as written (no client-side cleanup)."""
    port = server.server_address[1]
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    conn.putrequest(method, path, skip_host=True, skip_accept_encoding=True)
    for key, value in {"Host": f"127.0.0.1:{port}", **(headers or {})}.items():
        conn.putheader(key, value)
    conn.endheaders()
    response = conn.getresponse()
    body = response.read()
    conn.close()
    return response, body


@pytest.mark.parametrize(
    ("header", "expected"),
    [
        (None, None),
        ("bytes=0-15", ByteRange(0, 16)),
        ("bytes=100-", ByteRange(100, 1000)),
        ("bytes=-10", ByteRange(990, 1000)),
        ("bytes=-5000", ByteRange(0, 1000)),
        ("bytes=990-5000", ByteRange(990, 1000)),  # an end past the file is clipped
        ("bytes=999-999", ByteRange(999, 1000)),
        ("bytes=0-1,5-6", None),  # several ranges: the whole file (allowed by RFC 9110)
        ("items=0-1", None),
        ("bytes=5-2", None),
        ("bytes=abc", None),
    ],
)
def test_parse_range(header, expected):
    assert parse_range(header, 1000) == expected


@pytest.mark.parametrize("header", ["bytes=1000-", "bytes=5000-6000", "bytes=-0"])
def test_parse_range_unsatisfiable(header):
    with pytest.raises(RangeNotSatisfiable):
        parse_range(header, 1000)


@pytest.mark.parametrize(
    ("header", "start", "stop"),
    [
        ("bytes=0-16383", 0, 16384),  # what the PMTiles reader asks first
        ("bytes=123456-123999", 123456, 124000),
        ("bytes=299000-", 299000, SIZE),
        ("bytes=-77", SIZE - 77, SIZE),
        ("bytes=299990-400000", 299990, SIZE),
    ],
)
def test_range_requests_return_206_with_exact_bytes(server, header, start, stop):
    expected = _payload("regions")[start:stop]
    response, body = _get(server, "/pmtiles/regions.pmtiles", {"Range": header})
    assert response.status == 206
    assert body == expected
    assert response.getheader("Content-Length") == str(stop - start)
    assert response.getheader("Content-Range") == f"bytes {start}-{stop - 1}/{SIZE}"
    assert response.getheader("Accept-Ranges") == "bytes"
    assert response.getheader("Content-Type") == "application/vnd.pmtiles"
    etag = response.getheader("ETag")
    assert etag.startswith('"') and not etag.startswith("W/")


def test_each_archive_is_its_own_file(server):
    for name in TILESET_BY_ARCHIVE:
        response, body = _get(server, f"/pmtiles/{name}.pmtiles", {"Range": "bytes=1000-1099"})
        assert response.status == 206 and body == _payload(name)[1000:1100]


def test_unsatisfiable_range_is_416_with_the_size(server):
    response, body = _get(server, "/pmtiles/regions.pmtiles", {"Range": f"bytes={SIZE}-"})
    assert response.status == 416
    assert response.getheader("Content-Range") == f"bytes */{SIZE}"
    assert body == b""


def test_whole_file_multi_range_head_and_if_range(server):
    response, body = _get(server, "/pmtiles/buildings.pmtiles")
    assert response.status == 200 and body == _payload("buildings")  # streamed in 4 KiB chunks
    etag = response.getheader("ETag")
    response, body = _get(server, "/pmtiles/buildings.pmtiles", {"Range": "bytes=0-1,4-5"})
    assert response.status == 200 and len(body) == SIZE
    response, body = _get(server, "/pmtiles/buildings.pmtiles", {"Range": "bytes=0-9"}, "HEAD")
    assert response.status == 206 and body == b""
    assert response.getheader("Content-Length") == "10"
    # If-Range with the current validator: the range; with a stale one: the whole new file
    response, body = _get(
        server, "/pmtiles/buildings.pmtiles", {"Range": "bytes=0-9", "If-Range": etag}
    )
    assert response.status == 206 and len(body) == 10
    response, body = _get(
        server, "/pmtiles/buildings.pmtiles", {"Range": "bytes=0-9", "If-Range": '"stale"'}
    )
    assert response.status == 200 and len(body) == SIZE


@pytest.mark.parametrize(
    "path",
    [
        "/static/../secret.txt",
        "/static/../../secret.txt",
        "/static/%2e%2e/secret.txt",
        "/static/vendor/../../secret.txt",
        "/static/vendor/%2E%2E%2F%2E%2E%2Fsecret.txt",
        "/static//etc/passwd",
        "/static/./index.html",
        "/static/escape",  # a symlink in the folder pointing out of it
        "/static/..%5csecret.txt",
    ],
)
def test_paths_outside_the_served_folder_are_refused(server, path):
    response, body = _get(server, path)
    assert response.status == 403
    assert SECRET not in body


@pytest.mark.parametrize(
    "path",
    [
        "/pmtiles/../../secret.txt",
        "/pmtiles/%2e%2e/%2e%2e/secret.txt",
        "/pmtiles/nation.pmtiles",  # only the three archives of the layout exist
        "/pmtiles/regions",
        "/secret.txt",
        "/etc/passwd",
        "/static/missing.js",
    ],
)
def test_other_paths_are_not_found(server, path):
    response, body = _get(server, path)
    assert response.status == 404
    assert SECRET not in body


def test_page_config_and_static_files(server):
    response, body = _get(server, "/")
    assert response.status == 200 and b"<title>map</title>" in body
    response, body = _get(server, "/static/vendor/maplibre-gl.mjs")
    assert response.status == 200 and response.getheader("Content-Type") == "text/javascript"
    response, body = _get(server, "/config.json")
    config = json.loads(body)
    assert set(config["archives"]) == set(TILESET_BY_ARCHIVE)
    assert len(config["colors"]) == len(config["score_edges"]) + 2 == 11


def test_loopback_only_and_foreign_host_refused(server):
    assert server.server_address[0] == "127.0.0.1"
    response, _ = _get(server, "/", {"Host": "attacker.example:80"})
    assert response.status == 403  # a DNS-rebound page cannot read the archives


def test_refusals_say_what_to_do(tmp_path, web_dir, storage):
    empty = OcrStorage(root=str(tmp_path / "empty"), environment="local")
    with pytest.raises(ServeError, match="make run"):
        map_site(empty, web_dir)
    (web_dir / "vendor" / "maplibre-gl.mjs").unlink()
    with pytest.raises(ServeError, match="make web"):
        map_site(storage, web_dir)


def test_missing_archives_are_left_out(tmp_path, web_dir, storage):
    os.remove(storage.layout.pmtiles("buildings"))
    site = map_site(storage, web_dir)
    assert site.missing == ["buildings"]
    assert set(site.config["archives"]) == set(TILESET_BY_ARCHIVE) - {"buildings"}


def test_archives_on_s3_are_served_the_same_way(tmp_path, web_dir, monkeypatch):
    """An s3:// storage root: ranges read through the storage resource's fsspec filesystem."""
    import fsspec
    from moto.server import ThreadedMotoServer

    for key, value in {
        "AWS_ACCESS_KEY_ID": "testing",
        "AWS_SECRET_ACCESS_KEY": "testing",
        "AWS_DEFAULT_REGION": "us-east-1",
    }.items():
        monkeypatch.setenv(key, value)
    moto = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    moto.start()
    try:
        endpoint = f"http://127.0.0.1:{moto.get_host_and_port()[1]}"
        fsspec.filesystem("s3", endpoint_url=endpoint, skip_instance_cache=True).mkdir("maps")
        store = OcrStorage(root="s3://maps/ocr", environment="qa", endpoint_url=endpoint)
        store.files.fs.pipe_file(store.layout.pmtiles("regions"), _payload("regions"))
        with serve_in_thread(map_site(store, web_dir)) as running:
            response, body = _get(running, "/pmtiles/regions.pmtiles", {"Range": "bytes=-100"})
            assert response.status == 206 and body == _payload("regions")[-100:]
            assert set(running.site.config["archives"]) == {"regions"}
    finally:
        moto.stop()


def start_ocr_serve(tmp_path, storage) -> subprocess.Popen:
    """``ocr serve`` on a free port for ``storage``'s local environment, its output on a pipe."""
    env_file = tmp_path / "local.env"
    env_file.write_text(f"OCR_ENVIRONMENT=local\nOCR_STORAGE_ROOT={storage.root}\n")
    env = {k: v for k, v in os.environ.items() if not k.startswith("OCR_")}
    return subprocess.Popen(
        [sys.executable, "-m", "ocr_jobs.cli", "serve", "--env-file", str(env_file), "--port=0"],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        env={**env, "COLUMNS": "200"},
    )


def test_ocr_serve_command_serves_the_environment(tmp_path, storage):
    """The CLI as a user runs it (real page folder): prints its URL, serves page and archives."""
    if serve.missing_vendor_files():
        pytest.skip("the map page's libraries are not installed (make web)")
    proc = start_ocr_serve(tmp_path, storage)
    try:
        deadline, url = time.monotonic() + 60, None
        while url is None and time.monotonic() < deadline:
            line = proc.stdout.readline()
            if not line and proc.poll() is not None:
                break
            found = re.search(r"http://127\.0\.0\.1:(\d+)/", line)
            url = found and found.group(0)
        assert url, "ocr serve did not print its URL"
        port = int(url.rsplit(":", 1)[1].strip("/"))
        running = type("Running", (), {"server_address": ("127.0.0.1", port)})
        response, body = _get(running, "/")
        assert response.status == 200 and b"maplibre" in body.lower()
        response, body = _get(running, "/pmtiles/regions.pmtiles", {"Range": "bytes=10-19"})
        assert response.status == 206 and body == _payload("regions")[10:20]
    finally:
        proc.terminate()
        proc.wait(10)


def test_ocr_serve_check_says_whether_the_map_can_be_served(tmp_path, storage):
    """`make serve` runs `make run` first exactly when this check fails."""
    from typer.testing import CliRunner

    from ocr_jobs.cli import app

    if serve.missing_vendor_files():
        pytest.skip("the map page's libraries are not installed (make web)")
    ready, empty = tmp_path / "ready.env", tmp_path / "empty.env"
    ready.write_text(f"OCR_ENVIRONMENT=local\nOCR_STORAGE_ROOT={storage.root}\n")
    empty.write_text(f"OCR_ENVIRONMENT=local\nOCR_STORAGE_ROOT={tmp_path / 'nothing'}\n")
    runner = CliRunner()
    ok = runner.invoke(app, ["serve", "--env-file", str(ready), "--check"])
    assert ok.exit_code == 0 and f"ready: {', '.join(TILESET_BY_ARCHIVE)} " in ok.output
    missing = runner.invoke(app, ["serve", "--env-file", str(empty), "--check"])
    assert missing.exit_code == 1 and "make run" in missing.output
