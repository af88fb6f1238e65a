"""Facts about the asset graph that several modules (and ``ocr_jobs``) need, stated once."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from ocr_resources.layout import StorageLayout
from ocr_science.fire_model import YEARS  # the model's years; re-exported, not restated

__all__ = [
    "CLUSTER_POOL",
    "INPUTS_GROUP",
    "OPTIONAL_ASSETS",
    "OPTIONAL_KEYS",
    "OPTIONAL_TAG",
    "PHASE01_GROUP",
    "PHASE02_GROUP",
    "PHASE03_GROUP",
    "REGIONAL_ANALYSIS_FILES",
    "REGION_BUILDINGS",
    "REGION_RASTER",
    "RISK_PYRAMID",
    "YEARS",
]

INPUTS_GROUP = "inputs"
PHASE01_GROUP = "phase01_regions"
PHASE02_GROUP = "phase02_aggregation"
PHASE03_GROUP = "phase03_tiles"

# The two region assets (one op writes both); deploy reads the buildings' materializations.
REGION_RASTER = "region_risk_raster"
REGION_BUILDINGS = "region_buildings"


@dataclass(frozen=True)
class OptionalAsset:
    """An asset a deployment builds only when asked: the ``ocr deploy`` flag that asks for it
    and what it writes, (label, path) for the deployment's summary."""

    key: str
    flag: str
    help: str
    outputs: Callable[[StorageLayout], list[tuple[str, str]]]


# Optional assets carry this tag (``step_asset`` sets it from the table below); jobs leave
# them out by selecting on it, and a deployment asks for them by flag. THE table: a new
# optional asset is a row here and its asset's module, nothing else.
OPTIONAL_TAG = ("ocr/optional", "true")
RISK_PYRAMID = "risk_pyramid"
REGIONAL_ANALYSIS_FILES = "regional_analysis_files"
OPTIONAL_ASSETS: tuple[OptionalAsset, ...] = (
    OptionalAsset(
        RISK_PYRAMID,
        "--create-pyramid",
        "Also build the multiscale pyramid of the risk rasters (the map's risk surface).",
        lambda layout: [("pyramid", layout.pyramid)],
    ),
    OptionalAsset(
        REGIONAL_ANALYSIS_FILES,
        "--write-regional-stats",
        "Also write each census level's statistics as stats.csv and stats.geojson.",
        lambda layout: [("analysis files", layout.region_analysis("<level>", "{geojson,csv}"))],
    ),
)
OPTIONAL_KEYS: tuple[str, ...] = tuple(a.key for a in OPTIONAL_ASSETS)

# Every heavy asset runs in this Dagster pool (its limit is in dagster.yaml): at most that
# many clusters at once.
CLUSTER_POOL = "ocr_clusters"
