"""The risk surface as map tiles: PNG tiles of the pyramid (``risk_pyramid``), rendered on the
server from the level whose pixels are the tile's (levels are aligned to the 256-pixel tile
grid, so a tile is a plain cut of its level: no resampling), coloured by the risk score bins.

A tile reads only the stored chunks under it, through the storage resource's filesystem
(local or S3), and keeps the decoded chunks of recent tiles in a bounded cache: neighbouring
tiles share chunks (a 4096-pixel chunk of a CONUS level holds 256 tiles). A redeploy that
replaces the pyramid is seen within ``RECHECK_SECONDS`` and empties the cache.
"""

from __future__ import annotations

import io
import threading
import time
from collections import OrderedDict
from dataclasses import dataclass
from typing import Any

import fsspec
import numpy as np
import zarr
from fsspec.implementations.asyn_wrapper import AsyncFileSystemWrapper
from PIL import Image
from zarr.storage import FsspecStore

from ocr_assets.science.pyramid import TILE_SIZE, level_bounds, level_origin, tile_window
from ocr_assets.science.scoring import score_rgba

RASTER_VARIABLES = ("rps_2011", "rps_2047")  # what the pyramid holds (risk_pyramid)
CACHE_BYTES = 256 * 2**20  # decoded chunks kept for the next tiles
RECHECK_SECONDS = 2.0  # how often a tile request looks whether the pyramid was replaced


@dataclass(frozen=True)
class Level:
    """One stored level: where its first pixel sits in the global grid, its size, chunks."""

    origin: tuple[int, int]
    shape: tuple[int, int]
    chunks: tuple[int, int]


class ChunkCache:
    """Decoded chunks, least recently used first out, within a byte budget."""

    def __init__(self, max_bytes: int) -> None:
        self.max_bytes = max_bytes
        self._items: OrderedDict[Any, np.ndarray] = OrderedDict()
        self._bytes = 0
        self._lock = threading.Lock()

    def get(self, key: Any) -> np.ndarray | None:
        with self._lock:
            value = self._items.get(key)
            if value is not None:
                self._items.move_to_end(key)
            return value

    def put(self, key: Any, value: np.ndarray) -> None:
        with self._lock:
            if key in self._items or value.nbytes > self.max_bytes:
                return
            self._items[key] = value
            self._bytes += value.nbytes
            while self._bytes > self.max_bytes:
                _, dropped = self._items.popitem(last=False)
                self._bytes -= dropped.nbytes

    def clear(self) -> None:
        with self._lock:
            self._items.clear()
            self._bytes = 0


class PyramidTiles:
    """PNG tiles of one environment's pyramid, read through ``fs`` at ``path``."""

    def __init__(
        self, fs: fsspec.AbstractFileSystem, path: str, cache_bytes: int = CACHE_BYTES
    ) -> None:
        self.fs, self.path = fs, path.rstrip("/")
        self.cache = ChunkCache(cache_bytes)
        self._lock = threading.Lock()
        self._stamp: str | None = None
        self._checked = 0.0
        self._group: zarr.Group | None = None
        self._levels: dict[int, Level] = {}
        self._zooms: list[int] = []
        self._arrays: dict[tuple[int, str], zarr.Array] = {}

    def _open(self) -> zarr.Group:
        """The pyramid's group, reopened (and the cache emptied) when it was replaced."""
        with self._lock:
            now = time.monotonic()
            if self._group is None or now - self._checked > RECHECK_SECONDS:
                self._checked = now
                stamp = _stamp(self.fs.info(f"{self.path}/zarr.json"))
                if stamp != self._stamp or self._group is None:
                    store = FsspecStore(_asynchronous(self.fs), read_only=True, path=self.path)
                    self._group = zarr.open_group(store, mode="r")
                    self._zooms = sorted(int(name) for name in self._group.group_keys())
                    self._levels, self._arrays, self._stamp = {}, {}, stamp
                    self.cache.clear()
            return self._group

    @property
    def stamp(self) -> str:
        """Changes when the pyramid is replaced (the tiles' ETags are built from it)."""
        self._open()
        return self._stamp or ""

    def zooms(self) -> list[int]:
        self._open()
        return self._zooms

    def level(self, zoom: int) -> Level | None:
        group = self._open()
        if zoom not in self._levels:
            if zoom not in self._zooms:
                return None
            stored = group[str(zoom)]
            array = stored[RASTER_VARIABLES[0]]
            origin = level_origin(zoom, float(stored["x"][0]), float(stored["y"][0]))
            self._levels[zoom] = Level(origin, tuple(array.shape), tuple(array.chunks))
        return self._levels[zoom]

    def bounds(self) -> list[float]:
        """(west, south, east, north) in degrees of the finest level: where tiles have data."""
        zoom = self.zooms()[-1]
        level = self.level(zoom)
        return level_bounds(zoom, level.origin, level.shape)

    def values(self, variable: str, zoom: int, x: int, y: int) -> np.ndarray | None:
        """The tile's 256 × 256 values (NaN where the level has none), or None when the tile
        misses the level or no chunk under it is stored (all missing)."""
        level = self.level(zoom)
        if level is None:
            return None
        window = tile_window(level.origin, level.shape, x, y)
        if window is None:
            return None
        (rows, cols), (into_rows, into_cols) = window
        array = self._array(zoom, variable)
        tile = np.full((TILE_SIZE, TILE_SIZE), np.nan, np.float32)
        found = False
        (cy, cx) = level.chunks
        for iy in range(rows.start // cy, (rows.stop - 1) // cy + 1):
            for ix in range(cols.start // cx, (cols.stop - 1) // cx + 1):
                key = (self._stamp, zoom, variable, iy, ix)  # never a replaced pyramid's
                chunk = self._chunk(array, key, level, iy, ix)
                if chunk is None:
                    continue
                found = True
                r0, r1 = max(rows.start, iy * cy), min(rows.stop, (iy + 1) * cy)
                c0, c1 = max(cols.start, ix * cx), min(cols.stop, (ix + 1) * cx)
                tile[
                    into_rows.start + r0 - rows.start : into_rows.start + r1 - rows.start,
                    into_cols.start + c0 - cols.start : into_cols.start + c1 - cols.start,
                ] = chunk[r0 - iy * cy : r1 - iy * cy, c0 - ix * cx : c1 - ix * cx]
        return tile if found else None

    def _array(self, zoom: int, variable: str) -> zarr.Array:
        """The level's array, its metadata read once per pyramid (not once per tile)."""
        group = self._open()
        if (zoom, variable) not in self._arrays:
            self._arrays[zoom, variable] = group[str(zoom)][variable]
        return self._arrays[zoom, variable]

    def _chunk(
        self, array: zarr.Array, key: tuple, level: Level, iy: int, ix: int
    ) -> np.ndarray | None:
        """One decoded chunk, one read; None when it holds no value (the pyramid does not
        store all-missing chunks: zarr answers those with its fill value, NaN)."""
        cached = self.cache.get(key)
        if cached is None:
            (cy, cx), (ny, nx) = level.chunks, level.shape
            cached = array[iy * cy : min(ny, (iy + 1) * cy), ix * cx : min(nx, (ix + 1) * cx)]
            if np.isnan(cached).all():
                cached = np.empty(0, np.float32)  # remembered as empty, never read again
            self.cache.put(key, cached)
        return cached if cached.size else None

    def png(self, variable: str, zoom: int, x: int, y: int) -> bytes | None:
        """The tile as a PNG (score colours, transparent where missing or 0), or None when
        it has no data."""
        values = self.values(variable, zoom, x, y)
        if values is None:
            return None
        return encode_png(score_rgba(values))


def encode_png(rgba: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(rgba, "RGBA").save(buffer, format="PNG", compress_level=1)
    return buffer.getvalue()


def _asynchronous(fs: fsspec.AbstractFileSystem) -> fsspec.AbstractFileSystem:
    """``fs`` in the asynchronous form zarr's fsspec store drives (same options)."""
    if not fs.async_impl:
        return AsyncFileSystemWrapper(fs, asynchronous=True)
    if fs.asynchronous:
        return fs
    return type(fs)(**fs.storage_options, asynchronous=True)


def _stamp(info: dict) -> str:
    return str(info.get("ETag") or info.get("mtime") or info.get("LastModified") or "")
