"""The one binning function (docs/design.md §5, risk score)."""

import numpy as np
import pytest

from ocr_science.scoring import risk_score, score_histogram

EDGES = [0.01, 0.02, 0.035, 0.06, 0.1, 0.2, 0.5, 1, 3]


def test_scores_at_and_around_every_edge():
    assert risk_score(np.array([0.0]))[0] == 0
    assert risk_score(np.array([1e-9]))[0] == 1
    for score, edge in enumerate(EDGES, start=2):
        below, at, above = np.nextafter(edge, 0), edge, np.nextafter(edge, 10)
        assert risk_score(np.array([below, at, above])).tolist() == [score - 1, score, score]
    assert risk_score(np.array([100.0]))[0] == 10


def test_histogram_counts_every_value_once():
    values = np.array([0, 0, 0.005, 0.01, 3, 99.9, 0.5])
    hist = score_histogram(values)
    assert hist.tolist() == [2, 1, 1, 0, 0, 0, 0, 0, 1, 0, 2]
    assert hist.sum() == values.size


def test_bad_values_are_refused():
    with pytest.raises(ValueError, match="finite and >= 0"):
        risk_score(np.array([np.nan]))
    with pytest.raises(ValueError, match="finite and >= 0"):
        risk_score(np.array([-1.0]))


def test_float32_values_on_an_edge_land_in_the_bin_that_starts_there():
    edges32 = np.array(EDGES, dtype=np.float32)  # 0.01 → 0.0099999998 in float32
    assert risk_score(edges32).tolist() == list(range(2, 11))
    assert risk_score(np.nextafter(edges32, np.float32(0))).tolist() == list(range(1, 10))
