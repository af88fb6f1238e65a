"""The phase 02/03 writers as they were before streaming (GeoPandas, whole tables in memory):
kept here only as the reference the streaming writers are compared with on the sample
(tests/test_streaming_outputs.py)."""

from __future__ import annotations

import json

import duckdb
import geopandas as gpd
import numpy as np
import pandas as pd
import pyarrow as pa

from ocr_assets.science.scoring import N_SCORES
from ocr_assets.science.statistics import (
    LEVEL_GEOID_LENGTH,
    NATION_GEOID,
    SCORED,
    STAT_VARIABLES,
    connect,
)
from ocr_assets.step import dataset_metadata
from ocr_resources.layout import CENSUS_LEVELS
from ocr_resources.storage import OcrStorage


def level_statistics(
    con: duckdb.DuckDBPyConnection, buildings: pa.Table | object, level: str
) -> pd.DataFrame:
    """One row per unit with buildings: GEOID, building_count, mean_* / median_*, histograms.

    ``buildings`` is anything DuckDB can scan (a pyarrow Table or Dataset) with GEOID and the
    statistic variables. Column names come from the constants above; values are parameters.
    """
    if level not in LEVEL_GEOID_LENGTH:
        raise ValueError(f"census level {level!r} is not one of {list(LEVEL_GEOID_LENGTH)}")
    length = LEVEL_GEOID_LENGTH[level]
    con.register("buildings_scan", buildings)
    aggregates = ", ".join(
        f"avg({v})::DOUBLE AS {v}_mean, median({v})::DOUBLE AS {v}_median" for v in STAT_VARIABLES
    )
    unit = "CASE WHEN $len = 0 THEN $nation ELSE substr(GEOID, 1, $len) END"
    stats = con.execute(
        f"SELECT {unit} AS GEOID, count(*) AS building_count, {aggregates} "
        "FROM buildings_scan GROUP BY 1 ORDER BY 1",
        {"len": length, "nation": NATION_GEOID},
    ).df()
    for column, variable in SCORED.items():
        counts = con.execute(
            f"SELECT {unit} AS GEOID, risk_score({variable}) AS score, count(*) AS n "
            "FROM buildings_scan GROUP BY 1, 2",
            {"len": length, "nation": NATION_GEOID},
        ).df()
        table = counts.pivot_table(index="GEOID", columns="score", values="n", fill_value=0)
        table = table.reindex(columns=range(N_SCORES), fill_value=0).reindex(stats["GEOID"])
        stats[column] = [row.astype(np.int64).tolist() for row in table.to_numpy()]
    con.unregister("buildings_scan")
    stats["building_count"] = stats["building_count"].astype(np.int64)
    return stats


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


def read_summary_statistics(storage, level):
    return gpd.read_parquet(storage.layout.region_summary_stats(level), filesystem=storage.fs)


def write_analysis_files(storage: OcrStorage, version: str) -> dict[str, int]:
    """Per level: ``stats.geojson`` and ``stats.csv`` with ``# key: value`` header lines."""
    written: dict[str, int] = {}
    for level in CENSUS_LEVELS:
        stats = read_summary_statistics(storage, level)
        for column in SCORED:
            stats[column] = [list(map(int, h)) for h in stats[column]]
        # the census coordinates as they are (NAD83 as TIGER has it), no "crs" member: RFC 7946
        # GeoJSON, as OCR writes it with ST_AsGeoJSON (GeoPandas adds one for a non-WGS 84 CRS)
        plain = stats.set_crs(4326, allow_override=True)
        storage.write_text(storage.layout.region_analysis(level, "geojson"), plain.to_json())
        table = pd.DataFrame(stats.drop(columns="geometry"))
        for column in SCORED:
            table[column] = [json.dumps(h) for h in table[column]]
        header = {"level": level, "rows": len(table), **dataset_metadata(version, "ODbL-1.0")}
        lines = "".join(f"# {k}: {v}\n" for k, v in header.items())
        storage.write_text(
            storage.layout.region_analysis(level, "csv"), lines + table.to_csv(index=False)
        )
        written[level] = len(table)
    return written
