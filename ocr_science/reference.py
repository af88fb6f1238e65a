"""A straightforward float64 implementation of docs/design.md §5 steps 6–9, to check the fast one.

SciPy's ``correlate`` over the full kernel area (``mode="mirror"`` is OpenCV's
BORDER_REFLECT_101) and an explicit weighted sum: slow and memory-hungry, but each line is a
formula of the design, so tests and ``bench/`` compare the production path against it.
"""

from __future__ import annotations

import numpy as np
from scipy.ndimage import correlate

from ocr_science.blur import blur_kernel_size, blur_sigma, gaussian_blur
from ocr_science.composite import combine
from ocr_science.kernels import DIRECTIONS
from ocr_science.spreading import ITERATIONS, NOISE_FLOOR


def reference_spread(bp30: np.ndarray, kernel: np.ndarray, iterations: int = ITERATIONS):
    """Spreading along one direction in float64 (no float32 rounding between rounds)."""
    k = kernel.astype(np.float64)
    arr = np.nan_to_num(bp30.astype(np.float64), nan=0.0)
    for _ in range(iterations):
        m = correlate((arr > 0).astype(np.float64), k, mode="mirror")
        c = correlate(arr, k, mode="mirror")
        m[m < NOISE_FLOOR] = 0
        c[c < NOISE_FLOOR] = 0
        arr = np.divide(c, m, out=np.zeros_like(c), where=m > 0)
    arr[np.isnan(bp30)] = np.nan
    return arr


def reference_composite(spread_fields: np.ndarray, distribution: np.ndarray) -> np.ndarray:
    """``Σ_d spread_d · w_d / Σ_d w_d`` skipping NaN spread terms; NaN where the pixel's wind
    has a NaN or sums to 0."""
    w = distribution.astype(np.float64)
    total = w.sum(axis=0)
    valid = ~np.isnan(w).any(axis=0) & (total > 0)
    terms = np.where(np.isnan(spread_fields), 0.0, spread_fields * w)
    out = np.full(total.shape, np.nan)
    np.divide(terms.sum(axis=0), total, out=out, where=valid)
    return out


def reference_field(
    bp30: np.ndarray,
    wind: np.ndarray,
    latitude: np.ndarray,
    kernels: dict[str, np.ndarray],
) -> np.ndarray:
    """Steps 6–9 with the float64 references for spreading and composite."""
    spread_fields = np.stack([reference_spread(bp30, kernels[d]) for d in DIRECTIONS])
    combined = combine(bp30, reference_composite(spread_fields, wind))
    k = blur_kernel_size(float(latitude[1] - latitude[0]))
    return gaussian_blur(combined, k, blur_sigma(k))
