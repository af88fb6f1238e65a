"""External inputs (DESIGN §3), shown in the lineage; read only."""

from __future__ import annotations

import dagster as dg

from ocr_assets.constants import INPUTS_GROUP

# key -> (storage kind, description), in the lineage's order
_INPUTS: dict[str, tuple[str, str]] = {
    "burn_probability": (
        "zarr",
        "Riley et al. (2025) burn probability ~2011 and ~2047: 270 m EPSG:5070 grids and a 30 m "
        "EPSG:4326 reference copy.",
    ),
    "conditional_risk": (
        "zarr",
        "Scott et al. (2024) CRPS and RPS on the 30 m grid; its chunks define the regions.",
    ),
    "wind_direction_distribution": (
        "zarr",
        "CONUS404 fraction of fire-weather hours with wind from each of 8 directions.",
    ),
    "buildings": (
        "parquet",
        "Building footprints (GeoParquet, EPSG:4326) with census block GEOIDs.",
    ),
    "census_boundaries": (
        "parquet",
        "Census nation, states, counties, tracts and blocks (GeoParquet, EPSG:4326).",
    ),
}
INPUT_SPECS = [
    dg.AssetSpec(key, group_name=INPUTS_GROUP, kinds={kind}, description=text)
    for key, (kind, text) in _INPUTS.items()
]
burn_probability, conditional_risk, wind_direction_distribution, buildings, census_boundaries = (
    INPUT_SPECS
)

# The inputs a region reads (its assets' upstreams): checked before it computes anything.
REGION_INPUTS: tuple[str, ...] = tuple(
    spec.key.to_user_string()
    for spec in (burn_probability, conditional_risk, wind_direction_distribution, buildings)
)
