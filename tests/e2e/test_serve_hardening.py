"""`ocr serve` answers every request, on a connection that stays open: file names longer than
the OS allows, Range positions of thousands of digits, files that cannot be read, and bugs
get an HTTP answer — never a dropped connection or a traceback."""

from __future__ import annotations

import errno
import http.client
import re
import socket
import struct
import threading
import time
from types import SimpleNamespace

import pytest

from ocr_jobs.serve import ByteRange, RangeNotSatisfiable, parse_range
from ocr_jobs.serve.site import ServedFile
from tests.e2e import test_serve as base

# a real server on 127.0.0.1 serving stand-in archives and page (test_serve's fixtures)
web_dir, storage, server = base.web_dir, base.storage, base.server
SIZE = base.SIZE
_payload = base._payload
HUGE = "9" * 5000  # more digits than Python's int() parses (4300)
LONG_NAME = "a" * 300  # longer than NAME_MAX (255)
LONG_PATH = "/".join(["b" * 200] * 25)  # longer than PATH_MAX (4096)


def _exchange(server, requests: list[tuple[str, str, dict]]) -> list[tuple[int, dict, bytes]]:
    """Several requests on one keep-alive connection, each sent exactly as written; a dropped
    connection fails the test (http.client raises RemoteDisconnected)."""
    port = server.server_address[1]
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    answers = []
    try:
        for method, path, headers in requests:
            conn.putrequest(method, path, skip_host=True, skip_accept_encoding=True)
            for key, value in {"Host": f"127.0.0.1:{port}", **headers}.items():
                conn.putheader(key, value)
            conn.endheaders()
            response = conn.getresponse()
            answers.append((response.status, dict(response.getheaders()), response.read()))
    finally:
        conn.close()
    return answers


def _then_config(server, method: str, path: str, headers: dict | None = None):
    """The answer to a request, checked to leave the connection serving the next one."""
    answer, config = _exchange(server, [(method, path, headers or {}), ("GET", "/config.json", {})])
    assert config[0] == 200 and b'"archives"' in config[2]
    return answer


@pytest.mark.parametrize(
    "path",
    [
        f"/static/{LONG_NAME}",
        f"/static/vendor/{LONG_NAME}.js",
        f"/static/{LONG_PATH}",
        f"/{LONG_NAME}",
        f"/pmtiles/{LONG_NAME}.pmtiles",
        "/static/index.html/child",  # a path through a file (ENOTDIR)
    ],
)
@pytest.mark.parametrize("method", ["GET", "HEAD"])
def test_names_no_file_can_have_are_not_found(server, capsys, path, method):
    status, headers, body = _then_config(server, method, path)
    assert status == 404 and int(headers["Content-Length"]) > 0
    if method == "HEAD":
        assert body == b""
    else:
        assert body.startswith(b"404 Not Found") and LONG_NAME.encode() not in body
    assert "Traceback" not in capsys.readouterr().err


@pytest.mark.parametrize(
    ("header", "status", "start", "stop"),
    [
        (f"bytes={HUGE}-", 416, None, None),  # starts past any file
        (f"bytes={HUGE}-{HUGE}", 416, None, None),
        (f"bytes=0-{HUGE}", 206, 0, SIZE),  # an end past the file is clipped
        (f"bytes=-{HUGE}", 206, 0, SIZE),  # a suffix longer than the file: all of it
        (f"bytes={'0' * 5000}5-9", 206, 5, 10),  # leading zeros are still the number 5
        (f"bytes={HUGE}-1", 200, 0, SIZE),  # last < first: invalid, ignored (RFC 9110)
        ("bytes=\u00b2-", 200, 0, SIZE),  # "²" is no ASCII digit: bad syntax, ignored
    ],
)
def test_range_positions_of_any_length_are_answered(server, capsys, header, status, start, stop):
    [(got, headers, body)] = _exchange(
        server, [("GET", "/pmtiles/regions.pmtiles", {"Range": header})]
    )
    assert got == status
    if status == 416:
        assert headers["Content-Range"] == f"bytes */{SIZE}" and body == b""
    else:
        assert body == _payload("regions")[start:stop]
    assert "Traceback" not in capsys.readouterr().err


@pytest.mark.parametrize(
    ("header", "expected"),
    [
        (f"bytes=0-{HUGE}", ByteRange(0, 1000)),
        (f"bytes=-{HUGE}", ByteRange(0, 1000)),
        (f"bytes={'0' * 5000}12-{'0' * 5000}20", ByteRange(12, 21)),
        (f"bytes={HUGE}-8", None),
        ("bytes=\u00b2-5", None),
        ("bytes=\u0663-5", None),  # an Arabic-Indic three: a digit to Python, not to HTTP
        ("bytes=1-\u00b2", None),
    ],
)
def test_parse_range_takes_ascii_positions_of_any_length(header, expected):
    assert parse_range(header, 1000) == expected


@pytest.mark.parametrize("header", [f"bytes={HUGE}-", f"bytes={'0' * 5000}1000-"])
def test_parse_range_huge_start_is_unsatisfiable(header):
    with pytest.raises(RangeNotSatisfiable):
        parse_range(header, 1000)


@pytest.mark.parametrize(
    ("error", "status", "reason"),
    [
        (PermissionError(errno.EACCES, "Permission denied"), 403, b"Permission denied"),
        (OSError(errno.ENAMETOOLONG, "File name too long"), 404, b"File name too long"),
        (OSError(errno.EIO, "Input/output error"), 500, b"Input/output error"),
        (RuntimeError("a bug"), 500, b"internal error"),
    ],
)
def test_a_file_that_cannot_be_read_gets_an_error_answer(
    server, storage, capsys, monkeypatch, error, status, reason
):
    """Read errors come before the headers (the first piece is read first), so the answer
    is the error's status, not a 200 whose body stops short."""

    def failing_read(self, start, stop):
        raise error

    monkeypatch.setattr(ServedFile, "read", failing_read)
    for method in ("GET", "HEAD"):
        got, _, body = _then_config(server, method, "/pmtiles/buildings.pmtiles")
        assert got == status
        if method == "GET":
            assert reason in body and storage.root.encode() not in body  # no server path
    assert "Traceback" not in capsys.readouterr().err


def test_a_file_that_shrank_is_not_answered_short(server, capsys, monkeypatch):
    """The archive was replaced by a smaller one after its size was taken: a 500, not a
    response whose Content-Length the body never reaches (the client would wait)."""
    real_read = ServedFile.read
    monkeypatch.setattr(ServedFile, "read", lambda self, a, b: real_read(self, a, b)[:-1])
    got, _, body = _then_config(server, "GET", "/pmtiles/regions.pmtiles", {"Range": "bytes=0-9"})
    assert got == 500 and b"the file changed" in body
    assert "Traceback" not in capsys.readouterr().err


def test_a_failure_after_the_headers_closes_the_connection(server, capsys, monkeypatch):
    """Once a 200 and its length are out, an error can only end the connection: the client
    sees a short body, not a hang, and the server logs one line, no traceback."""
    import ocr_jobs.serve.server as http_server

    real_read = ServedFile.read
    calls = []

    def second_read_fails(self, start, stop):
        calls.append(start)
        if len(calls) > 1:
            raise OSError(errno.EIO, "Input/output error")
        return real_read(self, start, stop)

    monkeypatch.setattr(ServedFile, "read", second_read_fails)
    assert http_server.CHUNK_BYTES < SIZE  # the fixture streams in small pieces
    port = server.server_address[1]
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    conn.request("GET", "/pmtiles/regions.pmtiles", headers={"Host": f"127.0.0.1:{port}"})
    response = conn.getresponse()
    assert response.status == 200
    with pytest.raises(http.client.IncompleteRead):
        response.read()
    conn.close()
    assert "Traceback" not in capsys.readouterr().err


def test_ocr_serve_logs_request_paths_as_text(tmp_path, storage):
    """`ocr serve` prints every request with rich: a path holding "[/]" was taken for console
    markup, the print raised and the request was dropped with a traceback."""
    if base.serve.missing_vendor_files():
        pytest.skip("the map page's libraries are not installed (make web)")
    proc = base.start_ocr_serve(tmp_path, storage)
    try:
        port = None
        while port is None:
            line = proc.stdout.readline()
            assert line, "ocr serve ended before printing its URL"
            found = re.search(r"http://127\.0\.0\.1:(\d+)/", line)
            port = found and int(found.group(1))
        running = SimpleNamespace(server_address=("127.0.0.1", port))
        answers = _exchange(
            running,
            [("GET", "/static/[/]x.js", {}), ("GET", "/[bold]", {}), ("GET", "/config.json", {})],
        )
        assert [status for status, _, _ in answers] == [404, 404, 200]
    finally:
        proc.terminate()
        output, _ = proc.communicate(timeout=10)
    assert "[/]x.js" in output and "Traceback" not in output


def test_a_client_that_hangs_up_mid_body_costs_one_log_line(server, capsys, monkeypatch):
    """A map cancels tile requests as it pans: the writes that follow fail (EPIPE/ECONNRESET),
    which must end that connection quietly, not print a traceback per request."""
    lines: list[str] = []
    monkeypatch.setattr(server, "log", lines.append)
    hung_up = threading.Event()
    real_read = ServedFile.read

    def read_after_hang_up(self, start, stop):
        if start > 0:
            hung_up.wait(10)
        return real_read(self, start, stop)

    monkeypatch.setattr(ServedFile, "read", read_after_hang_up)
    port = server.server_address[1]
    with socket.create_connection(("127.0.0.1", port), timeout=10) as client:
        client.sendall(
            f"GET /pmtiles/regions.pmtiles HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\n\r\n".encode()
        )
        assert client.recv(12) == b"HTTP/1.1 200"
        client.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    hung_up.set()  # closed with a reset: the server's next writes fail
    deadline = time.monotonic() + 10
    while not any("Error" in line and "regions.pmtiles" in line for line in lines):
        assert time.monotonic() < deadline, f"no log line for the hang-up: {lines}"
        time.sleep(0.05)
    assert "Traceback" not in capsys.readouterr().err
    [(status, _, _)] = _exchange(server, [("GET", "/config.json", {})])
    assert status == 200


# a cold burst (issue 29, item 6) ------------------------------------------------------------
def _get_pmtiles_range(port: int, connect_timeout: float) -> int:
    """One range request of an archive on a fresh connection; its status. The connection
    must be accepted within ``connect_timeout`` (below the kernel's first SYN retry, 1 s: a
    listen backlog that overflowed drops the SYN and the client waits it out)."""
    conn = socket.create_connection(("127.0.0.1", port), timeout=connect_timeout)
    conn.settimeout(60)
    with conn, conn.makefile("rb") as reply:
        conn.sendall(
            f"GET /pmtiles/buildings.pmtiles HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\n"
            "Range: bytes=0-99\r\nConnection: close\r\n\r\n".encode()
        )
        return int(reply.readline().split()[1])


def test_200_concurrent_cold_connections_are_all_answered(server, monkeypatch):
    """200 connections opened at once, each with a request a slow (cold) answer: every one is
    accepted at once and answered, by at most the pool's workers at a time. Before: a listen
    backlog of 5 (connections waited out SYN retries or were reset) and a thread each."""
    active, most, lock = [0], [0], threading.Lock()
    respond = base.http_server.MapRequestHandler._respond

    def slow(self, body: bool) -> None:
        with lock:
            active[0] += 1
            most[0] = max(most[0], active[0])
        try:
            time.sleep(0.2)  # a tile computed cold
            respond(self, body)
        finally:
            with lock:
                active[0] -= 1

    monkeypatch.setattr(base.http_server.MapRequestHandler, "_respond", slow)
    port = server.server_address[1]
    statuses: list[int] = []
    failures: list[BaseException] = []

    def one() -> None:
        try:
            statuses.append(_get_pmtiles_range(port, connect_timeout=0.9))
        except Exception as exc:  # counted and shown below
            failures.append(exc)

    threads = [threading.Thread(target=one) for _ in range(200)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(120)
    assert not failures, f"{len(failures)} of 200 failed, e.g. {failures[0]!r}"
    assert statuses == [206] * 200
    assert most[0] <= base.http_server.WORKERS


def test_an_idle_connection_is_closed_and_frees_its_worker(server, monkeypatch):
    """A keep-alive connection that sends nothing is closed after the idle timeout (here cut
    to 0.3 s); before, it held a thread for ever."""
    assert base.http_server.MapRequestHandler.timeout == base.http_server.IDLE_SECONDS > 0
    monkeypatch.setattr(base.http_server.MapRequestHandler, "timeout", 0.3)
    idle = socket.create_connection(("127.0.0.1", server.server_address[1]), timeout=5)
    with idle:
        started = time.monotonic()
        assert idle.recv(1) == b""  # the server closed it
        assert time.monotonic() - started < 3
