"""Gap-fill of the 270 m burn probability (DESIGN §5 step 3)."""

from __future__ import annotations

import numpy as np


def gap_fill(bp: np.ndarray) -> np.ndarray:
    """Fill isolated holes: a not-valid pixel (0 or NaN) whose four rook neighbours are all
    valid (BP > 0) becomes the mean of the finite values of its 3 × 3 window.

    Zeros count in the mean and NaN is skipped, as published; pixels on the array's edge
    never count as surrounded.
    """
    valid = bp > 0  # NaN compares False: not valid
    surrounded = np.zeros(bp.shape, dtype=bool)
    surrounded[1:-1, 1:-1] = valid[:-2, 1:-1] & valid[2:, 1:-1] & valid[1:-1, :-2] & valid[1:-1, 2:]
    target = surrounded & ~valid
    if not target.any():
        return bp.copy()
    finite = np.isfinite(bp)
    values = np.pad(np.where(finite, bp, 0).astype(np.float64), 1)
    counts = np.pad(finite.astype(np.int32), 1)
    h, w = bp.shape
    total = sum(values[i : i + h, j : j + w] for i in range(3) for j in range(3))
    count = sum(counts[i : i + h, j : j + w] for i in range(3) for j in range(3))
    out = bp.copy()
    out[target] = (total[target] / count[target]).astype(bp.dtype)
    return out
