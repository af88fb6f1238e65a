"""Gap-fill of the 270 m burn probability (docs/design.md §5 step 3)."""

from __future__ import annotations

import numpy as np


def surrounded_holes(bp: np.ndarray) -> np.ndarray:
    """Not-valid pixels (0 or NaN) whose four rook neighbours are all valid (BP > 0); pixels
    on the array's edge never count as surrounded, as published."""
    valid = bp > 0  # NaN compares False: not valid
    surrounded = np.zeros(bp.shape, dtype=bool)
    surrounded[1:-1, 1:-1] = valid[:-2, 1:-1] & valid[2:, 1:-1] & valid[1:-1, :-2] & valid[1:-1, 2:]
    return surrounded & ~valid


def window_mean_float32(bp: np.ndarray, rows: np.ndarray, cols: np.ndarray) -> np.ndarray:
    """Mean of the finite values of the centred 3 × 3 window at each (row, col), in float32
    exactly as xarray's ``rolling(…, center=True).mean(skipna=True)`` computes it over a
    float32 array: each window row's three values summed left to right, the three row sums
    added top to bottom (NumPy's order for the windowed view), divided by the count as
    float32. A float64 mean differs in the last bits, which the spreading then smears."""
    zero = np.float32(0)
    total = np.zeros(rows.shape, np.float32)
    count = np.zeros(rows.shape, np.int64)
    for dy in (-1, 0, 1):
        row_sum = np.zeros(rows.shape, np.float32)
        for dx in (-1, 0, 1):
            v = bp[rows + dy, cols + dx].astype(np.float32)
            finite = np.isfinite(v)
            row_sum = row_sum + np.where(finite, v, zero)
            count += finite
        total = total + row_sum
    return total / count.astype(np.float32)


def gap_fill(bp: np.ndarray) -> np.ndarray:
    """Fill isolated holes: a not-valid pixel whose four rook neighbours are all valid
    becomes the float32 mean of the finite values of its 3 × 3 window (zeros count, NaN is
    skipped), as published."""
    rows, cols = np.nonzero(surrounded_holes(bp))
    out = bp.copy()
    if rows.size:
        # a surrounded pixel has ≥ 4 finite neighbours, so the count is never 0
        out[rows, cols] = window_mean_float32(bp, rows, cols).astype(bp.dtype)
    return out
