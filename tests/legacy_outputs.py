"""The phase 02/03 writers as they were before streaming (GeoPandas, whole tables in memory):
kept here only as the reference the streaming writers are compared with on the sample
(tests/integration/test_streaming_outputs.py)."""

from __future__ import annotations

import json

import duckdb
import geopandas as gpd
import numpy as np
import pandas as pd
import pyarrow as pa
from shapely.geometry import mapping

from ocr_resources.layout import CENSUS_COLUMNS, CENSUS_LEVELS
from ocr_resources.publication import vector_metadata
from ocr_resources.storage import OcrStorage
from ocr_science.scoring import HISTOGRAM_BOUNDARIES
from ocr_science.statistics import (
    LEVEL_GEOID_LENGTH,
    NATION_GEOID,
    SCORED,
    STAT_VARIABLES,
    STATISTICS_COLUMNS,
    connect,
)


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
    buildings = storage.vector.parquet_dataset(storage.layout.consolidated_buildings)
    con = connect()
    tables: dict[str, gpd.GeoDataFrame] = {}
    for level in CENSUS_LEVELS:
        stats = level_statistics(con, buildings, level)
        census = storage.inputs.read_census(level)
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
        with storage.files.atomic_path(path) as tmp:
            table.to_parquet(tmp, compression="zstd", schema_version="1.1.0", index=False)
    return {level: len(table) for level, table in tables.items()}


def read_summary_statistics(storage, level):
    return gpd.read_parquet(storage.layout.region_summary_stats(level), filesystem=storage.files.fs)


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
        for column in SCORED:
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
        storage.files.write_text(
            storage.layout.region_analysis(level, "geojson"), json.dumps(collection)
        )
        table = pd.DataFrame(stats[columns])
        for column in SCORED:
            table[column] = [json.dumps(h, separators=(",", ":")) for h in table[column]]
        lines = "".join(f"# {k}: {v}\n" for k, v in metadata.items())
        storage.files.write_text(
            storage.layout.region_analysis(level, "csv"), lines + table.to_csv(index=False)
        )
        written[level] = len(table)
    return written
