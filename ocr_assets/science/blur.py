"""Gaussian smoothing of the combined field (DESIGN §5 step 9)."""

from __future__ import annotations

import numpy as np
from scipy.ndimage import correlate1d

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


def gaussian_blur(arr: np.ndarray, ksize: int, sigma: float) -> np.ndarray:
    """Separable float32 blur with reflect-101 borders; a NaN in the window makes NaN."""
    g = gaussian_weights(ksize, sigma)
    out = correlate1d(arr.astype(np.float32), g, axis=0, mode="mirror")
    return correlate1d(out, g, axis=1, mode="mirror")
