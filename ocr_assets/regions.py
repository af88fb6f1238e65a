"""Phase 01 — region processing: one op per region writes both region assets (DESIGN §2).

- `region_risk_raster` (region_id): inputs → the region's window in the CONUS raster store
- `region_buildings` (region_id): `region_risk_raster`, `buildings` →
  `geoparquet-regions/<region_id>.parquet`
"""

import time
from collections.abc import Iterator
from contextlib import contextmanager

import dagster as dg
import numpy as np

from ocr_assets.constants import CLUSTER_POOL, PHASE01_GROUP, REGION_BUILDINGS, REGION_RASTER, YEARS
from ocr_assets.inputs import (
    REGION_INPUTS,
    buildings,
    burn_probability,
    conditional_risk,
    wind_direction_distribution,
)
from ocr_assets.previews import NO_FINITE_VALUES, png_markdown, raster_preview
from ocr_assets.science.composite import NegativeWindWeights
from ocr_assets.science.fire_model import assemble_region_rasters, field_bp
from ocr_assets.science.sampling import out_of_range, region_buildings_table
from ocr_assets.science.timing import StageTimer
from ocr_resources.compute import OcrCompute, profile_tags
from ocr_resources.storage import InputDataError, OcrStorage

RETRY_DELAY_SECONDS = 5
# Peak memory of one BP field task per window pixel (bench/run.py measures it, interpreter
# included). The wind kept for the composite grows with the share of non-burnable pixels; a
# task asks for the case where every pixel is non-burnable.
BYTES_PER_WINDOW_PIXEL = 80


class RegionProcessingError(RuntimeError):
    """A region failed; the message names it so a failed run says which one."""


def region_field(spec: dict, region_id: str, year: int) -> tuple[np.ndarray, dict[str, float]]:
    """One BP field of one region: read its window, run the model; (bp, seconds per stage).
    Runs on a Dask worker, so it rebuilds the storage resource from plain values (Dagster
    resources do not pickle)."""
    storage = OcrStorage(**spec)
    timer = StageTimer()
    with timer.stage("read"):
        grid = storage.region_grid()
        inputs = storage.read_region_inputs(
            grid, grid.region(region_id), fields=(year,), reference=False
        )
    try:
        return field_bp(inputs, year, timer, storage.model_variant), timer.seconds
    except NegativeWindWeights as exc:  # found while the model reads the wind
        raise storage.negative_wind_error(region_id, exc) from None


def _value_ranges(rasters: dict[str, np.ndarray]) -> dict[str, list[float | None]]:
    ranges: dict[str, list[float | None]] = {}
    for name, arr in rasters.items():
        finite = arr[np.isfinite(arr)]
        ranges[name] = [float(finite.min()), float(finite.max())] if finite.size else [None, None]
    return ranges


def _no_values_note(rasters: dict[str, np.ndarray]) -> dict[str, str]:
    """A note for a region whose wind-adjusted values are all missing (e.g. all water)."""
    if any(np.isfinite(rasters[f"rps_{year}"]).any() for year in YEARS):
        return {}
    return {"note": NO_FINITE_VALUES}


@contextmanager
def _logged_stage(
    context: dg.AssetExecutionContext, timer: StageTimer, region_id: str, name: str
) -> Iterator[None]:
    """Time a stage and log it as soon as it ends, so a long region shows progress live."""
    with timer.stage(name):
        yield
    context.log.info(f"region {region_id}: {name} took {timer.seconds[name]:.2f} s")


def build_region_assets(
    partitions_def: dg.PartitionsDefinition, max_retries: int
) -> dg.AssetsDefinition:
    """The region multi-asset for one partition list and retry budget (from settings)."""

    @dg.multi_asset(
        name="region_risk",
        specs=[
            dg.AssetSpec(
                REGION_RASTER,
                deps=[burn_probability, conditional_risk, wind_direction_distribution],
                group_name=PHASE01_GROUP,
                kinds={"zarr", "dask"},
                description="Wind-adjusted burn probability and risk (8 float32 variables) for "
                "one region, written into the CONUS raster store.",
            ),
            dg.AssetSpec(
                REGION_BUILDINGS,
                deps=[REGION_RASTER, buildings],
                group_name=PHASE01_GROUP,
                kinds={"parquet", "geopandas"},
                description="The region's buildings (centroid inside, half-open) with the risk "
                "variables sampled at the nearest pixel, as GeoParquet 1.1.",
            ),
        ],
        partitions_def=partitions_def,
        op_tags=profile_tags("region_risk_raster"),
        pool=CLUSTER_POOL,
        retry_policy=dg.RetryPolicy(
            max_retries=max_retries, delay=RETRY_DELAY_SECONDS, backoff=dg.Backoff.LINEAR
        ),
    )
    def region_risk(context: dg.AssetExecutionContext, storage: OcrStorage, compute: OcrCompute):
        region_id = context.partition_key
        timer = StageTimer()
        start = time.perf_counter()
        try:
            storage.check_inputs(REGION_INPUTS)
            grid = storage.region_grid()
            region = grid.region(region_id)
            lat_w, lon_w = grid.window(region)
            window_pixels = (lat_w.stop - lat_w.start) * (lon_w.stop - lon_w.start)
            # both BP fields in parallel on the step's cluster, each reading its own window
            with compute.session(
                context, tasks=len(YEARS), bytes_per_task=window_pixels * BYTES_PER_WINDOW_PIXEL
            ) as session:
                with _logged_stage(context, timer, region_id, "fields"):
                    fields = session.map(
                        region_field, [storage.spec()] * len(YEARS), [region_id] * len(YEARS), YEARS
                    )
                compute_metadata = session.metadata()
            with _logged_stage(context, timer, region_id, "read_reference"):
                inputs = storage.read_region_inputs(grid, region, fields=(), reference=True)
            rasters = assemble_region_rasters(
                inputs, {y: f[0] for y, f in zip(YEARS, fields, strict=True)}
            )
            problems = out_of_range(
                {
                    k: float(np.nanmin(v)) if np.isfinite(v).any() else None
                    for k, v in rasters.items()
                },
                {
                    k: float(np.nanmax(v)) if np.isfinite(v).any() else None
                    for k, v in rasters.items()
                },
            )
            if problems:
                raise ValueError(f"values out of their documented range: {problems}")
            # read (and so check) the buildings before the first write: a bad buildings
            # input must not leave a new raster window beside an old buildings file
            with _logged_stage(context, timer, region_id, "read_buildings"):
                region_buildings = storage.read_buildings(region)
            with _logged_stage(context, timer, region_id, "write_raster"):
                storage.ensure_raster_store(grid, storage.crs_wkt_4326())
                storage.write_region_window(region, rasters)
            with _logged_stage(context, timer, region_id, "sample_buildings"):
                table, dropped = region_buildings_table(grid, region, rasters, region_buildings)
            with _logged_stage(context, timer, region_id, "write_buildings"):
                path = storage.layout.region_buildings(region_id)
                size = storage.write_geoparquet(table, path)
            with _logged_stage(context, timer, region_id, "preview"):
                preview = raster_preview(
                    rasters["rps_2011"],
                    f"{region_id} rps_2011",
                    latitude=(region.lat0 + region.lat1) / 2,
                )
        except InputDataError as exc:
            # a broken input stays broken: fail now instead of retrying with backoff
            raise dg.Failure(
                description=f"region {region_id} failed: {exc}", allow_retries=False
            ) from exc
        except Exception as exc:
            raise RegionProcessingError(
                f"region {region_id} failed on attempt {context.retry_number + 1}: {exc}"
            ) from exc
        seconds = timer.rounded()
        per_field = {
            str(y): {k: round(v, 3) for k, v in f[1].items()}
            for y, f in zip(YEARS, fields, strict=True)
        }
        context.log.info(
            f"region {region_id}: {seconds}, per field {per_field} "
            f"(total {time.perf_counter() - start:.1f} s on {compute_metadata['vm_type']})"
        )
        yield dg.MaterializeResult(
            asset_key=REGION_RASTER,
            metadata={
                "path": dg.MetadataValue.path(storage.layout.raster_store),
                "region_id": region_id,
                "pixels": int(np.prod(region.shape)),
                "window_pixels": window_pixels,
                "bounds": [region.lon0, region.lat0, region.lon1, region.lat1],
                "value_ranges": _value_ranges(rasters),
                # pixels with a finite wind-adjusted RPS; 0 says why the ranges are null
                "finite_pixels": int(np.isfinite(rasters["rps_2011"]).sum()),
                **_no_values_note(rasters),
                "preview": dg.MetadataValue.md(png_markdown(preview, f"{region_id} rps_2011")),
                "seconds_per_stage": seconds,
                "seconds_per_field_stage": per_field,
                **compute_metadata,
                "model_variant": storage.model_variant,
            },
        )
        yield dg.MaterializeResult(
            asset_key=REGION_BUILDINGS,
            metadata={
                "path": dg.MetadataValue.path(path),
                "buildings_written": len(table),
                "buildings_dropped_missing_values": dropped,
                "bytes": size,
                "model_variant": storage.model_variant,
                "seconds": round(
                    seconds["read_buildings"]
                    + seconds["sample_buildings"]
                    + seconds["write_buildings"],
                    3,
                ),
            },
        )

    return region_risk
