"""`risk_pyramid` (phase 02, optional): the raster store's rps_2011 / rps_2047 as OCR publishes
them for its web map (docs/published.md §4.7): topozarr's multiscale Zarr v3 pyramid in EPSG:4326,
each level the 2 × 2 mean of the one before, unsharded, consolidated."""

import itertools

import dagster as dg
import dask.array
import numpy as np
import xarray as xr
import xproj  # noqa: F401  (registers the ``proj`` accessor topozarr reads the CRS from)
from pyproj import CRS
from topozarr.coarsen import create_pyramid

from ocr_assets.constants import PHASE02_GROUP, REGION_RASTER, RISK_PYRAMID
from ocr_assets.step import run_step, step_asset
from ocr_resources.compute import ComputeProfile, OcrCompute
from ocr_resources.storage import OcrStorage
from ocr_science.pyramid import (
    PYRAMID_TARGET_RESOLUTION_M,
    levels_for_shape,
    published_levels,
)

PYRAMID_VARIABLES = ("rps_2011", "rps_2047")
PYRAMID_CRS = "EPSG:4326"
# dask chunks of the source the levels are coarsened from (None: the store's own chunks): a
# multiple of 2^11 px per side keeps every 2 × 2 block of levels 0–11 inside one chunk, so no
# level is rechunked before it is coarsened (bench/pyramid.py measures both)
SOURCE_CHUNK_PX: int | None = 4096


def pyramid_source(store: xr.Dataset) -> xr.Dataset:
    """The two RPS variables with EPSG:4326 attached through xproj, as OCR passes them to
    topozarr (the store, as published, has no CRS variable), with no stored encoding carried
    over: the pyramid's chunks are topozarr's."""
    source = store[list(PYRAMID_VARIABLES)].drop_encoding()
    if SOURCE_CHUNK_PX is not None:
        source = source.chunk({"latitude": SOURCE_CHUNK_PX, "longitude": SOURCE_CHUNK_PX})
    return source.proj.assign_crs(spatial_ref=CRS.from_user_input(PYRAMID_CRS))


def write_pyramid(storage: OcrStorage, levels: int) -> dict:
    """topozarr's pyramid of the raster store, ``levels`` levels (fewer when the grid is too
    small to halve that often), every level in one dask computation on the scheduler the
    compute resource set (the step's cluster, or its threads); each variable's maximum over
    level 0 is computed in the same pass, for the check (nothing is read back)."""
    source = pyramid_source(storage.raster.open_raster_store())
    written = levels_for_shape(levels, tuple(source["rps_2011"].shape))
    pyramid = create_pyramid(
        source,
        levels=written,
        x_dim="longitude",
        y_dim="latitude",
        target_shard_bytes=None,  # unsharded, as OCR (its map's zarr reader)
    )
    # level 0 is the source in topozarr's chunks: its maxima from the source's (larger)
    # chunks share their reads with the writes, at no measurable cost (bench/pyramid.py)
    maxima = {name: dask.array.nanmax(source[name].data) for name in PYRAMID_VARIABLES}
    found = storage.raster.write_consolidated_tree(
        pyramid.dt, storage.layout.pyramid, pyramid.encoding, reductions=maxima
    )
    shapes = {k: list(pyramid.dt[k]["rps_2011"].shape) for k in pyramid.dt.children}
    return {
        "levels": written,
        "level_shapes": shapes,
        "chunks": {k: list(pyramid.encoding[f"/{k}"]["rps_2011"]["chunks"]) for k in shapes},
        # NaN-skipping: an all-NaN level 0 has no maximum (None)
        "level0_max": {k: _finite_or_none(v) for k, v in found.items()},
    }


def _finite_or_none(value: float) -> float | None:
    return float(value) if np.isfinite(value) else None


@step_asset(
    RISK_PYRAMID,
    PHASE02_GROUP,
    [dg.AssetDep(REGION_RASTER, partition_mapping=dg.AllPartitionMapping())],
    "Optional: OCR's multiscale pyramid of rps_2011 / rps_2047 (topozarr, EPSG:4326, Zarr v3, "
    "consolidated), levels 0 (the store's grid) to zoom_for_res(30 m) − 1.",
    {"zarr"},
    (__name__, "ocr_science.pyramid", "ocr_resources.storage.raster_store"),
    # the level writes are one dask graph, over two workers
    ComputeProfile("m8g.4xlarge", "m8g.4xlarge", workers=2),
)
def risk_pyramid(context: dg.AssetExecutionContext, storage: OcrStorage, compute: OcrCompute):
    levels = published_levels(PYRAMID_TARGET_RESOLUTION_M)
    step = run_step(context, storage, compute, write_pyramid, levels, graph=True)
    return step.materialize(
        [storage.layout.pyramid],
        path=dg.MetadataValue.path(storage.layout.pyramid),
        published_levels=levels,
        **step.result,
    )


@dg.asset_check(asset=risk_pyramid)
def pyramid_levels_coarsen(
    context: dg.AssetCheckExecutionContext, storage: OcrStorage
) -> dg.AssetCheckResult:
    """Levels 0…N−1 exist, each half the size of the one before (the stored metadata), and
    values stay in [0, 100]: level 0's maximum as the step computed it on its cluster from
    the chunks it wrote (CONUS level 0 is ~110 GB: not downloaded here to be read again),
    and the coarsest level's stored values, read back."""
    tree = storage.raster.open_datatree(storage.layout.pyramid)
    levels = sorted(int(k) for k in tree.children)
    shapes = [tree[str(k)]["rps_2011"].shape for k in levels]
    halving = all(
        fine[0] // 2 == coarse[0] and fine[1] // 2 == coarse[1]
        for fine, coarse in itertools.pairwise(shapes)
    )
    event = context.instance.get_latest_materialization_event(dg.AssetKey(RISK_PYRAMID))
    recorded = event.asset_materialization.metadata if event and event.asset_materialization else {}
    level0 = recorded.get("level0_max")
    maxima = dict(level0.value) if level0 is not None else {}
    coarsest = tree[str(levels[-1])] if levels else None
    stored = (
        {k: _finite_or_none(float(coarsest[k].max(skipna=True))) for k in PYRAMID_VARIABLES}
        if coarsest is not None
        else {}
    )
    in_range = all(v is None or 0 <= v <= 100 for v in (*maxima.values(), *stored.values()))
    ok = (
        levels == list(range(len(levels)))
        and halving
        and set(maxima) == set(PYRAMID_VARIABLES)
        and in_range
    )
    return dg.AssetCheckResult(
        passed=bool(ok),
        metadata={
            "levels": levels,
            "shapes": [list(s) for s in shapes],
            "level0_max": maxima or "not recorded by the materialization",
            "coarsest_level_max": stored,
        },
    )
