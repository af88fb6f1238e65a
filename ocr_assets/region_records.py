"""What the instance records about the region partitions: the latest ``region_buildings``
materialization of each region in this environment, with its metadata.

The deploy reads it to tell materialized regions from remaining ones; the consolidation reads
it to know which region files must exist, and with how many rows.
"""

from typing import Any

import dagster as dg

from ocr_assets.constants import REGION_BUILDINGS, REGION_RASTER
from ocr_resources.storage import OcrStorage

PAGE = 10_000


def materialized_regions(instance: dg.DagsterInstance, storage: OcrStorage) -> dict[str, dict]:
    """Regions whose latest ``region_buildings`` materialization in ``instance`` wrote this
    storage's path (so another production version's or model variant's runs don't count),
    with that materialization's metadata values (its provenance and row count among them)."""
    latest: dict[str, dict[str, Any]] = {}
    cursor = None
    while True:
        page = instance.fetch_materializations(
            dg.AssetKey(REGION_BUILDINGS), limit=PAGE, cursor=cursor, ascending=False
        )
        for record in page.records:
            materialization = record.asset_materialization
            if materialization.partition and materialization.partition not in latest:
                latest[materialization.partition] = {
                    k: v.value for k, v in materialization.metadata.items()
                }
        if not page.has_more:
            break
        cursor = page.cursor
    return {
        region: meta
        for region, meta in latest.items()
        if str(meta.get("path")) == storage.layout.region_buildings(region)
    }


def committed_materialized_regions(
    instance: dg.DagsterInstance, storage: OcrStorage
) -> tuple[dict[str, dict], list[str]]:
    """The regions that are done: recorded by ``instance`` (:func:`materialized_regions`) AND
    committed on ``main`` of the raster store (a ``wrote region_id (<id>)`` commit in its
    ancestry, as the published pipeline counts a processed region). Returns (those regions
    with their metadata, the recorded regions whose commit is missing, e.g. after a branch
    reset or a lost repository: they are to be redone)."""
    recorded = materialized_regions(instance, storage)
    committed = storage.raster.committed_regions()
    done = {r: meta for r, meta in recorded.items() if r in committed}
    return done, sorted(r for r in recorded if r not in committed)


def newest_region_materialization(instance: dg.DagsterInstance) -> float | None:
    """When the newest region materialization (raster or buildings, any partition) was
    recorded; None when no region is."""
    stamps = [
        record.timestamp
        for key in (REGION_RASTER, REGION_BUILDINGS)
        for record in instance.fetch_materializations(dg.AssetKey(key), limit=1).records
    ]
    return max(stamps, default=None)


def outputs_older_than_regions(
    instance: dg.DagsterInstance, keys: list[str]
) -> dict[str, dg.EventLogRecord | None]:
    """The assets among ``keys`` (built from all regions) whose latest materialization is
    older than the newest region's, or that have none, with that latest record (None: never
    materialized). Dagster's own staleness cannot say it for a real region count: its resolver
    skips a dependency on 100 partitions or more (``SKIP_PARTITION_DATA_VERSION_DEPENDENCY_
    THRESHOLD``), so the deploy and the map server compare the records' times."""
    newest = newest_region_materialization(instance)
    if newest is None:
        return {}
    older: dict[str, dg.EventLogRecord | None] = {}
    for key in keys:
        latest = instance.fetch_materializations(dg.AssetKey(key), limit=1).records
        if not latest or latest[0].timestamp < newest:
            older[key] = latest[0] if latest else None
    return older


def recompute_hint(region_ids: list[str]) -> str:
    """How a user recomputes named regions, without wiping the environment."""
    flags = " ".join(f"--recompute {r}" for r in region_ids)
    return (
        f"recompute them with `ocr deploy --env-file <env file> {flags}` (or materialize "
        "those partitions of region_risk_raster and region_buildings in the UI)"
    )


class RegionFilesError(ValueError):
    """A materialized region's file is missing or does not hold the rows its materialization
    recorded: consolidating without it would drop its buildings silently."""


def _region_file_problem(storage: OcrStorage, region: str, meta: dict) -> str | None:
    """What is wrong with a materialized region's buildings file, if anything."""
    path = storage.layout.region_buildings(region)
    try:
        rows = storage.vector.parquet_rows(path)
    except FileNotFoundError:
        return f"region {region}: {path} is missing"
    except (OSError, ValueError) as exc:  # unreadable: truncated or corrupt (ArrowInvalid)
        return f"region {region}: {path} is unreadable ({exc})"
    expected = meta.get("buildings_written")
    if expected is not None and rows != expected:
        return f"region {region}: {path} has {rows} rows, its materialization wrote {expected}"
    written = meta.get("bytes")  # another file of the same rows (swapped, rewritten) differs
    if written is not None and (size := storage.files.size(path)) != written:
        return f"region {region}: {path} has {size} bytes, its materialization wrote {written}"
    return None


def checked_region_files(storage: OcrStorage, materialized: dict[str, dict]) -> list[str]:
    """The materialized regions, each checked to have its buildings file with the row count and
    byte size its materialization recorded (a footer read per file); raises RegionFilesError
    naming every region that does not, and how to recompute it."""
    problems = {
        region: problem
        for region, meta in sorted(materialized.items())
        if (problem := _region_file_problem(storage, region, meta))
    }
    if problems:
        raise RegionFilesError("; ".join(problems.values()) + "; " + recompute_hint(list(problems)))
    return sorted(materialized)


def record_region_files(
    instance: dg.DagsterInstance, storage: OcrStorage, regions: list[str]
) -> None:
    """Record region buildings files written outside Dagster (a benchmark's generated
    regions, files restored from a backup) as materialized, with their row counts, so the
    consolidation takes them."""
    for region in regions:
        path = storage.layout.region_buildings(region)
        instance.report_runless_asset_event(
            dg.AssetMaterialization(
                REGION_BUILDINGS,
                partition=region,
                metadata={
                    "path": dg.MetadataValue.path(path),
                    "buildings_written": storage.vector.parquet_rows(path),
                    "bytes": storage.files.size(path),
                },
            )
        )
