"""Summary statistics per census unit (DESIGN §6), aggregated by DuckDB.

A building is counted once per level: its unit is a prefix of its block GEOID (15 digits,
maybe a suffix letter): state = [0:2], county = [0:5], tract = [0:11], block = all of it; never
a polygon intersection, so buildings on unit borders cannot be double-counted. DuckDB needs no
spatial extension for this.
"""

from __future__ import annotations

import duckdb
import numpy as np
import pandas as pd
import pyarrow as pa

from ocr_assets.science.sampling import VALUE_RANGES
from ocr_assets.science.scoring import N_SCORES, risk_score

# The census levels (docs/inputs.md), each with the length of the block GEOID's prefix that
# names its unit; the nation is the one unit "US"; a block is its whole GEOID (15 digits and
# an optional suffix letter, so 16 keeps it all).
LEVEL_GEOID_LENGTH: dict[str, int] = {
    "nation": 0,
    "states": 2,
    "counties": 5,
    "tracts": 11,
    "blocks": 16,
}
CENSUS_LEVELS: tuple[str, ...] = tuple(LEVEL_GEOID_LENGTH)
NATION_GEOID = "US"


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


# Means are exact sums: each float32 value times 2**SUM_SCALE_BITS is added as a 128-bit
# integer (DuckDB HUGEINT), and integers add up to the same total in any order. A float sum
# (DuckDB's avg) does not: its last digits changed with the order the threads added rows in,
# so no two runs on millions of buildings wrote the same bytes. At this scale every float32 of
# magnitude >= 2**-66 (~1.4e-20) is an exact integer; smaller values round to the nearest
# multiple of 2**-89 (at most 8.1e-28 off). Values must be finite and of magnitude below
# SUM_BOUND (the documented ranges are [0, 1] and [0, 100]), so a unit's sum stays below
# 2**127 up to 2**31 (2.1 billion) buildings; beyond, DuckDB refuses with an overflow error.
SUM_SCALE_BITS = 89
SUM_BOUND = 2.0**7
MEAN_PARAMETERS: dict[str, object] = {
    "sum_scale": 2.0**SUM_SCALE_BITS,
    "sum_bound": SUM_BOUND,
    **{
        f"not_summable_{v}": (
            f"statistics need every {v} finite and of magnitude below {SUM_BOUND:g} "
            f"(documented range [{VALUE_RANGES[v][0]:g}, {VALUE_RANGES[v][1]:g}]), got "
        )
        for v in STAT_VARIABLES
    },
}


def exact_mean(variable: str) -> str:
    """SQL of ``variable``'s mean that no row order can change: the exact integer sum of the
    scaled values, as DOUBLE, divided by the count and the scale (parameters:
    :data:`MEAN_PARAMETERS`). A value that cannot be summed exactly stops the query with an
    error naming the variable, its documented range and the value."""
    scaled = (
        f"CASE WHEN abs({variable}) < $sum_bound THEN ({variable}::DOUBLE * $sum_scale)::HUGEINT "
        f"ELSE error($not_summable_{variable} || {variable}) END"
    )
    return f"sum({scaled})::DOUBLE / count(*) / $sum_scale"


def order_free_median(variable: str) -> str:
    """SQL of ``variable``'s median. The middle values of a multiset are the same in any
    order, except a zero's sign: -0.0 and 0.0 compare equal, so which one a median of zeros
    returns depends on the order; adding 0.0 makes every zero 0.0."""
    return f"median({variable})::DOUBLE + 0.0"


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
    one scan of the buildings gives the whole level. Every statistic is the same whatever
    order DuckDB's threads meet the rows in (:func:`exact_mean`, :func:`order_free_median`).
    Column names come from the constants above; values are parameters, never SQL text."""
    unit, params = _unit(level)
    params = {**params, **MEAN_PARAMETERS}
    scores = ", ".join(f"risk_score({variable}) AS {column}" for column, variable in SCORED.items())
    aggregates = ", ".join(
        f"{exact_mean(v)} AS {v}_mean, {order_free_median(v)} AS {v}_median" for v in STAT_VARIABLES
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
