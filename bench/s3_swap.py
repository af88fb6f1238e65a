"""A finished tree copied into place on S3, as ``FileStore.atomic_path`` does it (issue 30):
one object after another (the code before) against the storage's concurrent batches, on a
moto S3 server on 127.0.0.1 (real HTTP, no network), for the cost model's per-object figure.

    .venv/bin/python -m bench.s3_swap >> bench/s3_swap_results.jsonl   # ~1 min
    .venv/bin/python -m bench.s3_swap --objects 500                    # smaller

Moto answers every request from this machine's 2 cores, so the absolute times are moto's,
not S3's; the ratio is what concurrent requests save against one round trip at a time.
"""

from __future__ import annotations

import argparse
import json
import os
import time
import uuid

from moto.server import ThreadedMotoServer

from ocr_resources.storage import OcrStorage
from ocr_resources.storage.files import S3_CONNECTIONS

BUCKET = "bench-swap"
FAKE_AWS = {"AWS_ACCESS_KEY_ID": "bench", "AWS_SECRET_ACCESS_KEY": "bench"}


def tree(prefix: str, objects: int) -> dict[str, bytes]:
    """A Zarr-like tree: ``objects`` 1 KiB chunks and a metadata document per 100."""
    out = {f"{prefix}/zarr.json": b"{}"}
    for i in range(objects):
        group = i // 100
        out[f"{prefix}/{group}/zarr.json"] = b"{}"
        out[f"{prefix}/{group}/c/{i}"] = os.urandom(1024)
    return out


def measure(endpoint: str, objects: int) -> dict:
    storage = OcrStorage(root=f"s3://{BUCKET}/{uuid.uuid4().hex}", endpoint_url=endpoint)
    fs = storage.files.fs
    # before: the objects copied one request after another (the loop issue 30 replaced)
    source = f"{storage.root}/source.zarr"
    files = tree(source, objects)
    fs.pipe(files)
    start = time.perf_counter()
    for key in files:
        fs.copy(key, key.replace("/source.zarr", "/serial.zarr"))
    serial_s = time.perf_counter() - start
    # after: the storage's own swap into place (its temporary written first, untimed)
    target = f"{storage.root}/batched.zarr"
    with storage.files.atomic_path(target) as tmp:
        fs.pipe({key.replace(source, tmp): value for key, value in files.items()})
        start = time.perf_counter()
    batched_s = time.perf_counter() - start  # the copies into place and the temporary's removal
    assert len(fs.find(target)) == len(files)
    return {
        "when": time.strftime("%Y-%m-%dT%H:%M:%S"),
        "objects": len(files),
        "serial_s": round(serial_s, 2),
        "batched_s": round(batched_s, 2),
        "serial_ms_per_object": round(1000 * serial_s / len(files), 2),
        "batched_ms_per_object": round(1000 * batched_s / len(files), 2),
        "speedup": round(serial_s / batched_s, 1),
        "connections": S3_CONNECTIONS,
        "server": "moto ThreadedMotoServer on 127.0.0.1",
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--objects", type=int, default=2000)
    args = parser.parse_args()
    os.environ.update(FAKE_AWS)
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    try:
        host, port = server.get_host_and_port()
        endpoint = f"http://{host}:{port}"
        OcrStorage(root=f"s3://{BUCKET}", endpoint_url=endpoint).files.fs.mkdir(BUCKET)
        print(json.dumps(measure(endpoint, args.objects)))
    finally:
        server.stop()


if __name__ == "__main__":
    main()
