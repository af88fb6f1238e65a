"""The risk surface's PNG tiles as a map user pays for them: ``ocr serve`` started as a user
starts it, then every tile of the data at each zoom requested over HTTP on loopback.

- **cold**: the server's first request of each tile, after the pyramid's files were evicted
  from the page cache (``bench.region_path.evict``): reads, decoding, colouring, PNG.
- **warm**: the same tiles again (the server's decoded-chunk cache and the page cache full).

The server's start (to the first answer of ``/config.json``) is reported beside them.

    python -m bench.raster_tiles [--env-file envs/local.env] [--zooms 8-13] [--port 8799]

Results are appended to ``bench/raster_tiles_results.jsonl``.
"""

from __future__ import annotations

import argparse
import http.client
import json
import statistics
import subprocess
import sys
import time
from datetime import UTC, datetime
from pathlib import Path

import morecantile

from bench.region_path import evict
from ocr_jobs.serve.raster import PyramidTiles
from ocr_resources.settings import load_settings
from ocr_resources.storage import OcrStorage

RESULTS = Path(__file__).with_name("raster_tiles_results.jsonl")


def _tiles(storage: OcrStorage, zooms: range) -> list[tuple[int, int, int]]:
    """Every (z, x, y) tile over the finest level's bounds at each zoom the server draws."""
    pyramid = PyramidTiles(storage.files.fs, storage.files.fs_path(storage.layout.pyramid))
    west, south, east, north = pyramid.bounds()
    served = [z for z in zooms if z in pyramid.zooms()]
    tms = morecantile.tms.get("WebMercatorQuad")
    return [(t.z, t.x, t.y) for t in tms.tiles(west, south, east, north, served)]


def _get(connection: http.client.HTTPConnection, path: str) -> tuple[int, float]:
    start = time.perf_counter()
    connection.request("GET", path)
    response = connection.getresponse()
    response.read()
    return response.status, (time.perf_counter() - start) * 1000


def _summary(ms: list[float]) -> dict:
    ordered = sorted(ms)
    return {
        "tiles": len(ms),
        "median_ms": round(statistics.median(ms), 2),
        "p95_ms": round(ordered[int(0.95 * (len(ordered) - 1))], 2),
        "max_ms": round(ordered[-1], 2),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--env-file", default="envs/local.env")
    parser.add_argument("--zooms", default="8-13", help="first-last zoom to request")
    parser.add_argument("--port", type=int, default=8799)
    args = parser.parse_args()
    first, last = (int(z) for z in args.zooms.split("-"))
    settings = load_settings(args.env_file)
    storage = OcrStorage.from_settings(settings)
    tiles = _tiles(storage, range(first, last + 1))
    if not tiles:
        raise SystemExit(f"no pyramid levels {args.zooms} under {storage.layout.pyramid}")
    evicted = evict(Path(storage.layout.pyramid))

    started = time.perf_counter()
    server = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "ocr_jobs.cli",
            "serve",
            "--env-file",
            args.env_file,
            "--port",
            str(args.port),
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        while True:
            try:
                connection = http.client.HTTPConnection("127.0.0.1", args.port, timeout=30)
                status, _ = _get(connection, "/config.json")
                if status == 200:
                    break
            except OSError:
                time.sleep(0.05)
            if server.poll() is not None:
                raise SystemExit("ocr serve ended before answering")
        start_seconds = time.perf_counter() - started
        passes = {}
        for name in ("cold", "warm"):
            ms, statuses = [], {}
            for year in ("2011", "2047"):
                for z, x, y in tiles:
                    status, took = _get(connection, f"/tiles/rps_{year}/{z}/{x}/{y}.png")
                    statuses[status] = statuses.get(status, 0) + 1
                    ms.append(took)
            passes[name] = {**_summary(ms), "statuses": statuses}
        connection.close()
    finally:
        server.terminate()
        server.wait(10)
    record = {
        "date": datetime.now(UTC).isoformat(timespec="seconds"),
        "env_file": args.env_file,
        "zooms": args.zooms,
        "pyramid_bytes_evicted": evicted,
        "server_start_seconds": round(start_seconds, 2),
        **passes,
    }
    with RESULTS.open("a") as out:
        out.write(json.dumps(record) + "\n")
    print(json.dumps(record, indent=2))
    failed = {s for p in passes.values() for s in p["statuses"]} - {200, 204}
    if failed:
        raise SystemExit(f"tiles answered with status {sorted(failed)}: see the record above")


if __name__ == "__main__":
    main()
