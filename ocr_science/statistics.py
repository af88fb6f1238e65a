"""Summary statistics per census unit (docs/design.md §6), aggregated by DuckDB.

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

from ocr_science.sampling import RISK_VARIABLES, VALUE_RANGES
from ocr_science.scoring import HISTOGRAM_BOUNDARIES

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


# the published statistics' variables: every risk variable but rps_scott, in the published order
STAT_VARIABLES: tuple[str, ...] = tuple(v for v in RISK_VARIABLES if v != "rps_scott")
SCORED: dict[str, str] = {"risk_score_2011_hist": "rps_2011", "risk_score_2047_hist": "rps_2047"}
# the statistics' columns after GEOID and the unit's names, in the published order
# (docs/published.md §4.4): the count, the 7 means, the 7 medians, the 2 histograms
MEAN_COLUMNS: dict[str, str] = {f"{v}_mean": v for v in STAT_VARIABLES}
MEDIAN_COLUMNS: dict[str, str] = {f"{v}_median": v for v in STAT_VARIABLES}
STATISTICS_COLUMNS: tuple[str, ...] = ("building_count", *MEAN_COLUMNS, *MEDIAN_COLUMNS, *SCORED)


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


def connect() -> duckdb.DuckDBPyConnection:
    return duckdb.connect()


def _level_check(level: str) -> int:
    if level not in LEVEL_GEOID_LENGTH:
        raise ValueError(f"census level {level!r} is not one of {list(LEVEL_GEOID_LENGTH)}")
    return LEVEL_GEOID_LENGTH[level]


def _unit(level: str) -> tuple[str, dict[str, object]]:
    """The unit of a building at ``level``: a prefix of its block GEOID (the nation: "US")."""
    params = {"len": _level_check(level), "nation": NATION_GEOID}
    return "CASE WHEN $len = 0 THEN $nation ELSE substr(GEOID, 1, $len) END", params


def published_histogram(variable: str) -> str:
    """SQL of ``variable``'s 11-count histogram as the published statistics build it: the
    count of zeros, then DuckDB's ``histogram`` of the nonzero values over
    :data:`HISTOGRAM_BOUNDARIES` (bins (previous, boundary]), its counts in order, resized to
    10 (no nonzero value: ten zeros; the overflow bin past the last boundary dropped).

    The boundaries are a list literal, as the published SQL has them: DuckDB casts a literal
    to the values' type (float32, so 0.035 is 0.0350000001 and a stored 0.035 is in its
    bin), while a DOUBLE[] parameter would compare the values as doubles instead."""
    boundaries = "[" + ", ".join(repr(b) for b in HISTOGRAM_BOUNDARIES) + "]"
    nonzero = (
        f"coalesce(map_values(histogram({variable}, {boundaries}) "
        f"FILTER (WHERE {variable} <> 0)), [])"
    )
    return (
        f"list_concat([count(*) FILTER (WHERE {variable} = 0)], "
        f"list_resize({nonzero}, {len(HISTOGRAM_BOUNDARIES)}, 0))::BIGINT[]"
    )


def statistics_query(level: str) -> tuple[str, dict[str, object]]:
    """SQL (and its parameters) of one level's statistics over the scan ``buildings_scan``:
    one row per unit with buildings, columns GEOID then :data:`STATISTICS_COLUMNS`, all in
    one pass over the buildings. Every statistic is the same whatever order DuckDB's threads
    meet the rows in (:func:`exact_mean`, :func:`order_free_median`, counts). Column names
    come from the constants above; values are parameters, never SQL text (the histogram
    boundaries are constants: :func:`published_histogram`)."""
    unit, params = _unit(level)
    params = {**params, **MEAN_PARAMETERS}
    aggregates = ", ".join(
        [
            "count(*)::BIGINT AS building_count",
            *(f"{exact_mean(v)} AS {c}" for c, v in MEAN_COLUMNS.items()),
            *(f"{order_free_median(v)} AS {c}" for c, v in MEDIAN_COLUMNS.items()),
            *(f"{published_histogram(v)} AS {c}" for c, v in SCORED.items()),
        ]
    )
    sql = (
        f"SELECT GEOID, {aggregates} "
        f"FROM (SELECT {unit} AS GEOID, {', '.join(STAT_VARIABLES)} FROM buildings_scan) "
        "GROUP BY GEOID"
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


def histograms_off(counts: np.ndarray, bin_counts: np.ndarray, bin_units: np.ndarray) -> int:
    """How many units' histogram does not sum to the unit's building count: ``bin_counts``
    are every histogram's bins, one after the other, ``bin_units`` the unit of each bin."""
    sums = np.bincount(bin_units, weights=bin_counts, minlength=len(counts))
    return int((sums != counts).sum())
