"""Weighted composite of the eight spread fields and the combine step (docs/design.md §5 steps 7–8).

The composite is accumulated one direction at a time, so the fire model never holds the
eight spread fields together (1.3 GB each at full size), and keeps the weights only of the
pixels it is needed on, normalised as they are read (``WindWeights``), one stored chunk's
part of the window at a time (``WindTile``).
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import NamedTuple

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
def _gather_tile(
    weights: np.ndarray, next_kept: np.ndarray, tile: np.ndarray, chosen: np.ndarray
) -> int:
    """Copy the chosen pixels' eight weights (``tile``: rows × cols × 8), normalised to sum 1
    in float64, into ``weights[:, k]``, ``k`` counting on from ``next_kept[i]`` along each
    tile row ``i`` (advanced in place), and count the negative fractions among all pixels, in
    one pass over the tile. A pixel whose weights do not sum to more than 0 (all zero, or one
    NaN) gets NaN weights: it has no valid wind."""
    negative = 0
    for i in range(tile.shape[0]):
        kept = next_kept[i]
        for j in range(tile.shape[1]):
            total = 0.0
            for d in range(DIRECTION_COUNT):
                w = np.float64(tile[i, j, d])
                negative += w < 0
                total += w
            if chosen[i, j]:
                for d in range(DIRECTION_COUNT):
                    weights[d, kept] = tile[i, j, d] / total if total > 0 else np.nan
                kept += 1
        next_kept[i] = kept
    return negative


@numba.njit(cache=True, nogil=True, boundscheck=False)
def _scatter(out: np.ndarray, pixels: np.ndarray, total: np.ndarray, valid: np.ndarray) -> None:
    """``out[pixels[k]] = total[k]`` where the pixel's wind is valid, NaN elsewhere."""
    for k in range(pixels.size):
        out[pixels[k]] = total[k] if not np.isnan(valid[k]) else np.nan


@contextmanager
def _closing(tiles: Iterable[WindTile]) -> Iterator[Iterator[WindTile]]:
    """An iterator over ``tiles``, closed however the gather ends: a tile source may hold
    something between tiles (the storage's read slot), freed even when a gather stops early
    and its traceback keeps the source alive."""
    iterator = iter(tiles)
    try:
        yield iterator
    finally:
        close = getattr(iterator, "close", None)
        if close is not None:
            close()


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


class WindTile(NamedTuple):
    """A rectangle of a window's distribution in the stored layout: ``values`` (rows, cols, 8)
    at pixel ``(row, col)`` of the window. The storage reads a window one stored chunk's part
    at a time, so that only one decoded chunk (864 MB for the real wind) is alive."""

    row: int
    col: int
    values: np.ndarray


@dataclass(frozen=True)
class WindWeights:
    """A window's wind distribution kept only on the pixels the composite uses.

    The fire model needs the weights of the non-burnable pixels only (a third of a window), so
    a full-size window's distribution (8 × 38 M float32, 1.2 GB) is gathered tile by tile as
    it is read instead of being held whole: ``weights[d, k]`` is direction ``d`` at flat pixel
    ``pixels[k]``.
    """

    shape: tuple[int, int]
    pixels: np.ndarray  # flat indices into ``shape``, ascending (int32 when they fit)
    weights: np.ndarray  # (8, pixels.size) float32, each pixel's normalised: NaN if invalid

    @classmethod
    def gather_tiles(cls, tiles: Iterable[WindTile], where: np.ndarray) -> WindWeights:
        """From tiles covering ``where``'s shape once, each row's tiles from left to right (a
        chunk grid in row-major order does), kept on the pixels ``where`` is true: the same
        weights, bit for bit, whatever the tiling. A pixel's place among the kept ones is its
        row's start (the chosen pixels of the rows above) plus those chosen left of it in its
        row, counted on as the row's tiles arrive, so no row needs to be read whole. A
        negative fraction anywhere in the tiles raises ``NegativeWindWeights`` with their
        count."""
        pixels = np.flatnonzero(where)
        if pixels.size and pixels[-1] < 2**31:  # half the memory of the indices
            pixels = pixels.astype(np.int32)
        weights = np.empty((DIRECTION_COUNT, pixels.size), dtype=np.float32)
        height, width = where.shape
        chosen_per_row = np.count_nonzero(where, axis=1)
        next_kept = np.concatenate(([0], np.cumsum(chosen_per_row)[:-1])).astype(np.int64)
        filled = np.zeros(height, dtype=np.int64)  # each row's columns gathered so far
        negative = 0
        with _closing(tiles) as source:
            for row, col, values in source:
                rows, cols = values.shape[:2] if values.ndim == 3 else (0, 0)
                if (
                    values.ndim != 3
                    or values.shape[2] != DIRECTION_COUNT
                    or not (0 <= row <= row + rows <= height and 0 <= col <= col + cols <= width)
                    or (filled[row : row + rows] != col).any()
                ):
                    raise ValueError(
                        f"wind distribution tiles must cover a {where.shape} field once, each "
                        f"row from left to right, as (rows, cols, 8); got {values.shape} at "
                        f"({row}, {col})"
                    )
                span = slice(row, row + rows)
                negative += _gather_tile(
                    weights, next_kept[span], values, where[span, col : col + cols]
                )
                filled[span] += cols
                del values  # before the next tile is read: one tile alive, not two
        if (filled != width).any():
            raise ValueError(
                f"wind distribution tiles cover {int(filled.sum())} of the field's "
                f"{height * width} pixels"
            )
        if negative:
            raise NegativeWindWeights(negative)
        return cls(where.shape, pixels, weights)

    @classmethod
    def gather(cls, blocks: Iterable[np.ndarray], where: np.ndarray) -> WindWeights:
        """From consecutive row blocks ``(rows, W, 8)`` in the stored layout (directions last)
        covering ``where``'s shape: ``gather_tiles`` of full-width tiles."""
        height, width = where.shape

        def tiles() -> Iterator[WindTile]:
            row = 0
            for block in blocks:
                stop = row + len(block)
                if block.ndim != 3 or block.shape[1:] != (width, DIRECTION_COUNT) or stop > height:
                    raise ValueError(
                        f"wind distribution blocks must tile a {where.shape} field as "
                        f"(rows, {width}, 8); got {block.shape} at row {row}"
                    )
                yield WindTile(row, 0, block)
                row = stop
            if row != height:
                raise ValueError(
                    f"wind distribution blocks cover {row} of the field's {height} rows"
                )

        return cls.gather_tiles(tiles(), where)

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
