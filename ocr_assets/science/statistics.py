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

LEVEL_GEOID_LENGTH: dict[str, int] = {
    "nation": 0,
    "states": 2,
    "counties": 5,
    "tracts": 11,
    "blocks": 15,
}
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


def _score_udf(values: pa.Array) -> pa.Array:
    """DuckDB vectorised UDF wrapping the one binning function."""
    return pa.array(risk_score(values.to_numpy(zero_copy_only=False)).astype(np.int8))


def connect() -> duckdb.DuckDBPyConnection:
    con = duckdb.connect()
    # FLOAT: the stored float32 precision, so bin edges match the values' own rounding
    con.create_function("risk_score", _score_udf, ["FLOAT"], "TINYINT", type="arrow")
    return con


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
        f"avg({v})::DOUBLE AS mean_{v}, median({v})::DOUBLE AS median_{v}" for v in STAT_VARIABLES
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
