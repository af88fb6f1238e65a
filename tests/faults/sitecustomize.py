"""Fault injection for tests/test_faults.py: put this folder on PYTHONPATH and set
``OCR_TEST_FAULT`` and every Python process started (deploy, its run processes, Dagster's
step processes) kills itself with SIGKILL in the middle of one kind of write, as a crash,
an OOM kill or a lost VM would. Nothing here is imported when the variable is unset.

- ``raster_write``: the third shard object of region ``OCR_TEST_FAULT_REGION`` (default
  y1_x1) in the raster store, half written
- ``parquet_write``: that region's GeoParquet file, half written
- ``pmtiles_build``: the buildings PMTiles archive, half written by "tippecanoe"
"""

import os
import signal

FAULT = os.environ.get("OCR_TEST_FAULT", "")
# the region whose writes die (its raster shards are "c/<iy>/<ix>": one shard per region)
REGION = os.environ.get("OCR_TEST_FAULT_REGION", "y1_x1")
SHARD = "/c/" + REGION[1:].replace("_x", "/")


def _die() -> None:
    os.kill(os.getpid(), signal.SIGKILL)


def _raster_write() -> None:
    import zarr.storage._local as local

    original = local._put
    written = [0]

    def put(path, value, exclusive=False):
        if "risk.zarr" in str(path) and str(path).endswith(SHARD):
            written[0] += 1
            if written[0] == 3:
                data = bytes(value.as_buffer_like())
                path.parent.mkdir(parents=True, exist_ok=True)
                with local._atomic_write(path, "wb") as f:
                    f.write(data[: len(data) // 2])
                    f.flush()
                    _die()
        return original(path, value, exclusive=exclusive)

    local._put = put


def _parquet_write() -> None:
    import geopandas

    original = geopandas.GeoDataFrame.to_parquet

    def to_parquet(self, path, *args, **kwargs):
        original(self, path, *args, **kwargs)
        if "geoparquet-regions" in str(path) and str(path).endswith(f"{REGION}.parquet"):
            size = os.path.getsize(path)
            with open(path, "r+b") as f:
                f.truncate(size // 2)
            _die()

    geopandas.GeoDataFrame.to_parquet = to_parquet


def _pmtiles_build() -> None:
    import subprocess

    original = subprocess.run

    def run(argv, *args, **kwargs):
        if str(argv[0]).endswith("tippecanoe") and "buildings.pmtiles" in " ".join(argv):
            output = argv[argv.index("-o") + 1]
            with open(output, "wb") as f:
                f.write(b"PMTiles\x03" + b"\0" * 1000)  # a header and nothing else
            _die()
        return original(argv, *args, **kwargs)

    subprocess.run = run


INJECT = {
    "raster_write": _raster_write,
    "parquet_write": _parquet_write,
    "pmtiles_build": _pmtiles_build,
}
if FAULT:
    INJECT[FAULT]()
