"""The per-region fire model (docs/design.md §5), composed from the pure steps beside it."""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass, field

import numpy as np
import xarray as xr

from ocr_science.blur import blur_kernel_size, blur_sigma, gaussian_blur
from ocr_science.composite import WindComposite, WindTile, WindWeights, combine
from ocr_science.kernels import DIRECTIONS, direction_kernels, pixel_size_m
from ocr_science.parallel import release_freed_memory
from ocr_science.reproject import Bounds, subset_projected
from ocr_science.spreading import Spreader
from ocr_science.timing import StageTimer
from ocr_science.variants import DEFAULT_VARIANT, Blur, model_variant

YEARS: tuple[int, ...] = (2011, 2047)
# The wind distribution as tiles of (rows, cols, wind_direction) at their place in the window,
# each row's from left to right, made fresh by each call: the storage resource reads them from
# the stored layout (docs/design.md §3), one stored chunk's part at a time.
WindTiles = Callable[[], Iterable[WindTile]]


@dataclass
class RegionInputs:
    """Everything one region needs, already cut to its window (halo included).

    ``bp_270m`` stays lazy (dask, chunked as stored) because the warp's tiling follows it.
    """

    latitude: np.ndarray  # window pixel centres
    longitude: np.ndarray
    rows: slice  # the region inside the window
    cols: slice
    bounds: Bounds  # the region's pixel edges ± halo, not cut at the grid's edge
    bp_270m: dict[int, xr.DataArray]
    wind: np.ndarray | WindTiles  # the window's: (8, H, W) in memory, or stored tiles
    crps: np.ndarray  # region
    rps_scott: np.ndarray  # region
    bp_riley: dict[int, np.ndarray] = field(default_factory=dict)  # region, 30 m reference


def wind_weights(wind: np.ndarray | WindTiles, where: np.ndarray) -> WindWeights:
    """The wind distribution on the pixels ``where`` says, from an in-memory ``(8, H, W)``
    array or from tiles in the stored layout: only the kept pixels' weights and one tile
    are ever in memory."""
    if isinstance(wind, np.ndarray):
        return WindWeights.from_stack(wind, where)
    weights = WindWeights.gather_tiles(wind(), where)
    release_freed_memory()  # the tiles' buffers, before the spreading allocates
    return weights


def wind_adjusted_bp(
    bp30: np.ndarray,
    wind: np.ndarray | WindTiles,
    latitude: np.ndarray,
    longitude: np.ndarray,
    timer: StageTimer | None = None,
    kernels: dict[str, np.ndarray] | None = None,
    blur: Blur = gaussian_blur,
) -> np.ndarray:
    """Steps 5–9 on a window: kernels (sized at the window's centre unless given), spreading
    and composite one direction at a time, combine, ``blur``."""
    timer = timer or StageTimer()
    kernels = kernels or direction_kernels(*pixel_size_m(latitude, longitude))
    ksize = blur_kernel_size(float(latitude[1] - latitude[0]))
    with timer.stage("read_wind"):
        # the composite only matters where combine() takes it: the non-burnable pixels
        wind_bp = WindComposite(wind_weights(wind, where=bp30 == 0))
    with Spreader(bp30) as spreader:
        with timer.stage("spread"):
            for index, direction in enumerate(DIRECTIONS):
                wind_bp.add(index, spreader.spread(kernels[direction]))
        # the spreader's buffers are free now: reuse them rather than fault in new pages
        spare, combined = spreader.buffers
        with timer.stage("composite"):
            combined = combine(bp30, wind_bp.result(out=spare), out=combined)
        with timer.stage("blur"):
            return blur(combined, ksize, blur_sigma(ksize), work=spare)


def field_bp(
    inputs: RegionInputs,
    year: int,
    timer: StageTimer | None = None,
    variant: str = DEFAULT_VARIANT,
) -> np.ndarray:
    """Steps 2–10 for one burn-probability field: the region's wind-adjusted BP, with the
    numerics of the named model ``variant``."""
    timer = timer or StageTimer()
    model = model_variant(variant)
    with timer.stage("reproject"):
        subset = subset_projected(inputs.bp_270m[year], inputs.bounds, model.subset_margin)
        bp30 = model.warp(subset, inputs.latitude, inputs.longitude)
    at = (inputs.rows, inputs.cols) if model.kernels_at_region_centre else (slice(None),) * 2
    size = pixel_size_m(inputs.latitude[at[0]], inputs.longitude[at[1]])
    kernels = direction_kernels(*size, centred=model.centred_kernels)
    bp = wind_adjusted_bp(
        bp30, inputs.wind, inputs.latitude, inputs.longitude, timer, kernels, model.blur
    )
    return bp[inputs.rows, inputs.cols]


def assemble_region_rasters(
    inputs: RegionInputs, bp: dict[int, np.ndarray]
) -> dict[str, np.ndarray]:
    """The eight raster variables of one region from its BP fields and reference inputs."""
    out: dict[str, np.ndarray] = {}
    for year in YEARS:
        out[f"bp_{year}"] = bp[year].astype(np.float32)
        out[f"rps_{year}"] = (bp[year] * inputs.crps).astype(np.float32)
    out["crps_scott"] = inputs.crps.astype(np.float32)
    out["rps_scott"] = inputs.rps_scott.astype(np.float32)
    for year in YEARS:
        out[f"bp_{year}_riley"] = inputs.bp_riley[year].astype(np.float32)
    return out


def compute_region_rasters(
    inputs: RegionInputs, timer: StageTimer | None = None, variant: str = DEFAULT_VARIANT
) -> dict[str, np.ndarray]:
    """The eight raster variables of one region (float32, NaN = missing), in process."""
    fields = {year: field_bp(inputs, year, timer, variant) for year in YEARS}
    return assemble_region_rasters(inputs, fields)
