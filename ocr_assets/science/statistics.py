"""Summary statistics per census unit (DESIGN §6), aggregated by DuckDB.

A building is counted once per level: its unit is a prefix of its 15-character block GEOID
(state = [0:2], county = [0:5], tract = [0:11]), never a polygon intersection, so buildings on
unit borders cannot be double-counted. DuckDB needs no spatial extension for this.
"""

from __future__ import annotations

import duckdb
import numpy as np
import pandas as pd
import pyarrow as pa

from ocr_assets.science.scoring import N_SCORES, risk_score

# The census levels (DESIGN §3), each with the length of the block GEOID's prefix that names
# its unit; the nation is the one unit "US".
LEVEL_GEOID_LENGTH: dict[str, int] = {
    "nation": 0,
    "states": 2,
    "counties": 5,
    "tracts": 11,
    "blocks": 15,
}
CENSUS_LEVELS: tuple[str, ...] = tuple(LEVEL_GEOID_LENGTH)
NATION_GEOID = "US"


def unit_geoid_length(level: str) -> int:
    """The length of a census unit's own GEOID at ``level`` (the nation's is "US")."""
    return LEVEL_GEOID_LENGTH[level] or len(NATION_GEOID)


STAT_VARIABLES: tuple[str, ...] = (
    "rps_2011",
    "rps_2047",
    "bp_2011",
    "bp_2047",
    "crps_scott",
    "bp_2011_riley",
    "bp_2047_riley",
)
SCORED: dict[str, str] = {"risk_score_2011_hist": "rps_2011", "risk_score_2047_hist": "rps_2047"}


def _score_udf(values: pa.Array) -> pa.Array:
    """DuckDB vectorised UDF wrapping the one binning function."""
    return pa.array(risk_score(values.to_numpy(zero_copy_only=False)).astype(np.int8))


def connect() -> duckdb.DuckDBPyConnection:
    con = duckdb.connect()
    # FLOAT: the stored float32 precision, so bin edges match the values' own rounding
    con.create_function("risk_score", _score_udf, ["FLOAT"], "TINYINT", type="arrow")
    return con


def _level_check(level: str) -> int:
    if level not in LEVEL_GEOID_LENGTH:
        raise ValueError(f"census level {level!r} is not one of {list(LEVEL_GEOID_LENGTH)}")
    return LEVEL_GEOID_LENGTH[level]


def _unit(level: str) -> tuple[str, dict[str, object]]:
    """The unit of a building at ``level``: a prefix of its block GEOID (the nation: "US")."""
    params = {"len": _level_check(level), "nation": NATION_GEOID}
    return "CASE WHEN $len = 0 THEN $nation ELSE substr(GEOID, 1, $len) END", params


def statistics_query(level: str) -> tuple[str, dict[str, object]]:
    """SQL (and its parameters) of one level's statistics over the scan ``buildings_scan``:
    one row per unit with buildings. Histograms are counted per score in the same pass, so
    one scan of the buildings gives the whole level. Column names come from the constants
    above; values are parameters, never SQL text."""
    unit, params = _unit(level)
    scores = ", ".join(f"risk_score({variable}) AS {column}" for column, variable in SCORED.items())
    aggregates = ", ".join(
        f"avg({v})::DOUBLE AS mean_{v}, median({v})::DOUBLE AS median_{v}" for v in STAT_VARIABLES
    )
    histograms = ", ".join(
        "["
        + ", ".join(f"count(*) FILTER (WHERE {column} = {s})" for s in range(N_SCORES))
        + f"]::BIGINT[] AS {column}"
        for column in SCORED
    )
    sql = (
        f"SELECT GEOID, count(*)::BIGINT AS building_count, {aggregates}, {histograms} "
        f"FROM (SELECT {unit} AS GEOID, {', '.join(STAT_VARIABLES)}, {scores} "
        "FROM buildings_scan) GROUP BY GEOID"
    )
    return sql, params


def units_query(level: str) -> tuple[str, dict[str, object]]:
    """SQL of the distinct units of one level that have buildings (a cheap pre-check)."""
    unit, params = _unit(level)
    return f"SELECT DISTINCT {unit} AS GEOID FROM buildings_scan", params


def level_statistics(
    con: duckdb.DuckDBPyConnection, buildings: pa.Table | object, level: str
) -> pd.DataFrame:
    """One level's statistics as a small DataFrame, sorted by GEOID (for tests and previews;
    the published files stream from :func:`statistics_query` joined to the census).

    ``buildings`` is anything DuckDB can scan (a pyarrow Table or Dataset) with GEOID and the
    statistic variables.
    """
    sql, params = statistics_query(level)
    con.register("buildings_scan", buildings)
    try:
        stats = con.execute(f"{sql} ORDER BY GEOID", params).df()
    finally:
        con.unregister("buildings_scan")
    for column in SCORED:
        stats[column] = [list(map(int, h)) for h in stats[column]]
    return stats
