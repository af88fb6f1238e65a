"""Wind spreading by normalised convolution (DESIGN §5 step 6).

Each kernel is a binary ellipse scaled to sum 1, so a correlation with it is a sum of
contiguous row runs times one weight. Summing runs from a float64 running sum along x costs
O(kernel rows) per pixel and has none of the FFT noise that made the published code need its
1e-11 threshold (the threshold is still applied, as published).
"""

from __future__ import annotations

import numpy as np

# Published: values below this after a convolution are numerical noise and become 0.
NOISE_FLOOR = 1e-11
ITERATIONS = 3


def kernel_row_runs(kernel: np.ndarray) -> tuple[float, list[tuple[int, int, int]]]:
    """(weight, [(row, first_col, last_col)]) of a binary kernel; rejects any other kernel."""
    nonzero = kernel != 0
    values = np.unique(kernel[nonzero])
    if values.size != 1:
        raise ValueError("kernel must have one non-zero value (a normalised binary mask)")
    runs = []
    for row in np.flatnonzero(nonzero.any(axis=1)):
        cols = np.flatnonzero(nonzero[row])
        if cols[-1] - cols[0] + 1 != cols.size:
            raise ValueError(f"kernel row {row} is not one contiguous run")
        runs.append((int(row), int(cols[0]), int(cols[-1])))
    return float(values[0]), runs


def correlate(arr: np.ndarray, kernel: np.ndarray) -> np.ndarray:
    """Correlation anchored at the kernel centre with reflect-101 borders, as float32.

    ``out[i, j] = Σ K[u, v] · arr[i + u − cy, j + v − cx]`` (OpenCV ``filter2D`` semantics,
    ``BORDER_REFLECT_101`` = NumPy's ``reflect`` = SciPy's ``mirror``).
    """
    weight, runs = kernel_row_runs(kernel)
    kh, kw = kernel.shape
    cy, cx = kh // 2, kw // 2
    h, w = arr.shape
    padded = np.pad(arr.astype(np.float64), ((cy, kh - 1 - cy), (cx, kw - 1 - cx)), "reflect")
    csum = np.zeros((padded.shape[0], padded.shape[1] + 1))
    np.cumsum(padded, axis=1, out=csum[:, 1:])
    out = np.zeros((h, w))
    for row, first, last in runs:
        rows = csum[row : row + h]
        out += rows[:, last + 1 : last + 1 + w]
        out -= rows[:, first : first + w]
    out *= weight
    return out.astype(np.float32)


def spread(bp30: np.ndarray, kernel: np.ndarray, iterations: int = ITERATIONS) -> np.ndarray:
    """Spread burn probability into non-burnable pixels along one wind direction.

    Three rounds of normalised convolution: the mean of the burnable neighbours under the
    kernel. NaN (no data) counts as 0 while spreading and is restored afterwards.
    """
    arr = np.nan_to_num(bp30.astype(np.float32), nan=0.0)
    for _ in range(iterations):
        m = correlate((arr > 0).astype(np.float32), kernel)
        c = correlate(arr, kernel)
        m[m < NOISE_FLOOR] = 0
        c[c < NOISE_FLOOR] = 0
        out = np.zeros_like(c)
        np.divide(c, m, out=out, where=m > 0)
        arr = out
    arr[np.isnan(bp30)] = np.nan
    return arr
