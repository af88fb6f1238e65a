"""Facts about the asset graph that several modules (and ``ocr_jobs``) need, stated once."""

from __future__ import annotations

from ocr_science.fire_model import YEARS  # the model's years; re-exported, not restated

__all__ = [
    "CLUSTER_POOL",
    "INPUTS_GROUP",
    "OPTIONAL_ASSETS",
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

# Optional assets carry this tag; jobs leave them out by selecting on it, and a deployment
# asks for them by key. THE list: a new optional asset is added here and nowhere else.
OPTIONAL_TAG = ("ocr/optional", "true")
RISK_PYRAMID = "risk_pyramid"
REGIONAL_ANALYSIS_FILES = "regional_analysis_files"
OPTIONAL_ASSETS: tuple[str, ...] = (RISK_PYRAMID, REGIONAL_ANALYSIS_FILES)

# Every heavy asset runs in this Dagster pool (its limit is in dagster.yaml): at most that
# many clusters at once.
CLUSTER_POOL = "ocr_clusters"
