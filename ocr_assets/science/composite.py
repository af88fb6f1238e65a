"""Weighted composite of the eight spread fields and the combine step (DESIGN §5 steps 7–8).

The composite is accumulated one direction at a time, so the fire model never holds the
eight spread fields together (1.3 GB each at full size): ``Σ_d spread_d · w_d`` with the raw
weights, divided by ``Σ_d w_d`` at the end, equals the sum with normalised weights.
"""

from __future__ import annotations

import numba
import numpy as np

DIRECTION_COUNT = 8


@numba.njit(cache=True, nogil=True, boundscheck=False)
def _accumulate(
    total: np.ndarray, pixels: np.ndarray, spread_field: np.ndarray, weight: np.ndarray
) -> None:
    """``total[k] += spread[p] · weight[p]`` for ``p = pixels[k]`` in float64, skipping NaN
    spread terms."""
    s, w = spread_field.ravel(), weight.ravel()
    for k in range(pixels.size):
        p = pixels[k]
        if not np.isnan(s[p]):
            total[k] += np.float64(s[p]) * np.float64(w[p])


@numba.njit(cache=True, nogil=True, boundscheck=False)
def _gather_weights(weight_sum: np.ndarray, pixels: np.ndarray, weight: np.ndarray) -> int:
    """``weight_sum[k] += weight[pixels[k]]``; returns the number of negative weights."""
    w = weight.ravel()
    negative = 0
    for p in range(w.size):
        if w[p] < 0:
            negative += 1
    for k in range(pixels.size):
        weight_sum[k] += w[pixels[k]]
    return negative


class WindComposite:
    """``Σ_d spread_d · w_d`` over the directions, fed one spread field at a time, on the
    pixels ``where`` says (all by default; the fire model needs only the non-burnable ones,
    a third of a window, so it keeps a third of the memory and work).

    A pixel is valid when its weights sum to more than 0 and none is NaN; a negative weight
    anywhere means a broken input, not a pixel to skip.
    """

    def __init__(self, distribution: np.ndarray, where: np.ndarray | None = None) -> None:
        if distribution.ndim != 3 or distribution.shape[0] != DIRECTION_COUNT:
            raise ValueError(
                f"wind distribution must have shape (8, H, W); got {distribution.shape}"
            )
        self.shape = distribution.shape[1:]
        self.distribution = distribution
        self.pixels = np.arange(np.prod(self.shape)) if where is None else np.flatnonzero(where)
        # NaN in any direction makes the sum NaN, so `> 0` in result() is the validity test
        self.weight_sum = np.zeros(self.pixels.size)
        negative = sum(_gather_weights(self.weight_sum, self.pixels, w) for w in distribution)
        if negative:
            raise ValueError(
                f"wind distribution has {negative} negative weight(s); "
                "expected fractions of hours >= 0"
            )
        self.total = np.zeros(self.pixels.size)

    def add(self, direction: int, spread_field: np.ndarray) -> None:
        """Add one direction's spread field (same shape as the distribution's last two axes)."""
        if spread_field.shape != self.shape:
            raise ValueError(
                f"spread field {spread_field.shape} and wind distribution "
                f"{self.distribution.shape} must cover the same pixels"
            )
        _accumulate(self.total, self.pixels, spread_field, self.distribution[direction])

    def result(self, out: np.ndarray | None = None) -> np.ndarray:
        """The composite as float32; NaN where the pixel's wind is not valid (and outside
        ``where``). ``out``: a float32 array to fill instead of a new one."""
        values = np.full(self.pixels.size, np.nan)
        np.divide(self.total, self.weight_sum, out=values, where=self.weight_sum > 0)
        out = np.empty(self.shape, dtype=np.float32) if out is None else out
        out.fill(np.nan)
        out.ravel()[self.pixels] = values
        return out


def composite(spread_fields: np.ndarray, distribution: np.ndarray) -> np.ndarray:
    """``Σ_d spread_d · w_d`` over eight stacked spread fields, skipping NaN terms."""
    if spread_fields.shape != distribution.shape:
        raise ValueError(
            f"spread fields {spread_fields.shape} and wind distribution "
            f"{distribution.shape} must have the same shape"
        )
    acc = WindComposite(distribution)
    for direction, field in enumerate(spread_fields):
        acc.add(direction, field)
    return acc.result()


def combine(bp30: np.ndarray, bp_wind: np.ndarray, out: np.ndarray | None = None) -> np.ndarray:
    """Wind-spread values fill the non-burnable (exactly 0) pixels; the rest keep ``bp30``.
    ``out``: a float32 array to fill instead of a new one (a fresh full-size array costs
    more in page faults than this whole step)."""
    out = np.empty(bp30.shape, dtype=np.float32) if out is None else out
    np.copyto(out, bp30)
    np.copyto(out, bp_wind, where=bp30 == 0)
    return out
