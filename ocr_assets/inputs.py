"""External inputs (docs/inputs.md: the published catalog's stores under the input root),
shown in the lineage; read only."""

from __future__ import annotations

import warnings
from collections.abc import Callable
from typing import Any

import dagster as dg

from ocr_assets.constants import INPUTS_GROUP

# key -> (storage kind, description), in the lineage's order
_INPUTS: dict[str, tuple[str, str]] = {
    "burn_probability": (
        "zarr",
        "Riley et al. (2025) burn probability ~2011 and ~2047: 270 m EPSG:5070 grids and a 30 m "
        "EPSG:4326 reference copy (Icechunk repositories, riley-et-al-2025-*).",
    ),
    "conditional_risk": (
        "zarr",
        "Scott et al. (2024) CRPS and RPS on the 30 m grid (scott-et-al-2024-30m-4326); its "
        "chunks define the regions.",
    ),
    "wind_direction_distribution": (
        "zarr",
        "CONUS404 fraction of fire-weather hours with wind from each of 8 directions "
        "(N … NW by index, as published).",
    ),
    "buildings": (
        "parquet",
        "Overture building footprints tagged with census blocks (GeoParquet, one row per "
        "building and block it intersects; each building is read once).",
    ),
    "census_boundaries": (
        "parquet",
        "TIGER census nation, states, counties, tracts and blocks (GeoParquet, NAD83).",
    ),
}
# the inputs a region reads: observed per region (a data version per partition)
REGION_INPUTS: tuple[str, ...] = (
    "burn_probability",
    "conditional_risk",
    "wind_direction_distribution",
    "buildings",
)
INPUT_KEYS: tuple[dg.AssetKey, ...] = tuple(dg.AssetKey(k) for k in _INPUTS)
burn_probability, conditional_risk, wind_direction_distribution, buildings, census_boundaries = (
    INPUT_KEYS
)


def _observe(key: str, partitions: dg.PartitionsDefinition | None) -> Callable[..., Any]:
    """The observation of one input: per region what the region reads of it (a region input),
    else the whole input — metadata only (storage's fingerprints), never values."""

    def observe(context: dg.AssetExecutionContext) -> Any:
        storage = context.resources.storage
        if partitions is None:
            return dg.DataVersion(storage.fingerprints.input_version(key))
        versions = storage.fingerprints.region_input_versions(key, partitions.get_partition_keys())
        with warnings.catch_warnings():  # beta, as the decorator below
            warnings.simplefilter("ignore", dg.BetaWarning)
            return dg.DataVersionsByPartition(versions)

    return observe


def build_input_assets(partitions: dg.PartitionsDefinition) -> list[Any]:
    """The five inputs as observable sources, in the lineage's order: "Observe all" in the
    UI (or ``ocr deploy``) records their data versions, and a region whose inputs' versions
    moved since it was materialized shows as stale."""
    assets = []
    # Dagster's one API for per-partition data versions of a source is still marked beta
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", dg.BetaWarning)
        for key, (kind, text) in _INPUTS.items():
            region_input = partitions if key in REGION_INPUTS else None
            observe = dg.observable_source_asset(
                name=key,
                group_name=INPUTS_GROUP,
                description=text,
                partitions_def=region_input,
                required_resource_keys={"storage"},
                tags={f"dagster/kind/{kind}": ""},
            )
            assets.append(observe(_observe(key, region_input)))
    return assets
