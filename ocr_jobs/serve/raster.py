"""The risk surface as map tiles: PNG tiles of the published pyramid (``risk_pyramid``), whose
levels are EPSG:4326 grids, each the 2 × 2 mean of the one before. A Web Mercator tile is drawn
from the level whose pixels best fit its zoom, one nearest level pixel per tile pixel (at the
pixel's centre), coloured by the risk score bins; outside the data it is transparent.

A tile reads only the stored chunks under it, through the storage resource's filesystem
(local or S3), and keeps the decoded chunks of recent tiles in a bounded cache: neighbouring
tiles share chunks. A redeploy that replaces the pyramid is seen within ``RECHECK_SECONDS``
and empties the cache.
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

from ocr_science.pyramid import (
    TILE_SIZE,
    choose_level,
    native_zoom,
    pixel_index,
    tile_pixel_centres,
)
from ocr_science.scoring import score_rgba

RASTER_VARIABLES = ("rps_2011", "rps_2047")  # what the pyramid holds (risk_pyramid)
CACHE_BYTES = 256 * 2**20  # decoded chunks kept for the next tiles
RECHECK_SECONDS = 2.0  # how often a tile request looks whether the pyramid was replaced


@dataclass(frozen=True)
class Level:
    """One stored level: its pixel centres (ascending), pixel size in degrees, chunks."""

    latitude: np.ndarray
    longitude: np.ndarray
    width: float
    chunks: tuple[int, int]

    @property
    def shape(self) -> tuple[int, int]:
        return self.latitude.size, self.longitude.size


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
        self._levels: list[Level] = []
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
                    group = zarr.open_consolidated(store, mode="r")
                    self._levels = _read_levels(group)
                    self._group, self._arrays, self._stamp = group, {}, stamp
                    self.cache.clear()
            return self._group

    @property
    def stamp(self) -> str:
        """Changes when the pyramid is replaced (the tiles' ETags are built from it)."""
        self._open()
        return self._stamp or ""

    def levels(self) -> list[Level]:
        self._open()
        return self._levels

    def zooms(self) -> list[int]:
        """The zooms tiles are drawn for: 0 up to where the finest level's pixels are reached
        (past it a map enlarges that zoom's tiles)."""
        return list(range(native_zoom(self.levels()[0].width) + 1))

    def bounds(self) -> list[float]:
        """(west, south, east, north) in degrees of the finest level: where tiles have data."""
        level = self.levels()[0]
        half = level.width / 2
        lat, lon = level.latitude, level.longitude
        return [
            float(lon[0] - half),
            float(lat[0] - half),
            float(lon[-1] + half),
            float(lat[-1] + half),
        ]

    def values(self, variable: str, zoom: int, x: int, y: int) -> np.ndarray | None:
        """The tile's 256 × 256 values (NaN where the level has none), or None when the tile
        misses the level or every pixel it samples is missing."""
        levels = self.levels()
        k = choose_level([level.width for level in levels], zoom)
        level = levels[k]
        lon, lat = tile_pixel_centres(zoom, x, y)
        rows = pixel_index(level.latitude, level.width, lat)
        cols = pixel_index(level.longitude, level.width, lon)
        if (rows < 0).all() or (cols < 0).all():
            return None
        array = self._array(k, variable)
        tile = np.full((TILE_SIZE, TILE_SIZE), np.nan, np.float32)
        cy, cx = level.chunks
        for iy in np.unique(rows[rows >= 0] // cy):
            into_rows = np.flatnonzero((rows >= 0) & (rows // cy == iy))
            for ix in np.unique(cols[cols >= 0] // cx):
                key = (self._stamp, k, variable, int(iy), int(ix))  # never a replaced pyramid's
                chunk = self._chunk(array, key, level, int(iy), int(ix))
                if chunk is None:
                    continue
                into_cols = np.flatnonzero((cols >= 0) & (cols // cx == ix))
                tile[np.ix_(into_rows, into_cols)] = chunk[
                    np.ix_(rows[into_rows] - iy * cy, cols[into_cols] - ix * cx)
                ]
        return None if np.isnan(tile).all() else tile

    def _array(self, k: int, variable: str) -> zarr.Array:
        """The level's array, its metadata read once per pyramid (not once per tile)."""
        group = self._open()
        if (k, variable) not in self._arrays:
            self._arrays[k, variable] = group[str(k)][variable]
        return self._arrays[k, variable]

    def _chunk(
        self, array: zarr.Array, key: tuple, level: Level, iy: int, ix: int
    ) -> np.ndarray | None:
        """One decoded chunk, one read; None when it holds no value (all-missing chunks are
        not stored: zarr answers those with its fill value, NaN)."""
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


def _read_levels(group: zarr.Group) -> list[Level]:
    """Every level's coordinates, pixel size and chunks, finest first. A level's pixel size is
    the finest level's spacing times its scale in the root's ``multiscales`` layout."""
    levels: list[Level] = []
    for entry in group.attrs["multiscales"]["layout"]:
        stored = group[entry["asset"]]
        longitude = stored["longitude"][:]
        if not levels:
            width = float((longitude[-1] - longitude[0]) / (longitude.size - 1))
        scale = float(entry["transform"]["scale"][-1])
        levels.append(
            Level(
                latitude=stored["latitude"][:],
                longitude=longitude,
                width=width * scale,
                chunks=tuple(stored[RASTER_VARIABLES[0]].chunks),
            )
        )
    return levels


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
