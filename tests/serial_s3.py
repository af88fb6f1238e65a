"""A moto S3 server on 127.0.0.1 serving one request at a time, for the tests of conditional
writes (the deployment lock, the raster store's commits)."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager

import fsspec

AWS = {
    "AWS_ACCESS_KEY_ID": "testing-key-id",
    "AWS_SECRET_ACCESS_KEY": "testing-secret-key",
    "AWS_DEFAULT_REGION": "us-east-1",
}
# moto's S3 API in one thread: its conditional writes check and write in two steps that its
# usual threaded server can interleave; S3 itself makes each conditional write atomic
SERIAL_MOTO = """
import sys
from werkzeug.serving import run_simple
from moto.moto_server.werkzeug_app import DomainDispatcherApplication, create_backend_app
run_simple("127.0.0.1", int(sys.argv[1]), DomainDispatcherApplication(create_backend_app),
           threaded=False)
"""


@contextmanager
def serial_s3_server(bucket: str) -> Iterator[str]:
    """The server's endpoint, with ``bucket`` created and fake credentials in this process's
    environment (restored afterwards)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    proc = subprocess.Popen(
        [sys.executable, "-c", SERIAL_MOTO, str(port)],
        env={**os.environ, **AWS},
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    for _ in range(200):
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
            break
        except OSError:
            time.sleep(0.05)
    saved = {k: os.environ.get(k) for k in AWS}
    os.environ.update(AWS)
    endpoint = f"http://127.0.0.1:{port}"
    try:
        fsspec.filesystem("s3", endpoint_url=endpoint, skip_instance_cache=True).mkdir(bucket)
        yield endpoint
    finally:
        proc.terminate()
        proc.wait(10)
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value
