"""Composite, combine, blur and gap-fill (docs/design.md §5 steps 3, 7–9)."""

import numpy as np
import pytest

from ocr_science.blur import blur_kernel_size, blur_sigma, gaussian_blur, gaussian_weights
from ocr_science.composite import (
    NegativeWindWeights,
    WindComposite,
    WindWeights,
    combine,
    composite,
)
from ocr_science.gapfill import gap_fill


def test_composite_equals_explicit_weighted_sum():
    rng = np.random.default_rng(3)
    spread = rng.random((8, 4, 5)).astype(np.float32)
    dist = rng.random((8, 4, 5)).astype(np.float32)
    out = composite(spread, dist)
    for i in range(4):
        for j in range(5):
            w = dist[:, i, j].astype(np.float64)
            expected = sum(spread[d, i, j] * w[d] / w.sum() for d in range(8))
            assert out[i, j] == pytest.approx(expected, rel=1e-6)


def test_composite_invalid_pixels_and_negative_weights():
    spread = np.ones((8, 1, 3), np.float32)
    dist = np.ones((8, 1, 3), np.float32)
    dist[:, 0, 0] = 0  # no fire-weather hours
    dist[3, 0, 1] = np.nan  # missing
    out = composite(spread, dist)
    assert np.isnan(out[0, 0]) and np.isnan(out[0, 1]) and out[0, 2] == pytest.approx(1.0)
    dist[2, 0, 2] = -0.1
    with pytest.raises(ValueError, match="negative weight"):
        composite(spread, dist)
    with pytest.raises(ValueError, match=r"shape \(8, H, W\)"):
        WindWeights.from_stack(np.ones((7, 2, 2)))


def test_wind_gathered_in_blocks_keeps_only_the_chosen_pixels():
    """Weights gathered row block by row block (the stored layout, directions last) on the
    pixels ``where`` picks equal the full distribution there, normalised; the composite on
    them equals the explicit sum on those pixels and is NaN elsewhere."""
    rng = np.random.default_rng(4)
    dist = rng.random((8, 7, 5)).astype(np.float32)
    spread = rng.random((8, 7, 5)).astype(np.float32)
    where = rng.random((7, 5)) < 0.4
    stored = np.moveaxis(dist, 0, -1)  # (H, W, 8)
    blocks = [stored[0:3], stored[3:4], stored[4:7]]  # uneven, as chunk rows can be
    wind = WindWeights.gather(blocks, where)
    assert wind.shape == (7, 5) and wind.weights.shape == (8, where.sum())
    np.testing.assert_array_equal(wind.pixels, np.flatnonzero(where))
    kept = dist[:, where].astype(np.float64)
    np.testing.assert_allclose(wind.weights, kept / kept.sum(axis=0), rtol=1e-7)
    acc = WindComposite(wind)
    for d in range(8):
        acc.add(d, spread[d])
    out = acc.result()
    expected = (spread * dist).sum(axis=0) / dist.sum(axis=0)
    np.testing.assert_allclose(out[where], expected[where], rtol=1e-6)
    assert np.isnan(out[~where]).all()


def test_wind_blocks_must_tile_the_field_and_be_non_negative():
    where = np.ones((4, 3), bool)
    stored = np.full((4, 3, 8), 0.125, np.float32)
    with pytest.raises(ValueError, match=r"cover 3 of the field's 4 rows"):
        WindWeights.gather([stored[:3]], where)
    with pytest.raises(
        ValueError, match=r"tile a \(4, 3\) field as \(rows, 3, 8\); got \(3, 3, 8\) at row 3"
    ):
        WindWeights.gather([stored[:3], stored[:3]], where)
    with pytest.raises(ValueError, match=r"got \(4, 2, 8\) at row 0"):
        WindWeights.gather([stored[:, :2]], where)
    stored[1, 1, 2] = stored[3, 0, 7] = -0.1  # counted everywhere, also outside ``where``
    with pytest.raises(NegativeWindWeights) as raised:
        WindWeights.gather([stored[:2], stored[2:]], where & False)
    assert raised.value.count == 2


def test_composite_skips_nan_terms():
    spread = np.full((8, 1, 1), 0.4, np.float32)
    spread[2] = np.nan
    dist = np.full((8, 1, 1), 1 / 8, np.float32)
    # NaN term skipped, remaining weights NOT renormalised: 7/8 × 0.4
    assert composite(spread, dist)[0, 0] == pytest.approx(0.35)


def test_combine_keeps_burnable_and_nan():
    bp30 = np.array([[0.0, 0.3, np.nan]], np.float32)
    wind = np.array([[0.1, 0.9, 0.5]], np.float32)
    out = combine(bp30, wind)
    assert (
        out[0, 0] == pytest.approx(0.1) and out[0, 1] == pytest.approx(0.3) and np.isnan(out[0, 2])
    )


def test_blur_size_and_sigma_at_one_arc_second():
    k = blur_kernel_size(1 / 3600)
    assert k == 19
    assert blur_sigma(k) == pytest.approx(3.2)
    assert blur_kernel_size(0.01) == 3  # coarse pixels: at least 3
    g = gaussian_weights(19, 3.2)
    assert g.sum() == pytest.approx(1.0) and np.allclose(g, g[::-1])


def test_blur_matches_explicit_2d_gaussian_with_reflect101():
    rng = np.random.default_rng(4)
    arr = rng.random((30, 25)).astype(np.float32)
    g = gaussian_weights(19, 3.2).astype(np.float64)
    out = gaussian_blur(arr, 19, 3.2)
    padded = np.pad(arr.astype(np.float64), 9, mode="reflect")  # numpy reflect = reflect-101
    k2 = np.outer(g, g)
    for i, j in [(0, 0), (5, 7), (29, 24), (15, 12)]:
        assert out[i, j] == pytest.approx((padded[i : i + 19, j : j + 19] * k2).sum(), rel=1e-5)


def test_nan_spreads_through_the_blur_window():
    arr = np.ones((41, 41), np.float32)
    arr[20, 20] = np.nan
    out = gaussian_blur(arr, 19, 3.2)
    assert np.isnan(out[20 - 9 : 20 + 10, 20 - 9 : 20 + 10]).all()
    assert np.isfinite(out[:10]).all() and np.isfinite(out[:, 30:]).all()


def test_gap_fill_fills_zero_and_nan_holes_with_finite_3x3_mean():
    bp = np.full((5, 5), 0.2, np.float32)
    bp[1, 1] = 0.0  # surrounded zero
    bp[3, 3] = np.nan  # surrounded NaN
    bp[1, 3] = 0.5
    bp[0, 4] = np.nan  # on the edge: never surrounded
    out = gap_fill(bp)
    # (1, 1): 3×3 = eight 0.2 and itself 0 → zeros count
    assert out[1, 1] == pytest.approx((8 * 0.2 + 0.0) / 9)
    # (3, 3): NaN skipped → mean of eight 0.2
    assert out[3, 3] == pytest.approx(0.2)
    assert np.isnan(out[0, 4])
    assert out[1, 3] == pytest.approx(0.5)


def test_gap_fill_needs_all_four_rook_neighbours_valid():
    bp = np.full((5, 5), 0.2, np.float32)
    bp[2, 2] = 0
    bp[2, 3] = np.nan  # a rook neighbour is not valid
    out = gap_fill(bp)
    assert out[2, 2] == 0 and np.isnan(out[2, 3])
