"""Cheap fingerprints of the inputs, per region: what the inputs' observations report as data
versions, so Dagster (and ``ocr deploy``) can tell which regions' inputs changed.

Never modification times, so rewriting identical bytes changes nothing: an Icechunk input is
versioned by the snapshot it is read at (its commits are its versions); a plain Zarr input by
the content of the objects (chunks or shards) its region reads — each object's ETag on S3, else
a SHA-256 of its bytes — plus the array's own metadata; GeoParquet by the footer's row groups
whose bounding box meets the region (row count, byte sizes and column statistics). One listing
of each store serves every region.
"""

from __future__ import annotations

import hashlib
import json
import posixpath
from collections.abc import Iterable
from typing import Any

import numpy as np
from pyproj import CRS, Transformer

from ocr_resources.layout import InputSpec, StorageLayout
from ocr_resources.storage.files import FileStore
from ocr_resources.storage.inputs import InputReader
from ocr_resources.storage.regions import RegionReader
from ocr_resources.storage.vector import VectorStore, covering_extents, meets
from ocr_science.fire_model import YEARS
from ocr_science.regions import HALO_DEG, RegionGrid, RegionIdError

# cells kept around a region's window in a projected input (its read takes a margin for the
# gap-fill and the warp's neighbourhood; generous, so a change that can matter is never missed)
PROJECTED_MARGIN_CELLS = 8
_BOUNDARY_POINTS = 21  # per edge, when a region's box is taken into another CRS


def _digest(parts: Iterable[Any]) -> str:
    return hashlib.sha256(json.dumps(list(parts), default=str).encode()).hexdigest()[:16]


def _stamp(fs: Any, path: str, info: dict[str, Any]) -> str:
    """What changes when an object's content changes, and only then: its ETag on S3 (a hash
    of the bytes the store computed), else a SHA-256 of its bytes."""
    etag = info.get("ETag") or info.get("etag")
    if etag:
        return str(etag).strip('"')
    digest = hashlib.sha256()
    with fs.open(path, "rb") as f:
        while block := f.read(1 << 22):
            digest.update(block)
    return digest.hexdigest()[:16]


def _projected_window(
    bounds: tuple[float, float, float, float],
    to_store: Transformer,
    ys: np.ndarray,
    xs: np.ndarray,
) -> tuple[slice, slice]:
    """Row and column slices of a projected store covering a lon/lat box (edges densified),
    widened by a margin of cells (the read's subset takes a margin for the gap-fill)."""
    west, south, east, north = bounds
    edge = np.linspace(0, 1, _BOUNDARY_POINTS)
    across, up = west + (east - west) * edge, south + (north - south) * edge
    lon = np.concatenate([across, np.full_like(edge, east), across, np.full_like(edge, west)])
    lat = np.concatenate([np.full_like(edge, south), up, np.full_like(edge, north), up])
    x, y = to_store.transform(lon, lat)
    m = PROJECTED_MARGIN_CELLS
    y0, y1 = _index_range(ys, float(y.min()), float(y.max()))
    x0, x1 = _index_range(xs, float(x.min()), float(x.max()))
    return (
        slice(max(0, y0 - m), min(ys.size, y1 + m)),
        slice(max(0, x0 - m), min(xs.size, x1 + m)),
    )


def _index_range(coords: np.ndarray, low: float, high: float) -> tuple[int, int]:
    """[start, stop) of the cells of an axis (ascending or descending) between two values."""
    ascending = coords[0] <= coords[-1]
    values = coords if ascending else coords[::-1]
    start = int(np.searchsorted(values, low, "left"))
    stop = int(np.searchsorted(values, high, "right"))
    if not ascending:
        start, stop = coords.size - stop, coords.size - start
    return max(0, start), min(coords.size, stop)


def _objects_by_chunk(keys: list[str], name: str) -> dict[tuple, list[str]]:
    """An array's object keys by their first two chunk indices (a 3-D array, the wind, has
    one object per trailing chunk)."""
    found: dict[tuple, list[str]] = {}
    prefix = f"{name}/c/"
    for key in sorted(keys):
        if key.startswith(prefix):
            index = key[len(prefix) :].split("/")
            found.setdefault((index[0], index[1]), []).append(key)
    return found


class _ObjectStamps:
    """The content stamps of a store's objects (one listing), each computed when first asked
    for: a region's fingerprint hashes only the objects it reads, once per observation."""

    def __init__(self, fs: Any, root: str) -> None:
        self._fs, self._root = fs, root
        self._info = {
            posixpath.relpath(path, root): info for path, info in fs.find(root, detail=True).items()
        }
        self._stamps: dict[str, str] = {}

    def keys(self) -> list[str]:
        return list(self._info)

    def stamp(self, key: str) -> str:
        """``key:stamp`` of one object; ``key:absent`` when the store has no such object."""
        if key not in self._info:
            return f"{key}:absent"
        if key not in self._stamps:
            path = posixpath.join(self._root, key)
            self._stamps[key] = _stamp(self._fs, path, self._info[key])
        return f"{key}:{self._stamps[key]}"


def _in_grid(grid: RegionGrid, region_id: str) -> bool:
    """Whether the input grid holds the region (a catalog may list more than a store holds)."""
    try:
        grid.region(region_id)
    except RegionIdError:
        return False
    return True


class InputFingerprints:
    """Per-region fingerprints of the inputs (the observations' data versions)."""

    def __init__(
        self,
        files: FileStore,
        vector: VectorStore,
        inputs: InputReader,
        regions: RegionReader,
        layout: StorageLayout,
    ) -> None:
        self._files, self._vector, self._inputs = files, vector, inputs
        self._regions, self._layout = regions, layout

    def _zarr_fingerprints(
        self, spec: InputSpec, grid: RegionGrid, region_ids: list[str]
    ) -> dict[str, list[str]]:
        """Per region, the stamps of the objects of each variable the region's read covers:
        the window with its halo for the 270 m BP and the wind (what the fields read), the
        region alone for the 30 m inputs (CRPS, RPS, BP reference), as
        ``RegionReader.read_region_inputs`` reads them."""
        snapshot = self._inputs.input_snapshot(spec)
        if snapshot is not None:  # an Icechunk input: the snapshot it is read at
            return {r: [f"snapshot:{snapshot}"] for r in region_ids}
        listing = _ObjectStamps(self._files.fs_for(spec.path), self._files.fs_path(spec.path))
        windowed = {self._layout.wind, *(self._layout.bp_270m(y) for y in YEARS)}
        halo = HALO_DEG if spec.path in windowed else 0.0
        projected = not CRS.from_user_input(spec.crs[0]).equals(CRS.from_epsg(4326))
        if projected:
            ds = self._inputs.open_input(spec.path, spec.variables)
            ys, xs = ds[spec.dims[0]].values, ds[spec.dims[1]].values
            to_store = Transformer.from_crs(4326, spec.crs[0], always_xy=True)
        parts: dict[str, list[str]] = {r: [] for r in region_ids}
        for name in spec.variables:
            array_stamp = listing.stamp(posixpath.join(name, "zarr.json"))
            chunk_shape = self._object_shape(spec.path, name)
            objects = _objects_by_chunk(listing.keys(), name)
            for region_id in region_ids:
                region = grid.region(region_id)
                if projected:
                    rows, cols = _projected_window(region.bounds(halo), to_store, ys, xs)
                else:  # the 30 m inputs share the region grid (their reads check it)
                    rows, cols = grid.window(region, halo)
                parts[region_id].append(array_stamp)
                if rows.stop <= rows.start or cols.stop <= cols.start:
                    continue
                for i in range(rows.start // chunk_shape[0], (rows.stop - 1) // chunk_shape[0] + 1):
                    for j in range(
                        cols.start // chunk_shape[1], (cols.stop - 1) // chunk_shape[1] + 1
                    ):
                        # an absent object is the fill value, and says so
                        keys = objects.get((str(i), str(j))) or [f"{name}/c/{i}/{j}"]
                        parts[region_id] += [listing.stamp(k) for k in keys]
        return parts

    def _object_shape(self, store: str, name: str) -> tuple[int, ...]:
        """The shape of one stored object of an array (its shard, or chunk, grid)."""
        meta = self._files.read_json(posixpath.join(store, name, "zarr.json"))
        return tuple(meta["chunk_grid"]["configuration"]["chunk_shape"])

    def _parquet_fingerprints(
        self, path: str, grid: RegionGrid, region_ids: list[str]
    ) -> dict[str, list[str]]:
        """Per region, the footer's row groups whose bbox covering meets the region."""
        meta = self._vector.parquet_metadata(path)
        groups = []
        for g, extent in enumerate(covering_extents(meta, "bbox")):
            rg = meta.row_group(g)
            stats = [rg.column(i).statistics for i in range(rg.num_columns)]
            detail = [
                rg.num_rows,
                rg.total_byte_size,
                [
                    [
                        rg.column(i).total_compressed_size,
                        str(s.min) if s and s.has_min_max else "",
                        str(s.max) if s and s.has_min_max else "",
                    ]
                    for i, s in enumerate(stats)
                ],
            ]
            groups.append((extent, f"rg{g}:{_digest(detail)}"))
        parts: dict[str, list[str]] = {}
        for region_id in region_ids:
            region = grid.region(region_id)
            window = (region.lon0, region.lat0, region.lon1, region.lat1)
            # a group without statistics is read by every region (read_geoparquet_within)
            parts[region_id] = [
                stamp
                for extent, stamp in groups
                if extent is None or meets(np.array(extent), window)
            ]
        return parts

    def region_input_versions(self, asset: str, region_ids: list[str]) -> dict[str, str]:
        """A data version per region of one region input (asset key): a digest of what the
        region reads of it, so it changes exactly when that part of the input changes."""
        grid = self._regions.region_grid()
        region_ids = [r for r in region_ids if _in_grid(grid, r)]
        parts: dict[str, list[str]] = {r: [] for r in region_ids}
        for spec in self._layout.input_specs():
            if spec.asset != asset:
                continue
            found = (
                self._parquet_fingerprints(spec.path, grid, region_ids)
                if spec.path.endswith(".parquet")
                else self._zarr_fingerprints(spec, grid, region_ids)
            )
            for region_id, stamps in found.items():
                parts[region_id] += [spec.path, *stamps]
        return {region_id: _digest(stamps) for region_id, stamps in parts.items()}

    def input_version(self, asset: str) -> str:
        """A data version of a whole input that is not read per region (the census: one
        GeoParquet file per level): each file's footer, its row groups' sizes and column
        statistics, so rewriting the same rows changes nothing."""
        stamps: list[Any] = []
        for spec in self._layout.input_specs():
            if spec.asset != asset:
                continue
            if spec.is_raster:
                raise ValueError(f"{asset} is read per region: use region_input_versions")
            footer = self._vector.parquet_metadata(spec.path)
            groups = [footer.row_group(g).to_dict() for g in range(footer.num_row_groups)]
            schema = footer.schema.to_arrow_schema().to_string()
            stamps.append((spec.path, _digest([footer.num_rows, schema, groups])))
        return _digest(stamps)
