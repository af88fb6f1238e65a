"""Summary statistics against a hand computation on a tiny constructed input."""

import numpy as np
import pyarrow as pa
import pytest

from ocr_assets.science.statistics import STAT_VARIABLES, connect, level_statistics


def _table(geoids, rps_2011, rps_2047=None):
    n = len(geoids)
    columns = {"GEOID": pa.array(geoids)}
    for v in STAT_VARIABLES:
        columns[v] = pa.array(np.full(n, 0.5, np.float32))
    columns["rps_2011"] = pa.array(np.array(rps_2011, np.float32))
    columns["rps_2047"] = pa.array(
        np.array(rps_2047 if rps_2047 is not None else rps_2011, np.float32)
    )
    return pa.table(columns)


BLOCK_A = "060030001001001"  # state 06, county 06003, tract 06003000100
BLOCK_B = "060030001001002"  # same tract
BLOCK_C = "060050002001001"  # other county
BLOCK_D = "320030001001001"  # other state


def test_hand_computed_means_medians_histograms():
    # RPS values on bin edges: 0 → 0, 0.01 → 2, 0.02 → 3, 3 → 10, 0.009 → 1
    table = _table([BLOCK_A, BLOCK_A, BLOCK_B, BLOCK_C, BLOCK_D], [0.0, 0.01, 0.02, 3.0, 0.009])
    con = connect()
    counties = level_statistics(con, table, "counties").set_index("GEOID")
    a = counties.loc["06003"]
    assert a["building_count"] == 3
    assert a["rps_2011_mean"] == pytest.approx((0 + 0.01 + 0.02) / 3, rel=1e-6)
    assert a["rps_2011_median"] == pytest.approx(0.01, rel=1e-6)
    assert a["risk_score_2011_hist"] == [1, 0, 1, 1, 0, 0, 0, 0, 0, 0, 0]
    assert counties.loc["06005", "risk_score_2011_hist"] == [0] * 10 + [1]
    nation = level_statistics(con, table, "nation")
    assert nation["GEOID"].tolist() == ["US"] and nation["building_count"].tolist() == [5]
    assert nation["risk_score_2011_hist"][0] == [1, 1, 1, 1, 0, 0, 0, 0, 0, 0, 1]
    assert nation["rps_2011_median"][0] == pytest.approx(0.01, rel=1e-6)
    states = level_statistics(con, table, "states").set_index("GEOID")
    assert states["building_count"].to_dict() == {"06": 4, "32": 1}
    tracts = level_statistics(con, table, "tracts").set_index("GEOID")
    assert tracts.loc["06003000100", "building_count"] == 3
    blocks = level_statistics(con, table, "blocks").set_index("GEOID")
    assert blocks.loc[BLOCK_A, "building_count"] == 2
    # every level counts every building exactly once
    for level in ("nation", "states", "counties", "tracts", "blocks"):
        stats = level_statistics(con, table, level)
        assert stats["building_count"].sum() == 5
        assert all(
            sum(h) == c
            for h, c in zip(stats["risk_score_2047_hist"], stats["building_count"], strict=True)
        )


def test_unknown_level_is_refused():
    with pytest.raises(ValueError, match="census level"):
        level_statistics(connect(), _table([BLOCK_A], [0.1]), "zipcodes")
