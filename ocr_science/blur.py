"""Gaussian smoothing of the combined field (docs/design.md §5 step 9)."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor

import numpy as np
from scipy.ndimage import correlate1d

from ocr_science.parallel import blocks, worker_threads

BLUR_RADIUS_M = 300.0
METRES_PER_DEGREE = 111_000.0


def blur_kernel_size(dlat_deg: float) -> int:
    """``2·int(300 m / pixel height) + 1`` (odd, at least 3): 19 at 1 arc-second."""
    return max(3, 2 * int(BLUR_RADIUS_M / (dlat_deg * METRES_PER_DEGREE)) + 1)


def blur_sigma(ksize: int) -> float:
    """OpenCV's sigma for a given kernel size when none is given."""
    return 0.3 * ((ksize - 1) * 0.5 - 1) + 0.8


def gaussian_weights(ksize: int, sigma: float) -> np.ndarray:
    """Normalised 1-D Gaussian of ``ksize`` taps (OpenCV ``getGaussianKernel``)."""
    x = np.arange(ksize) - (ksize - 1) / 2
    g = np.exp(-(x**2) / (2 * sigma**2))
    return (g / g.sum()).astype(np.float32)


def gaussian_blur(
    arr: np.ndarray, ksize: int, sigma: float, work: np.ndarray | None = None
) -> np.ndarray:
    """Separable float32 blur with reflect-101 borders; a NaN in the window makes NaN.

    Each pass is cut into strips along the other axis, which are independent, and SciPy
    releases the GIL, so the strips run on threads. ``work``: a float32 array of the same
    shape to hold the first pass instead of a new one.
    """
    g = gaussian_weights(ksize, sigma)
    src = arr.astype(np.float32, copy=False)
    columns = np.empty_like(src) if work is None else work
    out = np.empty_like(src)
    strips = worker_threads()
    with ThreadPoolExecutor(strips) as pool:
        for axis, source, target in ((0, src, columns), (1, columns, out)):
            other = src.shape[1 - axis]
            cuts = blocks(other, -(-other // strips))
            index = [(slice(None), s) if axis == 0 else (s, slice(None)) for s in cuts]
            jobs = [
                pool.submit(correlate1d, source[i], g, axis, target[i], "mirror") for i in index
            ]
            for job in jobs:
                job.result()
    return out


def gaussian_blur_ignoring_nan(
    arr: np.ndarray, ksize: int, sigma: float, work: np.ndarray | None = None
) -> np.ndarray:
    """The same blur with NaN treated as missing (the corrected model): each pixel is the
    weighted mean of the finite pixels of its window, weights renormalised to the finite
    ones, so one missing pixel no longer blanks the 19 × 19 window around it. Missing pixels
    stay NaN."""
    finite = np.isfinite(arr)
    values = gaussian_blur(np.where(finite, arr, np.float32(0)), ksize, sigma, work=work)
    weights = gaussian_blur(finite.astype(np.float32), ksize, sigma, work=work)
    with np.errstate(invalid="ignore", divide="ignore"):
        np.divide(values, weights, out=values)
    values[~finite] = np.nan
    return values
