"""The whole asset graph, in one list, for the code location (``ocr_jobs.definitions``)."""

from __future__ import annotations

import dagster as dg

from ocr_assets import analysis_files, buildings, pyramid, statistics
from ocr_assets.constants import REGION_RASTER
from ocr_assets.inputs import build_input_assets
from ocr_assets.regions import REGION_PROFILE, build_region_assets
from ocr_assets.tiles import TILESET_ASSETS, TILESET_CHECKS
from ocr_resources.compute import ComputeProfile

# the modules that define their assets and checks with decorators at module level
_STEP_MODULES = (buildings, statistics, analysis_files, pyramid)
# phases 02/03: the same definitions in every code location built from this module
_STEP_ASSETS = [*dg.load_assets_from_modules(_STEP_MODULES), *TILESET_ASSETS]

# Every heavy asset's compute profile by key, in graph order: the region step first. Stated
# where each asset is declared (read back from the op tags its declaration set); gathered here
# for the docs, the cost model and Coiled's software environment (one CPU architecture).
PROFILES: dict[str, ComputeProfile] = {
    REGION_RASTER: REGION_PROFILE,
    **dict(ComputeProfile.from_tags(dict(a.op.tags)) for a in _STEP_ASSETS),
}


def asset_definitions(
    partitions: dg.PartitionsDefinition, max_retries: int, regions_per_run: int, model_variant: str
) -> list[dg.AssetsDefinition | dg.SourceAsset]:
    """Inputs, the region multi-asset (partitioned, with its retry budget and run size) and
    phases 02/03."""
    return [
        *build_input_assets(partitions),
        build_region_assets(partitions, max_retries, regions_per_run, model_variant),
        *_STEP_ASSETS,
    ]


def asset_checks() -> list[dg.AssetChecksDefinition]:
    return [*dg.load_asset_checks_from_modules(_STEP_MODULES), *TILESET_CHECKS]


def profile_table_markdown() -> str:
    """``PROFILES`` as the Markdown table the docs show (one row per heavy asset)."""
    rows = [
        "| asset | Coiled VM | scheduler VM | disk | workers | tasks per worker | VMs |",
        "|---|---|---|---|---|---|---|",
    ]
    for name, p in PROFILES.items():
        disk = f"{p.disk_size_gb} GB" if p.disk_size_gb else "–"
        scheduler = p.scheduler_vm_type or "Coiled's default"
        tasks = p.tasks_per_worker or "one per vCPU"
        rows.append(
            f"| `{name}` | {p.vm_type} | {scheduler} | {disk} | {p.workers} | {tasks} | {p.vms()} |"
        )
    return "\n".join(rows)
