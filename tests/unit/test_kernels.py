"""Kernel geometry (docs/design.md §5 step 5)."""

import math

import numpy as np
import pytest

from ocr_science.kernels import (
    DIRECTIONS,
    direction_kernel,
    direction_kernels,
    haversine_m,
    pixel_size_m,
    sample_offsets,
)

ARC_SECOND = 1 / 3600


def _sizes(lat: float) -> tuple[float, float]:
    latitude = lat + np.arange(11) * ARC_SECOND
    longitude = -100 + np.arange(11) * ARC_SECOND
    return pixel_size_m(latitude, longitude)


@pytest.mark.parametrize("lat", [25.0, 32.0, 38.0, 44.0, 49.0])
def test_cell_count_in_published_range_and_sums_to_one(lat):
    for direction, kernel in direction_kernels(*_sizes(lat)).items():
        cells = int((kernel > 0).sum())
        assert 200 < cells < 500, (direction, lat, cells)
        assert kernel.dtype == np.float32
        assert kernel.shape == (81, 81)
        assert math.isclose(float(kernel.sum(dtype=np.float64)), 1.0, rel_tol=1e-5)


def test_kernel_outside_cell_range_is_refused():
    with pytest.raises(ValueError, match="expected more than 200"):
        direction_kernel("W", 60.0, 60.0)  # 60 m pixels: far too few cells


def _extent_m(kernel, dx, dy):
    """Easternmost / westernmost / northernmost / southernmost cell centre offsets (m)."""
    offsets = sample_offsets()
    rows, cols = np.nonzero(kernel)
    x, y = offsets[cols] * dx, offsets[rows] * dy
    return x.min(), x.max(), y.min(), y.max()


def test_ellipse_geometry_is_mirror_symmetric():
    """On a grid symmetric about the pixel, W mirrors E and N mirrors S exactly."""
    from ocr_science.kernels import ELLIPSES

    y, x = np.meshgrid(np.linspace(-900, 900, 181), np.linspace(-900, 900, 181), indexing="ij")
    assert np.array_equal(ELLIPSES["W"].contains(-x, y), ELLIPSES["E"].contains(x, y))
    assert np.array_equal(ELLIPSES["N"].contains(x, -y), ELLIPSES["S"].contains(x, y))
    assert np.array_equal(ELLIPSES["NE"].contains(-x, -y), ELLIPSES["SW"].contains(x, y))
    assert np.array_equal(ELLIPSES["NW"].contains(-x, -y), ELLIPSES["SE"].contains(x, y))
    # and each ellipse is symmetric about its own wind axis
    assert np.array_equal(ELLIPSES["W"].contains(x, -y), ELLIPSES["W"].contains(x, y))
    assert np.array_equal(ELLIPSES["NE"].contains(y, x), ELLIPSES["NE"].contains(x, y))


def test_kernels_mirror_up_to_the_half_pixel_sample_quirk():
    """The published sample grid is symmetric about -0.5 px, so flipped kernels overlap
    their opposites almost, but not exactly."""
    dx, dy = _sizes(38.0)
    k = direction_kernels(dx, dy)
    # o_i + o_(80-i) = -1: mirror images about -0.5 px, not 0
    assert np.allclose(sample_offsets() + sample_offsets()[::-1], -1.0)

    def overlap(a, b):
        a, b = a > 0, b > 0
        return (a & b).sum() / (a | b).sum()

    assert 0.85 < overlap(k["W"][:, ::-1], k["E"]) < 1.0
    assert 0.85 < overlap(k["N"][::-1, :], k["S"]) < 1.0
    assert abs(int((k["W"] > 0).sum()) - int((k["E"] > 0).sum())) <= 20


def test_west_ellipse_lies_west_and_reaches_510_m_upwind_290_m_downwind():
    dx, dy = _sizes(38.0)
    west, east, _, _ = _extent_m(direction_kernel("W", dx, dy), dx, dy)
    # sample grid spacing is 81/80 px; allow one sample step
    step = dx * 81 / 80
    assert west == pytest.approx(-510, abs=step)
    assert east == pytest.approx(290, abs=step)
    cols = np.nonzero(direction_kernel("W", dx, dy))[1]
    assert sample_offsets()[cols].mean() * dx < -50  # centre west of the pixel


def test_ordinal_kernels_point_along_the_diagonal():
    dx, dy = _sizes(38.0)
    offsets = sample_offsets()
    for direction, (sx, sy) in {"NE": (1, 1), "SW": (-1, -1), "NW": (-1, 1), "SE": (1, -1)}.items():
        rows, cols = np.nonzero(direction_kernel(direction, dx, dy))
        assert np.sign(offsets[cols].mean()) == sx and np.sign(offsets[rows].mean()) == sy


def test_sample_grid_quirk_half_pixel_offset_and_81_80_spacing():
    """The anchor cell samples -0.5 px, so the ellipse lands half a pixel north-east."""
    offsets = sample_offsets()
    assert offsets[0] == -41 and offsets[-1] == 40 and offsets[40] == pytest.approx(-0.5)
    assert np.allclose(np.diff(offsets), 81 / 80)


def test_pixel_size_is_taken_at_the_window_centre_pixel():
    latitude = 30 + np.arange(101) * ARC_SECOND * 10  # non-trivial span so edges differ
    longitude = -100 + np.arange(51) * ARC_SECOND
    dx, dy = pixel_size_m(latitude, longitude)
    lat_c = latitude[50]
    assert dx == pytest.approx(haversine_m(lat_c, longitude[25], lat_c, longitude[26]))
    assert dy == pytest.approx(haversine_m(lat_c, longitude[25], latitude[51], longitude[25]))
    # by hand: one arc-second of longitude at lat_c on a 6 371 km sphere
    expected = (
        2
        * 6_371_000
        * math.asin(math.cos(math.radians(lat_c)) * math.sin(math.radians(ARC_SECOND) / 2))
    )
    assert dx == pytest.approx(expected, rel=1e-9)
    # changing the first row (not the centre) does not change the size
    shifted = latitude.copy()
    shifted[0] -= 1
    assert pixel_size_m(shifted, longitude) == (dx, dy)


def test_unknown_direction_is_refused():
    with pytest.raises(ValueError, match="not one of"):
        direction_kernel("NNE", 24.0, 30.0)
    assert DIRECTIONS == ("N", "NE", "E", "SE", "S", "SW", "W", "NW")
