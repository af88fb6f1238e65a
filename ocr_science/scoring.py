"""Risk score: the one binning function used for building scores and histograms alike."""

from __future__ import annotations

import numpy as np

# Lower-inclusive bin edges of RPS (%) for scores 1–10; RPS == 0 is score 0.
SCORE_EDGES = np.array([0.01, 0.02, 0.035, 0.06, 0.1, 0.2, 0.5, 1, 3], dtype=np.float64)
N_SCORES = SCORE_EDGES.size + 2  # 0 … 10
# The published statistics' histogram (docs/published.md §4.4): element 0 counts the zeros, elements
# 1–10 are DuckDB's ``histogram(x, HISTOGRAM_BOUNDARIES)`` of the nonzero values, whose bins are
# (previous boundary, boundary] in the values' own precision (float32), values above the last
# boundary left out. It differs from :func:`risk_score` (the documented [a, b) scores) only for
# values exactly on an edge; the published files are built this way, so ours are too.
HISTOGRAM_BOUNDARIES: tuple[float, ...] = (*(float(e) for e in SCORE_EDGES), 100.0)

# score 0 (no risk) grey, then 1–10 from pale yellow to dark red
RISK_COLORS: tuple[str, ...] = (
    "#c8c8c8",
    "#fff3b0",
    "#ffe08a",
    "#fec866",
    "#fdaa4b",
    "#fb8b3d",
    "#f26532",
    "#dc3e2c",
    "#b8202f",
    "#8a0f38",
    "#560a36",
)
assert len(RISK_COLORS) == N_SCORES  # one colour per score, shared by previews and the map
# the same colours as RGB bytes, indexed by score
RISK_RGB = np.array([[int(c[i : i + 2], 16) for i in (1, 3, 5)] for c in RISK_COLORS], np.uint8)


def risk_score(rps: np.ndarray) -> np.ndarray:
    """Score 0–10 per value: 0 if RPS == 0, then [0, 0.01) → 1, [0.01, 0.02) → 2 … [3, 100] → 10.

    Edges are compared in the values' own precision: RPS is stored as float32, where 0.01
    reads back as 0.0099999998, and must still land in the bin that starts at 0.01.
    """
    values = np.asarray(rps)
    if values.dtype.kind != "f":
        values = values.astype(np.float64)
    if np.isnan(values).any() or (values < 0).any():
        raise ValueError("risk score needs RPS values that are finite and >= 0")
    score = 1 + np.searchsorted(SCORE_EDGES.astype(values.dtype), values, side="right")
    return np.where(values == 0, 0, score).astype(np.int8)


def score_histogram(rps: np.ndarray) -> np.ndarray:
    """Counts of scores 0–10 (index = score); sums to the number of values."""
    return np.bincount(risk_score(rps).astype(np.int64).ravel(), minlength=N_SCORES)


def score_rgba(rps: np.ndarray) -> np.ndarray:
    """RGBA bytes (``rps.shape + (4,)``) of each value's score colour, as the map draws the
    risk surface: transparent where the value is missing (NaN) or 0 (no risk), so what lies
    under the raster shows through there."""
    values = np.asarray(rps)
    shown = np.isfinite(values) & (values > 0)
    rgba = np.zeros((*values.shape, 4), np.uint8)
    rgba[shown, :3] = RISK_RGB[risk_score(values[shown])]
    rgba[shown, 3] = 255
    return rgba
