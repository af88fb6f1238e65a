"""PMTiles for the web map (DESIGN §2, §6), generated from one table (``TILESETS``).

- `regional_pmtiles` (phase02): `region_risk_summary_stats` → `regions.pmtiles`, a layer per level
- `building_centroid_pmtiles` (phase03): `buildings_geoparquet` → `building_centroids.pmtiles`
- `building_pmtiles` (phase03): `buildings_geoparquet` → `buildings.pmtiles` (layer `risk`)
"""

import time
from collections.abc import Callable
from dataclasses import dataclass
from functools import partial

import dagster as dg

from ocr_assets.aggregation import PHASE02_GROUP
from ocr_assets.science.tiling import (
    BUILDING_PROPERTIES,
    BUILDINGS_ZOOM,
    CENTROIDS_ZOOM,
    REGIONS_ZOOM,
)
from ocr_resources.compute import CLUSTER_POOL, OcrCompute, profile_tags
from ocr_resources.layout import CENSUS_LEVELS
from ocr_resources.pmtiles_reader import archive_summary
from ocr_resources.publishing import (
    LayerSource,
    build_tileset,
    building_layers,
    regional_layers,
)
from ocr_resources.storage import OcrStorage

PHASE03_GROUP = "phase03_tiles"
# tippecanoe's FlatGeobuf reader passes integer and float32 attributes on as strings, which a
# map cannot colour by; typing them keeps them numbers in the tiles
NUMBERS = tuple(f"--attribute-type={name}:float" for name in BUILDING_PROPERTIES)
COUNTS = ("--attribute-type=building_count:int",)


@dataclass(frozen=True)
class Tileset:
    key: str
    archive: str
    upstream: str
    group: str
    zoom: tuple[int, int]
    layers: Callable[[OcrStorage], dict[str, LayerSource]]
    tippecanoe_options: tuple[str, ...]
    description: str

    @property
    def layer_names(self) -> list[str]:
        return list(CENSUS_LEVELS) if self.archive == "regions" else ["risk"]


TILESETS: tuple[Tileset, ...] = (
    Tileset(
        "regional_pmtiles",
        "regions",
        "region_risk_summary_stats",
        PHASE02_GROUP,
        REGIONS_ZOOM,
        regional_layers,
        ("--detect-shared-borders", "--no-tile-size-limit", *COUNTS),
        "Census-unit statistics, one layer per level (nation … blocks).",
    ),
    Tileset(
        "building_centroid_pmtiles",
        "building_centroids",
        "buildings_geoparquet",
        PHASE03_GROUP,
        CENTROIDS_ZOOM,
        partial(building_layers, centroids=True),
        ("-r1", "--drop-densest-as-needed", *NUMBERS),
        "Building centroids where both RPS > 0, values rounded to 3 decimals (layer risk).",
    ),
    Tileset(
        "building_pmtiles",
        "buildings",
        "buildings_geoparquet",
        PHASE03_GROUP,
        BUILDINGS_ZOOM,
        building_layers,
        ("--drop-densest-as-needed", *NUMBERS),
        "Building polygons with RPS, BP and CRPS values (layer risk), zoom 6 to street level.",
    ),
)


def _tileset_asset(spec: Tileset) -> dg.AssetsDefinition:
    @dg.asset(
        name=spec.key,
        group_name=spec.group,
        deps=[spec.upstream],
        description=spec.description,
        op_tags=profile_tags(spec.key),
        pool=CLUSTER_POOL,
    )
    def _build(
        context: dg.AssetExecutionContext, storage: OcrStorage, compute: OcrCompute
    ) -> dg.MaterializeResult:
        start = time.perf_counter()
        result, compute_metadata = compute.run(
            context,
            build_tileset,
            storage,
            spec.archive,
            spec.layers,
            spec.zoom,
            spec.tippecanoe_options,
        )
        return dg.MaterializeResult(
            metadata={
                "path": dg.MetadataValue.path(storage.layout.pmtiles(spec.archive)),
                **result,
                "min_zoom": spec.zoom[0],
                "max_zoom": spec.zoom[1],
                "seconds": round(time.perf_counter() - start, 3),
                **compute_metadata,
                "model_variant": storage.model_variant,
            }
        )

    return _build


def _tileset_check(spec: Tileset) -> dg.AssetChecksDefinition:
    @dg.asset_check(asset=spec.key, name=f"{spec.key}_header_and_layers")
    def _check(storage: OcrStorage) -> dg.AssetCheckResult:
        summary = archive_summary(storage, storage.layout.pmtiles(spec.archive))
        ok = (summary["min_zoom"], summary["max_zoom"]) == spec.zoom and sorted(
            summary["layers"]
        ) == sorted(spec.layer_names)
        return dg.AssetCheckResult(passed=ok, metadata=summary)

    return _check


TILESET_ASSETS = [_tileset_asset(spec) for spec in TILESETS]
TILESET_CHECKS = [_tileset_check(spec) for spec in TILESETS]
