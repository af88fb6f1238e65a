"""Summary statistics against a hand computation on a tiny constructed input."""

import numpy as np
import pyarrow as pa
import pytest

from ocr_science.scoring import HISTOGRAM_BOUNDARIES
from ocr_science.statistics import (
    STAT_VARIABLES,
    STATISTICS_COLUMNS,
    connect,
    histograms_off,
    level_statistics,
)


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
    # RPS values on bin edges, binned as the published histogram (bins (previous, edge]):
    # 0 → element 0, 0.009 and 0.01 → 1, 0.02 → 2, 3 → 9
    table = _table([BLOCK_A, BLOCK_A, BLOCK_B, BLOCK_C, BLOCK_D], [0.0, 0.01, 0.02, 3.0, 0.009])
    con = connect()
    counties = level_statistics(con, table, "counties").set_index("GEOID")
    a = counties.loc["06003"]
    assert a["building_count"] == 3
    assert a["rps_2011_mean"] == pytest.approx((0 + 0.01 + 0.02) / 3, rel=1e-6)
    assert a["rps_2011_median"] == pytest.approx(0.01, rel=1e-6)
    assert a["risk_score_2011_hist"] == [1, 1, 1, 0, 0, 0, 0, 0, 0, 0, 0]
    assert counties.loc["06005", "risk_score_2011_hist"] == [0] * 9 + [1, 0]
    nation = level_statistics(con, table, "nation")
    assert nation["GEOID"].tolist() == ["US"] and nation["building_count"].tolist() == [5]
    assert nation["risk_score_2011_hist"][0] == [1, 2, 1, 0, 0, 0, 0, 0, 0, 1, 0]
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


def test_statistics_columns_are_in_the_published_order():
    stats = level_statistics(connect(), _table([BLOCK_A], [0.1]), "counties")
    means = [f"{v}_mean" for v in STAT_VARIABLES]
    medians = [f"{v}_median" for v in STAT_VARIABLES]
    hists = ["risk_score_2011_hist", "risk_score_2047_hist"]
    assert list(stats.columns) == ["GEOID", "building_count", *means, *medians, *hists]
    assert list(STATISTICS_COLUMNS) == list(stats.columns[1:])
    assert means[0] == "rps_2011_mean" and "rps_scott_mean" not in means


def test_histogram_is_duckdbs_own_over_the_nonzero_values():
    """Ours against DuckDB's ``histogram`` as the published SQL calls it (a literal boundary
    list, float32 values): every float32 edge value, its neighbours, zeros, a value past the
    last boundary. DuckDB's bins are (previous, edge]: an edge value is in the bin it closes."""
    edges32 = np.array(HISTOGRAM_BOUNDARIES, np.float32)
    values = np.concatenate(
        [
            [0.0, 0.0, 1e-7, 120.0],
            edges32,
            np.nextafter(edges32, np.float32(0)),
            np.nextafter(edges32, np.float32(1000)),
        ]
    ).astype(np.float32)
    ours = level_statistics(connect(), _table([BLOCK_A] * values.size, values), "nation")
    hist = ours["risk_score_2011_hist"][0]
    con = connect()
    literal = "[" + ", ".join(repr(b) for b in HISTOGRAM_BOUNDARIES) + "]"
    published = con.execute(
        f"SELECT map_values(histogram(x, {literal})) FROM (SELECT unnest($v)::FLOAT AS x) "
        "WHERE x <> 0",
        {"v": values.tolist()},
    ).fetchone()[0]
    assert hist == [2, *published[:10]]
    # independently: bin i (1–10) holds the nonzero values in (edge[i-2], edge[i-1]]
    nonzero = values[values != 0]
    expected = np.bincount(np.searchsorted(edges32, nonzero, side="left"), minlength=11)
    assert hist == [2, *expected[:10].tolist()]
    # an edge value is in the bin its edge closes (0.01 → element 1), the next float above in
    # the next bin; 120 and the float above 100 (past the last boundary) are in no bin, as
    # published
    assert expected[0] == 3 and expected[10] == 2 and sum(hist) == values.size - 2


def test_histograms_off_counts_units_whose_bins_do_not_sum_to_their_count():
    """By hand: unit 0's bins sum to its 3 buildings, unit 1's to 1 of its 2, unit 2 has no
    bins (sums to 0, not its 4)."""
    counts = np.array([3, 2, 4])
    assert histograms_off(counts, np.array([1, 2, 0, 1]), np.array([0, 0, 1, 1])) == 2
    assert histograms_off(counts[:2], np.array([1, 2, 2]), np.array([0, 0, 1])) == 0
