"""Normalised convolution (DESIGN §5 step 6)."""

import numpy as np
import pytest
from scipy.ndimage import correlate as scipy_correlate

from ocr_assets.science.kernels import direction_kernel
from ocr_assets.science.spreading import NOISE_FLOOR, correlate, kernel_row_runs, spread


def _box(h, w, size=3):
    k = np.zeros((h, w), np.float32)
    c0, c1 = h // 2 - size // 2, w // 2 - size // 2
    k[c0 : c0 + size, c1 : c1 + size] = 1
    return k / k.sum()


def test_correlate_hand_computed_case():
    arr = np.arange(16, dtype=np.float32).reshape(4, 4)
    kernel = _box(3, 3)
    out = correlate(arr, kernel)
    # interior pixel (1, 1): mean of rows 0–2, cols 0–2
    assert out[1, 1] == pytest.approx(np.mean(arr[0:3, 0:3]))
    # corner (0, 0) with reflect-101: rows (1, 0, 1), cols (1, 0, 1)
    rows, cols = [1, 0, 1], [1, 0, 1]
    assert out[0, 0] == pytest.approx(np.mean(arr[np.ix_(rows, cols)]))


def test_correlate_matches_scipy_mirror_and_not_reflect():
    """Reflect-101 borders (OpenCV default) = SciPy 'mirror'; 'reflect' repeats the edge."""
    rng = np.random.default_rng(1)
    arr = rng.random((60, 70)).astype(np.float32)
    kernel = direction_kernel("SW", 24.3, 30.9)
    ours = correlate(arr, kernel)
    reference = scipy_correlate(arr.astype(np.float64), kernel.astype(np.float64), mode="mirror")
    assert np.allclose(ours, reference, rtol=1e-5, atol=1e-7)
    edge_repeated = scipy_correlate(
        arr.astype(np.float64), kernel.astype(np.float64), mode="reflect"
    )
    assert not np.allclose(ours[:5], edge_repeated[:5], rtol=1e-5, atol=1e-7)


def test_kernel_row_runs_rejects_non_binary_kernels():
    k = _box(5, 5)
    k[2, 2] *= 2
    with pytest.raises(ValueError, match="one non-zero value"):
        kernel_row_runs(k)
    gap = np.zeros((3, 5), np.float32)
    gap[1, [0, 2]] = 0.5
    with pytest.raises(ValueError, match="contiguous"):
        kernel_row_runs(gap)


def test_spread_hand_case_fills_a_hole_with_the_neighbour_mean():
    arr = np.full((5, 5), 0.2, np.float32)
    arr[2, 2] = 0.0
    arr[0, 0] = 0.5
    out = spread(arr, _box(3, 3), iterations=1)
    # the hole becomes mean of its 8 burnable neighbours (all 0.2)
    assert out[2, 2] == pytest.approx(0.2)
    # (1, 1): c = mean(0.5, 0.2 × 7, 0) over 9, m = 8/9 → (0.5 + 1.4) / 8
    assert out[1, 1] == pytest.approx((0.5 + 7 * 0.2) / 8)


def test_spread_no_negatives_and_nan_restored():
    rng = np.random.default_rng(2)
    bp = (rng.random((80, 90)) * 0.05).astype(np.float32)
    bp[rng.random(bp.shape) < 0.3] = 0
    bp[10:20, 10:20] = np.nan
    out = spread(bp, direction_kernel("N", 24.3, 30.9))
    assert np.isnan(out[10:20, 10:20]).all()
    assert np.isfinite(np.delete(out.ravel(), np.flatnonzero(np.isnan(bp).ravel()))).all()
    assert np.nanmin(out) >= 0


def test_values_below_noise_floor_become_zero():
    """The published 1e-11 threshold: a tiny burnable pixel does not spread."""
    arr = np.zeros((9, 9), np.float32)
    arr[4, 4] = 5e-11  # c = 5e-11 / 9 < 1e-11, m = 1/9 > 1e-11
    out = spread(arr, _box(3, 3), iterations=1)
    assert (out == 0).all()
    arr[4, 4] = 5e-9  # above the floor: spreads as mean of burnable neighbours
    out = spread(arr, _box(3, 3), iterations=1)
    assert out[3, 3] == pytest.approx(5e-9, rel=1e-5)
    assert NOISE_FLOOR == 1e-11
