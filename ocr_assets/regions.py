"""Phase 01 — region processing: one op writes both region assets (docs/design.md §2) for every
region of its run.

- `region_risk_raster` (region_id): inputs → the region's window in the CONUS raster store
- `region_buildings` (region_id): `region_risk_raster`, `buildings` →
  `geoparquet-regions/<region_id>.parquet`

A run holds up to ``regions_per_run`` regions (the asset's ``BackfillPolicy``, so a UI backfill
and ``ocr deploy`` make the same runs): their regions share one cluster, each region is retried
on its own (5 s × attempt) and one that still fails never takes its siblings' results with it.
"""

import time
from dataclasses import dataclass
from typing import Any

import dagster as dg
import numpy as np
import shapely

from ocr_assets.constants import CLUSTER_POOL, PHASE01_GROUP, REGION_BUILDINGS, REGION_RASTER, YEARS
from ocr_assets.inputs import (
    REGION_INPUTS,
    buildings,
    burn_probability,
    conditional_risk,
    wind_direction_distribution,
)
from ocr_assets.previews import NO_FINITE_VALUES, png_markdown, raster_preview
from ocr_resources.compute import ComputeProfile, ComputeSession, OcrCompute
from ocr_resources.storage import InputDataError, OcrStorage
from ocr_resources.storage.inputs import ROWS_WITHOUT_GEOMETRY, without_input_traceback
from ocr_science.composite import NegativeWindWeights
from ocr_science.fire_model import assemble_region_rasters, field_bp
from ocr_science.model_version import model_code_version
from ocr_science.sampling import (
    merge_building_rows,
    out_of_range,
    region_buildings_table,
)
from ocr_science.timing import StageTimer

RETRY_DELAY_SECONDS = 5
# Peak memory of one BP field task per window pixel (bench/run.py measures it, interpreter
# included). The wind kept for the composite grows with the share of non-burnable pixels; a
# task asks for the case where every pixel is non-burnable.
BYTES_PER_WINDOW_PIXEL = 80
# The CONUS cost model's (bench/conus.py): a region run's 40 regions (OCR_REGIONS_PER_RUN) in
# two rounds on four workers, five regions at a time on each (a region's 3–4 GiB peak ×5 stays
# under 75 % of an m8g.2xlarge's 32 GiB; its ~68 CPU-s in ~54 s keep the 8 vCPUs busy).
REGION_PROFILE = ComputeProfile("m8g.2xlarge", workers=4, tasks_per_worker=5)


@without_input_traceback
def region_field(spec: dict, region_id: str, year: int) -> tuple[np.ndarray, dict[str, float]]:
    """One BP field of one region: read its window, run the model; (bp, seconds per stage).
    Runs on a Dask worker, so it rebuilds the storage resource from plain values (Dagster
    resources do not pickle)."""
    storage = OcrStorage(**spec)
    timer = StageTimer()
    with timer.stage("read"):
        grid = storage.regions.region_grid()
        inputs = storage.regions.read_region_inputs(
            grid, grid.region(region_id), fields=(year,), reference=False
        )
    try:
        return field_bp(inputs, year, timer, storage.model_variant), timer.seconds
    except NegativeWindWeights as exc:  # found while the model reads the wind
        raise storage.regions.negative_wind_error(region_id, exc) from None


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


@dataclass(frozen=True)
class RegionResult:
    """What one region's work reports: plain values, so it travels back from a worker."""

    raster: dict[str, Any]
    buildings: dict[str, Any]
    seconds: dict[str, float]


@without_input_traceback
def finish_region(spec: dict, region_id: str, *fields: tuple[np.ndarray, dict]) -> RegionResult:
    """The rest of a region once its BP fields exist: reference inputs, assembly and range
    check, the buildings read (and so checked) before the first write — a bad buildings input
    must not leave a new raster window beside an old buildings file — then the raster window,
    the buildings sample and GeoParquet, and the preview. Runs on a Dask worker."""
    storage = OcrStorage(**spec)
    timer = StageTimer()
    grid = storage.regions.region_grid()
    region = grid.region(region_id)
    lat_w, lon_w = grid.window(region)
    with timer.stage("read_reference"):
        storage.regions.require_region_chunks(region)  # a lost chunk would read as "no data here"
        inputs = storage.regions.read_region_inputs(grid, region, fields=(), reference=True)
    rasters = assemble_region_rasters(inputs, {y: f[0] for y, f in zip(YEARS, fields, strict=True)})
    ranges = _value_ranges(rasters)
    problems = out_of_range(
        {k: v[0] for k, v in ranges.items()}, {k: v[1] for k, v in ranges.items()}
    )
    if problems:
        raise ValueError(f"values out of their documented range: {problems}")
    with timer.stage("read_buildings"):
        tagged = storage.regions.read_buildings(region)
        # one row per (building, block) as published: each building once
        kept = merge_building_rows(shapely.to_wkb(tagged.geometry.values), tagged["GEOID"])
        region_buildings = tagged.iloc[kept]
    with timer.stage("write_raster"):
        snapshot_id = storage.raster.write_region_window(region, rasters)
    with timer.stage("sample_buildings"):
        table, dropped = region_buildings_table(grid, region, rasters, region_buildings)
    with timer.stage("write_buildings"):
        path = storage.layout.region_buildings(region_id)
        size = storage.vector.write_geoparquet(table, path)
    with timer.stage("preview"):
        preview = raster_preview(
            rasters["rps_2011"], f"{region_id} rps_2011", latitude=(region.lat0 + region.lat1) / 2
        )
    seconds = timer.rounded()
    # the fields ran side by side: their stage is as long as the longer one
    seconds = {"fields": round(max(sum(f[1].values()) for f in fields), 3), **seconds}
    raster = {
        "path": dg.MetadataValue.path(storage.layout.raster_store),
        "region_id": region_id,
        # the Icechunk snapshot of the region's commit: what a reader opens to see exactly
        # this write (a run's regions share one MaterializeResult, so it cannot be each
        # partition's Dagster data version)
        "snapshot_id": snapshot_id,
        "pixels": int(np.prod(region.shape)),
        "window_pixels": (lat_w.stop - lat_w.start) * (lon_w.stop - lon_w.start),
        "bounds": [region.lon0, region.lat0, region.lon1, region.lat1],
        "value_ranges": ranges,
        # pixels with a finite wind-adjusted RPS; 0 says why the ranges are null
        "finite_pixels": int(np.isfinite(rasters["rps_2011"]).sum()),
        **_no_values_note(rasters),
        "preview": dg.MetadataValue.md(png_markdown(preview, f"{region_id} rps_2011")),
        "seconds_per_stage": seconds,
        "seconds_per_field_stage": {
            str(y): {k: round(v, 3) for k, v in f[1].items()}
            for y, f in zip(YEARS, fields, strict=True)
        },
        "model_variant": storage.model_variant,
    }
    buildings_meta = {
        "path": dg.MetadataValue.path(path),
        "buildings_written": len(table),
        # rows of the input (one per building and block it intersects) merged into their
        # building's first row by the smallest block GEOID (docs/inputs.md)
        "building_rows_merged": len(tagged) - len(kept),
        "buildings_dropped_missing_values": dropped,
        # rows of the buildings input read for this region that have no geometry (null or
        # empty): in no region, so in no output (docs/inputs.md)
        "input_rows_without_geometry": tagged.attrs.get(ROWS_WITHOUT_GEOMETRY, 0),
        "bytes": size,
        "model_variant": storage.model_variant,
        "seconds": round(
            seconds["read_buildings"] + seconds["sample_buildings"] + seconds["write_buildings"], 3
        ),
    }
    return RegionResult(raster, buildings_meta, seconds)


def run_regions(
    context: dg.AssetExecutionContext,
    session: ComputeSession,
    spec: dict,
    region_ids: list[str],
    max_retries: int,
) -> tuple[dict[str, RegionResult], dict[str, tuple[str, BaseException]]]:
    """Every region on the session's cluster at once (its two fields side by side, then the
    rest), each retried on its own after 5 s × attempt, up to ``max_retries`` times, while the
    others go on; a broken input is not retried. Returns (results, (message, error) of the last
    failure) by region."""

    def start(region_id: str) -> Any:
        fields = [session.start(region_field, spec, region_id, year) for year in YEARS]
        return session.start(finish_region, spec, region_id, *fields)

    running = {start(r): (r, 1) for r in region_ids}
    due: list[tuple[float, str, int]] = []  # (when, region, attempt) of the retries to come
    results: dict[str, RegionResult] = {}
    errors: dict[str, tuple[str, BaseException]] = {}
    while running or due:
        now = time.monotonic()
        for item in [d for d in due if d[0] <= now]:
            due.remove(item)
            running[start(item[1])] = item[1:]
        if not running:
            time.sleep(max(0.0, min(d[0] for d in due) - now))
            continue
        timeout = max(0.0, min(d[0] for d in due) - now) if due else None
        for future in session.first_done(list(running), timeout):
            region_id, attempt = running.pop(future)
            exc = future.exception()
            if exc is None:
                results[region_id] = result = future.result()
                context.log.info(f"region {region_id}: done in {result.seconds} s")
                if unlocated := result.buildings["input_rows_without_geometry"]:
                    context.log.warning(
                        f"region {region_id}: {unlocated} row(s) of the buildings input read "
                        "for it have no geometry (null or empty) and are in no output"
                    )
                continue
            message = f"region {region_id} failed on attempt {attempt}: {exc}"
            if attempt > max_retries or isinstance(exc, InputDataError):
                # a broken input stays broken: no retry
                errors[region_id] = (message, exc)
                context.log.error(message)
            else:
                delay = RETRY_DELAY_SECONDS * attempt
                context.log.warning(f"{message}; retrying in {delay} s")
                due.append((time.monotonic() + delay, region_id, attempt + 1))
    return results, errors


def build_region_assets(
    partitions_def: dg.PartitionsDefinition,
    max_retries: int,
    regions_per_run: int,
    model_variant: str,
) -> dg.AssetsDefinition:
    """The region multi-asset for one partition list, retry budget, run size and model variant
    (settings); its code version is the fire model's (a changed model makes every region
    stale)."""
    code_version = model_code_version(model_variant)

    @dg.multi_asset(
        name="region_risk",
        specs=[
            dg.AssetSpec(
                REGION_RASTER,
                deps=[burn_probability, conditional_risk, wind_direction_distribution],
                group_name=PHASE01_GROUP,
                kinds={"zarr", "dask"},
                code_version=code_version,
                description="Wind-adjusted burn probability and risk (8 float32 variables) for "
                "one region, written into the CONUS raster store.",
            ),
            dg.AssetSpec(
                REGION_BUILDINGS,
                deps=[REGION_RASTER, buildings],
                group_name=PHASE01_GROUP,
                kinds={"parquet", "geopandas"},
                code_version=code_version,
                description="The region's buildings (centroid inside, half-open) with the risk "
                "variables sampled at the nearest pixel, as GeoParquet 1.1.",
            ),
        ],
        partitions_def=partitions_def,
        # a backfill of N regions: ⌈N / regions_per_run⌉ runs (per contiguous stretch), one
        # cluster each
        backfill_policy=dg.BackfillPolicy.multi_run(regions_per_run),
        op_tags=REGION_PROFILE.tags(REGION_RASTER),
        pool=CLUSTER_POOL,
        # the regions retry on their own inside the step; this retries what is not a region's
        # (e.g. a cluster that would not start), with the same delays
        retry_policy=dg.RetryPolicy(
            max_retries=max_retries, delay=RETRY_DELAY_SECONDS, backoff=dg.Backoff.LINEAR
        ),
    )
    def region_risk(context: dg.AssetExecutionContext, storage: OcrStorage, compute: OcrCompute):
        region_ids = list(context.partition_keys)
        started = time.perf_counter()
        try:
            storage.inputs.check_inputs(REGION_INPUTS)
            grid = storage.regions.region_grid()
            windows = [grid.window(grid.region(r)) for r in region_ids]
            storage.raster.ensure_raster_store(grid)
        except InputDataError as exc:
            # a broken input stays broken: fail now instead of retrying with backoff
            raise dg.Failure(
                description=f"regions {', '.join(region_ids)} failed: {exc}", allow_retries=False
            ) from exc
        # what each region was computed from: the inputs' data versions for it (the same
        # fingerprints the inputs' observations report) and the model's code version, so a
        # deploy can tell which regions are stale without Dagster's internal resolver
        # (read before the work: an input rewritten meanwhile leaves the region stale)
        versions = {
            key: storage.fingerprints.region_input_versions(key, region_ids)
            for key in REGION_INPUTS
        }
        provenance = {
            r: {
                "model_code_version": code_version,
                "input_data_versions": {key: versions[key][r] for key in REGION_INPUTS},
            }
            for r in region_ids
        }
        largest = max((la.stop - la.start) * (lo.stop - lo.start) for la, lo in windows)
        with compute.session(
            context,
            tasks=len(YEARS) * len(region_ids),
            bytes_per_task=largest * BYTES_PER_WINDOW_PIXEL,
        ) as session:
            results, errors = run_regions(context, session, storage.spec(), region_ids, max_retries)
            compute_metadata = session.metadata()
        context.log.info(
            f"{len(results)} of {len(region_ids)} region(s) written in "
            f"{time.perf_counter() - started:.1f} s on {compute_metadata['vm_type']}"
        )
        metadata = {
            (key, region_id): {**values, **compute_metadata, **provenance[region_id]}
            for region_id, result in results.items()
            for key, values in (
                (REGION_RASTER, result.raster),
                (REGION_BUILDINGS, result.buildings),
            )
        }
        if errors:
            # the regions that worked are recorded as materialized, one event each, before the
            # step fails naming the others: a backfill marks only those failed
            for (key, region_id), values in metadata.items():
                context.log_event(
                    dg.AssetMaterialization(key, partition=region_id, metadata=values)
                )
            # each failed region had its own retries already: the step is not retried whole;
            # the first failed region's error is the failure's cause (e.g. an InputDataError)
            failed = [r for r in region_ids if r in errors]
            raise dg.Failure(
                description="; ".join(errors[r][0] for r in failed), allow_retries=False
            ) from errors[failed[0]][1]
        for (key, region_id), values in metadata.items():
            context.add_asset_metadata(values, asset_key=key, partition_key=region_id)
        yield dg.MaterializeResult(asset_key=REGION_RASTER)
        yield dg.MaterializeResult(asset_key=REGION_BUILDINGS)

    return region_risk
