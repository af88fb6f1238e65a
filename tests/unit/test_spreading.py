"""Normalised convolution (docs/design.md §5 step 6)."""

import numpy as np
import pytest
from scipy.ndimage import correlate as scipy_correlate

from ocr_science.kernels import DIRECTIONS, direction_kernel
from ocr_science.reference import reference_spread
from ocr_science.spreading import NOISE_FLOOR, RunKernel, spread


def _box(h, w, size=3):
    k = np.zeros((h, w), np.float32)
    c0, c1 = h // 2 - size // 2, w // 2 - size // 2
    k[c0 : c0 + size, c1 : c1 + size] = 1
    return k / k.sum()


def _reflect_reference(bp30, kernel):
    """One round with SciPy's 'reflect' border (repeats the edge pixel): the wrong border."""
    arr = bp30.astype(np.float64)
    k = kernel.astype(np.float64)
    m = scipy_correlate((arr > 0).astype(np.float64), k, mode="reflect")
    c = scipy_correlate(arr, k, mode="reflect")
    return np.divide(c, m, out=np.zeros_like(c), where=m > 0)


def test_one_round_hand_computed_at_a_corner():
    """Reflect-101 at a corner: rows (1, 0, 1) and cols (1, 0, 1) of a 3 × 3 mean."""
    arr = np.arange(1, 17, dtype=np.float32).reshape(4, 4)
    out = spread(arr, _box(3, 3), iterations=1)
    assert out[1, 1] == pytest.approx(np.mean(arr[0:3, 0:3]))
    assert out[0, 0] == pytest.approx(np.mean(arr[np.ix_([1, 0, 1], [1, 0, 1])]))


@pytest.mark.parametrize("direction", DIRECTIONS)
def test_spread_equals_float64_scipy_reference(direction):
    """The issue's equivalence test on a mid-size array (3 row blocks, ragged last one):
    within 1e-4 relative wherever the reference is > 1e-9, zero where it is zero, NaN kept."""
    rng = np.random.default_rng(7)
    bp = (rng.random((600, 530)) * 0.05).astype(np.float32)
    bp[rng.random(bp.shape) < 0.3] = 0
    bp[200:260, 0:40] = 0  # a non-burnable blob on the border
    bp[40:60, 300:330] = np.nan
    kernel = direction_kernel(direction, 24.4, 30.9)
    ours = spread(bp, kernel)
    reference = reference_spread(bp, kernel)
    assert np.array_equal(np.isnan(ours), np.isnan(reference))
    big = reference > 1e-9
    assert np.max(np.abs(ours[big] - reference[big]) / reference[big]) < 1e-4
    assert (ours[reference == 0] == 0).all()
    # pins reflect-101: SciPy's 'reflect' (edge repeated) differs near the border
    assert not np.allclose(
        spread(bp[:100, :100], kernel, 1), _reflect_reference(bp[:100, :100], kernel), rtol=1e-5
    )


def test_runs_go_along_the_axis_with_fewer_of_them():
    """E/W ellipses are wide (runs along rows), N/S tall (runs down columns)."""
    kernels = {d: direction_kernel(d, 24.4, 30.9) for d in ("E", "N")}
    east, north = (RunKernel.from_kernel(kernels[d]) for d in ("E", "N"))
    assert east.along_x and not north.along_x
    rows_of_east = np.count_nonzero(kernels["E"].any(axis=1))
    cols_of_north = np.count_nonzero(kernels["N"].any(axis=0))
    assert east.runs == rows_of_east and north.runs == cols_of_north


def test_kernels_that_are_not_binary_ellipses_are_rejected():
    k = _box(5, 5)
    k[2, 2] *= 2
    with pytest.raises(ValueError, match="one non-zero value"):
        RunKernel.from_kernel(k)
    gap = np.zeros((3, 5), np.float32)
    gap[1, [0, 2]] = 0.5
    with pytest.raises(ValueError, match="contiguous"):
        RunKernel.from_kernel(gap)


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
