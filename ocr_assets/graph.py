"""The whole asset graph, in one list, for the code location (``ocr_jobs.definitions``)."""

from __future__ import annotations

import dagster as dg

from ocr_assets import analysis_files, buildings, pyramid, statistics
from ocr_assets.inputs import build_input_assets
from ocr_assets.regions import build_region_assets
from ocr_assets.tiles import TILESET_ASSETS, TILESET_CHECKS

# the modules that define their assets and checks with decorators at module level
_STEP_MODULES = (buildings, statistics, analysis_files, pyramid)


def asset_definitions(
    partitions: dg.PartitionsDefinition, max_retries: int, regions_per_run: int, model_variant: str
) -> list[dg.AssetsDefinition | dg.SourceAsset]:
    """Inputs, the region multi-asset (partitioned, with its retry budget and run size) and
    phases 02/03."""
    return [
        *build_input_assets(partitions),
        build_region_assets(partitions, max_retries, regions_per_run, model_variant),
        *dg.load_assets_from_modules(_STEP_MODULES),
        *TILESET_ASSETS,
    ]


def asset_checks() -> list[dg.AssetChecksDefinition]:
    return [*dg.load_asset_checks_from_modules(_STEP_MODULES), *TILESET_CHECKS]
