"""Weighted composite of the eight spread fields and the combine step (DESIGN §5 steps 7–8).

The composite is accumulated one direction at a time, so the fire model never holds the
eight spread fields together (1.3 GB each at full size), and keeps the weights only of the
pixels it is needed on, normalised as they are read (``WindWeights``).
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

import numba
import numpy as np

DIRECTION_COUNT = 8
GATHER_ROWS = 256  # rows of an in-memory (unchunked) distribution gathered at a time


@numba.njit(cache=True, nogil=True, boundscheck=False)
def _accumulate(
    total: np.ndarray, pixels: np.ndarray, spread_field: np.ndarray, weight: np.ndarray
) -> None:
    """``total[k] += spread[pixels[k]] · weight[k]`` in float64, skipping NaN spread terms."""
    s = spread_field.ravel()
    for k in range(pixels.size):
        v = s[pixels[k]]
        if not np.isnan(v):
            total[k] += np.float64(v) * np.float64(weight[k])


@numba.njit(cache=True, nogil=True, boundscheck=False)
def _gather_block(
    weights: np.ndarray, kept: int, flat: np.ndarray, chosen: np.ndarray
) -> tuple[int, int]:
    """Copy the chosen pixels' eight weights (``flat``: pixels × 8), normalised to sum 1 in
    float64, into ``weights[:, kept:]``, and count the negative fractions among all pixels,
    in one pass over the block. A pixel whose weights do not sum to more than 0 (all zero,
    or one NaN) gets NaN weights: it has no valid wind."""
    negative = 0
    for p in range(flat.shape[0]):
        total = 0.0
        for d in range(DIRECTION_COUNT):
            w = np.float64(flat[p, d])
            negative += w < 0
            total += w
        if chosen[p]:
            for d in range(DIRECTION_COUNT):
                weights[d, kept] = flat[p, d] / total if total > 0 else np.nan
            kept += 1
    return kept, negative


@numba.njit(cache=True, nogil=True, boundscheck=False)
def _scatter(out: np.ndarray, pixels: np.ndarray, total: np.ndarray, valid: np.ndarray) -> None:
    """``out[pixels[k]] = total[k]`` where the pixel's wind is valid, NaN elsewhere."""
    for k in range(pixels.size):
        out[pixels[k]] = total[k] if not np.isnan(valid[k]) else np.nan


class NegativeWindWeights(ValueError):
    """The distribution has negative fractions: a broken input, not pixels to skip."""

    def __init__(self, count: int) -> None:
        super().__init__(count)
        self.count = count

    def __str__(self) -> str:
        return (
            f"wind distribution has {self.count} negative weight(s); "
            "expected fractions of hours >= 0"
        )


@dataclass(frozen=True)
class WindWeights:
    """A window's wind distribution kept only on the pixels the composite uses.

    The fire model needs the weights of the non-burnable pixels only (a third of a window), so
    a full-size window's distribution (8 × 39.5 M float32, 1.26 GB) is gathered block by block
    as it is read instead of being held whole: ``weights[d, k]`` is direction ``d`` at flat
    pixel ``pixels[k]``.
    """

    shape: tuple[int, int]
    pixels: np.ndarray  # flat indices into ``shape``, ascending (int32 when they fit)
    weights: np.ndarray  # (8, pixels.size) float32, each pixel's normalised: NaN if invalid

    @classmethod
    def gather(cls, blocks: Iterable[np.ndarray], where: np.ndarray) -> WindWeights:
        """From consecutive row blocks ``(rows, W, 8)`` in the stored layout (directions last)
        covering ``where``'s shape, kept on the pixels ``where`` is true. A negative fraction
        anywhere in the blocks raises ``NegativeWindWeights`` with their count."""
        pixels = np.flatnonzero(where)
        if pixels.size and pixels[-1] < 2**31:  # half the memory of the indices
            pixels = pixels.astype(np.int32)
        weights = np.empty((DIRECTION_COUNT, pixels.size), dtype=np.float32)
        (height, width), row, kept, negative = where.shape, 0, 0, 0
        for block in blocks:
            stop = row + len(block)
            if block.ndim != 3 or block.shape[1:] != (width, DIRECTION_COUNT) or stop > height:
                raise ValueError(
                    f"wind distribution blocks must tile a {where.shape} field as "
                    f"(rows, {width}, 8); got {block.shape} at row {row}"
                )
            flat = np.ascontiguousarray(block).reshape(-1, DIRECTION_COUNT)
            kept, found = _gather_block(weights, kept, flat, where[row:stop].ravel())
            row, negative = stop, negative + found
        if row != height:
            raise ValueError(f"wind distribution blocks cover {row} of the field's {height} rows")
        if negative:
            raise NegativeWindWeights(negative)
        return cls(where.shape, pixels, weights)

    @classmethod
    def from_stack(cls, distribution: np.ndarray, where: np.ndarray | None = None) -> WindWeights:
        """From an in-memory ``(8, H, W)`` distribution (tests, the reference, the bench)."""
        if distribution.ndim != 3 or distribution.shape[0] != DIRECTION_COUNT:
            raise ValueError(
                f"wind distribution must have shape (8, H, W); got {distribution.shape}"
            )
        rows = range(0, distribution.shape[1], GATHER_ROWS)
        blocks = (np.moveaxis(distribution[:, r : r + GATHER_ROWS], 0, -1) for r in rows)
        everywhere = np.ones(distribution.shape[1:], dtype=bool)
        return cls.gather(blocks, everywhere if where is None else where)


class WindComposite:
    """``Σ_d spread_d · w_d`` over the directions, fed one spread field at a time, on the
    pixels the weights were gathered on (normalised there: a pixel is valid when its weights
    sum to more than 0 and none is NaN)."""

    def __init__(self, wind: WindWeights) -> None:
        self.wind = wind
        self.total = np.zeros(wind.pixels.size)

    def add(self, direction: int, spread_field: np.ndarray) -> None:
        """Add one direction's spread field (the shape the weights were gathered on)."""
        if spread_field.shape != self.wind.shape:
            raise ValueError(
                f"spread field {spread_field.shape} and wind distribution "
                f"{self.wind.shape} must cover the same pixels"
            )
        _accumulate(self.total, self.wind.pixels, spread_field, self.wind.weights[direction])

    def result(self, out: np.ndarray | None = None) -> np.ndarray:
        """The composite as float32; NaN where the pixel's wind is not valid (and outside
        the gathered pixels). ``out``: a float32 array to fill instead of a new one."""
        out = np.empty(self.wind.shape, dtype=np.float32) if out is None else out
        out.fill(np.nan)
        _scatter(out.ravel(), self.wind.pixels, self.total, self.wind.weights[0])
        return out


def composite(spread_fields: np.ndarray, distribution: np.ndarray) -> np.ndarray:
    """``Σ_d spread_d · w_d`` over eight stacked spread fields, skipping NaN terms."""
    if spread_fields.shape != distribution.shape:
        raise ValueError(
            f"spread fields {spread_fields.shape} and wind distribution "
            f"{distribution.shape} must have the same shape"
        )
    acc = WindComposite(WindWeights.from_stack(distribution))
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
