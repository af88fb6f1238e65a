"""The phase 02/03 writers as they were before streaming (GeoPandas, whole tables in memory):
kept here only as the reference the streaming writers are compared with on the sample
(tests/test_streaming_outputs.py)."""

from __future__ import annotations

import json
import subprocess
import tempfile
from pathlib import Path

import duckdb
import geopandas as gpd
import numpy as np
import pandas as pd
import pyarrow as pa
import shapely
from shapely.geometry import mapping

from ocr_assets.science.sampling import RISK_VARIABLES
from ocr_assets.science.scoring import HISTOGRAM_BOUNDARIES
from ocr_assets.science.statistics import (
    LEVEL_GEOID_LENGTH,
    NATION_GEOID,
    SCORED,
    STAT_VARIABLES,
    STATISTICS_COLUMNS,
    connect,
)
from ocr_assets.science.tiling import TileLayer, centroid_properties, tippecanoe_command
from ocr_assets.tiles import HISTOGRAM_COLUMNS, tippecanoe_binary
from ocr_resources.layout import CENSUS_COLUMNS, CENSUS_LEVELS
from ocr_resources.publication import vector_metadata
from ocr_resources.storage import OcrStorage


def level_statistics(
    con: duckdb.DuckDBPyConnection, buildings: pa.Table | object, level: str
) -> pd.DataFrame:
    """One row per unit with buildings: GEOID, building_count, <var>_mean / <var>_median,
    histograms (zeros, then the nonzero values in the published bins (previous, edge], in
    float32, counted with numpy).

    ``buildings`` is anything DuckDB can scan (a pyarrow Table or Dataset) with GEOID and the
    statistic variables. Column names come from the constants above; values are parameters.
    """
    if level not in LEVEL_GEOID_LENGTH:
        raise ValueError(f"census level {level!r} is not one of {list(LEVEL_GEOID_LENGTH)}")
    length = LEVEL_GEOID_LENGTH[level]
    con.register("buildings_scan", buildings)
    aggregates = ", ".join(
        [f"avg({v})::DOUBLE AS {v}_mean" for v in STAT_VARIABLES]
        + [f"median({v})::DOUBLE AS {v}_median" for v in STAT_VARIABLES]
    )
    unit = "CASE WHEN $len = 0 THEN $nation ELSE substr(GEOID, 1, $len) END"
    params = {"len": length, "nation": NATION_GEOID}
    stats = con.execute(
        f"SELECT {unit} AS GEOID, count(*) AS building_count, {aggregates} "
        "FROM buildings_scan GROUP BY 1 ORDER BY 1",
        params,
    ).df()
    values = con.execute(
        f"SELECT {unit} AS GEOID, {', '.join(SCORED.values())} FROM buildings_scan", params
    ).df()
    edges = np.array(HISTOGRAM_BOUNDARIES, np.float32)
    for column, variable in SCORED.items():
        hists = {}
        for geoid, group in values.groupby("GEOID"):
            v = group[variable].to_numpy(np.float32)
            bins = np.bincount(np.searchsorted(edges, v[v != 0], side="left"), minlength=11)
            hists[geoid] = [int((v == 0).sum()), *map(int, bins[:10])]
        stats[column] = [hists[g] for g in stats["GEOID"]]
    con.unregister("buildings_scan")
    stats["building_count"] = stats["building_count"].astype(np.int64)
    return stats


def write_summary_statistics(storage: OcrStorage) -> dict[str, int]:
    """One GeoParquet per census level: statistics joined to the unit's names and polygon.

    Every level is computed (and its census input checked) before the first is written, so a
    bad census level leaves all earlier statistics as they were, not a mix of old and new.
    """
    buildings = storage.parquet_dataset(storage.layout.consolidated_buildings)
    con = connect()
    tables: dict[str, gpd.GeoDataFrame] = {}
    for level in CENSUS_LEVELS:
        stats = level_statistics(con, buildings, level)
        census = storage.read_census(level)
        names = list(CENSUS_COLUMNS[level])
        units = census[[*names, "geometry"]].merge(
            stats, on="GEOID", how="inner", validate="one_to_one"
        )
        missing = set(stats["GEOID"]) - set(units["GEOID"])
        if missing:
            raise ValueError(
                f"{len(missing)} {level} GEOID(s) of buildings are not in the census input, "
                f"e.g. {sorted(missing)[:3]}"
            )
        ordered = units[[*names, *STATISTICS_COLUMNS, "geometry"]]
        tables[level] = gpd.GeoDataFrame(ordered, crs=census.crs)
    for level, table in tables.items():
        path = storage.layout.region_summary_stats(level)
        with storage.atomic_path(path) as tmp:
            table.to_parquet(tmp, compression="zstd", schema_version="1.1.0", index=False)
    return {level: len(table) for level, table in tables.items()}


def read_summary_statistics(storage, level):
    return gpd.read_parquet(storage.layout.region_summary_stats(level), filesystem=storage.fs)


def write_analysis_files(storage: OcrStorage, version: str | None) -> dict[str, int]:
    """Per level: ``stats.csv`` (``# key: value`` lines, then pandas' CSV) and
    ``stats.geojson`` (type, metadata, features), each built whole in memory."""
    written: dict[str, int] = {}
    metadata = vector_metadata(version)
    for level in CENSUS_LEVELS:
        stats = read_summary_statistics(storage, level)
        columns = [c for c in stats.columns if c != "geometry"]
        if level == "nation":
            columns.remove("NAME")
        for column in HISTOGRAM_COLUMNS:
            stats[column] = [list(map(int, h)) for h in stats[column]]
        records = pd.DataFrame(stats[columns]).to_dict("records")
        collection = {
            "type": "FeatureCollection",
            "metadata": metadata,
            "features": [
                {"type": "Feature", "properties": r, "geometry": mapping(g)}
                for r, g in zip(records, stats.geometry, strict=True)
            ],
        }
        storage.write_text(storage.layout.region_analysis(level, "geojson"), json.dumps(collection))
        table = pd.DataFrame(stats[columns])
        for column in HISTOGRAM_COLUMNS:
            table[column] = [json.dumps(h, separators=(",", ":")) for h in table[column]]
        lines = "".join(f"# {k}: {v}\n" for k, v in metadata.items())
        storage.write_text(
            storage.layout.region_analysis(level, "csv"), lines + table.to_csv(index=False)
        )
        written[level] = len(table)
    return written


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
