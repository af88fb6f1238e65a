"""Elliptical wind kernels (docs/design.md §5 step 5).

A kernel gathers burn probability from the side the wind blows *from*: the W kernel's ellipse
sits west of the pixel, so fire upwind (west) of a pixel spreads onto it under a west wind.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

DIRECTIONS: tuple[str, ...] = ("N", "NE", "E", "SE", "S", "SW", "W", "NW")

EARTH_RADIUS_M = 6_371_000.0
KERNEL_SIZE = 81
# Ellipse centre offset from the pixel (m) and semi-axes along / across the wind (m):
# upwind reach 110 + 400 = 510 m, downwind 400 - 110 = 290 m.
CENTRE_OFFSET_M = 110.0
ALONG_WIND_M = 400.0
ACROSS_WIND_M = 200.0
# A kernel outside this cell count means the pixel size is wrong for the grid (published check).
MIN_CELLS, MAX_CELLS = 200, 500


@dataclass(frozen=True)
class Ellipse:
    """One direction's ellipse: centre (m, east/north positive), semi-axes, orientation."""

    cx: float
    cy: float
    a: float
    b: float
    diagonal: bool

    def contains(self, x: np.ndarray, y: np.ndarray) -> np.ndarray:
        dx, dy = x - self.cx, y - self.cy
        if self.diagonal:
            return (dx + dy) ** 2 / (2 * self.a**2) + (dy - dx) ** 2 / (2 * self.b**2) <= 1
        return (dx / self.a) ** 2 + (dy / self.b) ** 2 <= 1


_D = CENTRE_OFFSET_M / math.sqrt(2)
_C, _L, _S = CENTRE_OFFSET_M, ALONG_WIND_M, ACROSS_WIND_M
# One row per direction, exactly the table of docs/design.md §5.
ELLIPSES: dict[str, Ellipse] = {
    "N": Ellipse(0.0, _C, _S, _L, diagonal=False),
    "NE": Ellipse(_D, _D, _L, _S, diagonal=True),
    "E": Ellipse(_C, 0.0, _L, _S, diagonal=False),
    "SE": Ellipse(_D, -_D, _S, _L, diagonal=True),
    "S": Ellipse(0.0, -_C, _S, _L, diagonal=False),
    "SW": Ellipse(-_D, -_D, _L, _S, diagonal=True),
    "W": Ellipse(-_C, 0.0, _L, _S, diagonal=False),
    "NW": Ellipse(-_D, _D, _S, _L, diagonal=True),
}


def haversine_m(lat1: float, lon1: float, lat2: float, lon2: float) -> float:
    """Great-circle distance in metres on a sphere of radius 6 371 000 m."""
    p1, p2 = math.radians(lat1), math.radians(lat2)
    dp, dl = p2 - p1, math.radians(lon2 - lon1)
    h = math.sin(dp / 2) ** 2 + math.cos(p1) * math.cos(p2) * math.sin(dl / 2) ** 2
    return 2 * EARTH_RADIUS_M * math.asin(math.sqrt(h))


def pixel_size_m(latitude: np.ndarray, longitude: np.ndarray) -> tuple[float, float]:
    """(dx, dy) in metres of one grid step at the window's centre pixel (index n // 2).

    Published numerics size the kernels once per window, so two neighbouring regions can
    differ by a hair along their shared border.
    """
    if latitude.size < 2 or longitude.size < 2:
        raise ValueError("window needs at least 2 pixels on each axis to size its kernels")
    i, j = latitude.size // 2, longitude.size // 2
    # step towards the next pixel; at the last index use the previous one
    i2 = i + 1 if i + 1 < latitude.size else i - 1
    j2 = j + 1 if j + 1 < longitude.size else j - 1
    lat, lon = float(latitude[i]), float(longitude[j])
    dx = haversine_m(lat, lon, lat, float(longitude[j2]))
    dy = haversine_m(lat, lon, float(latitude[i2]), lon)
    return dx, dy


def sample_offsets(centred: bool = False) -> np.ndarray:
    """Kernel sample offsets in pixels: ``linspace(-41, 40, 81)`` as published (spacing 81/80,
    which puts the ellipse half a pixel north-east of nominal and stretches it by 1.25 %), or
    ``-40 … 40`` centred on the kernel's anchor cell (the corrected model)."""
    half = KERNEL_SIZE // 2
    if centred:
        return np.arange(-half, half + 1, dtype=np.float64)
    return np.linspace(-half - 1, half, KERNEL_SIZE)


def direction_kernel(direction: str, dx_m: float, dy_m: float, centred: bool = False) -> np.ndarray:
    """81 × 81 float32 kernel for one wind direction; rows go north, columns go east."""
    if direction not in ELLIPSES:
        raise ValueError(f"wind direction {direction!r} is not one of {DIRECTIONS}")
    offsets = sample_offsets(centred)
    y, x = np.meshgrid(offsets * dy_m, offsets * dx_m, indexing="ij")
    mask = ELLIPSES[direction].contains(x, y).astype(np.float32)
    cells = int(mask.sum())
    if not MIN_CELLS < cells < MAX_CELLS:
        raise ValueError(
            f"{direction} kernel has {cells} cells for pixel size {dx_m:.2f} × {dy_m:.2f} m; "
            f"expected more than {MIN_CELLS} and fewer than {MAX_CELLS}"
        )
    return mask / mask.sum(dtype=np.float32)


def direction_kernels(dx_m: float, dy_m: float, centred: bool = False) -> dict[str, np.ndarray]:
    """All eight kernels for one window."""
    return {d: direction_kernel(d, dx_m, dy_m, centred) for d in DIRECTIONS}
