"""Weighted composite of the eight spread fields and the combine step (DESIGN §5 steps 7–8)."""

from __future__ import annotations

import numpy as np


def normalise_wind_weights(distribution: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(weights, valid) from a (8, H, W) wind distribution.

    A pixel is valid when its weights sum to more than 0 and none is NaN; valid weights are
    divided by their sum. A negative weight anywhere means a broken input, not a pixel to skip.
    """
    if distribution.ndim != 3 or distribution.shape[0] != 8:
        raise ValueError(f"wind distribution must have shape (8, H, W); got {distribution.shape}")
    if np.any(distribution < 0):
        raise ValueError(
            f"wind distribution has {int(np.sum(distribution < 0))} negative weight(s); "
            "expected fractions of hours >= 0"
        )
    total = distribution.sum(axis=0, dtype=np.float64)
    valid = ~np.isnan(distribution).any(axis=0) & (total > 0)
    weights = np.zeros(distribution.shape, dtype=np.float64)
    np.divide(distribution, total, out=weights, where=valid)
    return weights, valid


def composite(spread_fields: np.ndarray, distribution: np.ndarray) -> np.ndarray:
    """``Σ_d spread_d · w_d`` over the eight directions, skipping NaN terms; invalid → NaN."""
    if spread_fields.shape != distribution.shape:
        raise ValueError(
            f"spread fields {spread_fields.shape} and wind distribution "
            f"{distribution.shape} must have the same shape"
        )
    weights, valid = normalise_wind_weights(distribution)
    terms = spread_fields.astype(np.float64) * weights
    out = np.nansum(terms, axis=0).astype(np.float32)
    out[~valid] = np.nan
    return out


def combine(bp30: np.ndarray, bp_wind: np.ndarray) -> np.ndarray:
    """Wind-spread values fill the non-burnable (exactly 0) pixels; the rest keep ``bp30``."""
    return np.where(bp30 == 0, bp_wind, bp30).astype(np.float32)
