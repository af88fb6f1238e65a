"""Phase 02 — aggregation (DESIGN §2), with the checks that guard each output.

- `buildings_geoparquet`: all region buildings files → consolidated + hive-partitioned GeoParquet
- `region_risk_summary_stats`: `buildings_geoparquet`, `census_boundaries` → one parquet per level
- `regional_analysis_files` (optional): `region_risk_summary_stats` → GeoJSON + CSV per level
- `risk_pyramid` (optional): `region_risk_raster` → Web Mercator Zarr pyramid
"""

import csv
import json
import time

import dagster as dg
import duckdb
import pyarrow.parquet as pq
import pyogrio

from ocr_assets.inputs import census_boundaries
from ocr_assets.science.pyramid import level_resolution, max_zoom_for
from ocr_assets.science.sampling import RISK_VARIABLES, out_of_range
from ocr_resources.compute import CLUSTER_POOL, OcrCompute, profile_tags
from ocr_resources.layout import CENSUS_LEVELS
from ocr_resources.previews import choropleth_level, choropleth_preview, png_markdown
from ocr_resources.publishing import (
    consolidate_buildings,
    read_summary_statistics,
    write_analysis_files,
    write_pyramid,
    write_summary_statistics,
)
from ocr_resources.storage import OcrStorage

PHASE02_GROUP = "phase02_aggregation"
OPTIONAL_TAG = ("ocr/optional", "true")  # optional assets are left out by selection on it
OPTIONAL = dict([OPTIONAL_TAG])
PYRAMID_TARGET_RESOLUTION_M = 30.0


def _version(storage: OcrStorage) -> str:
    return storage.version or f"{storage.environment}-unversioned"


@dg.asset(
    group_name=PHASE02_GROUP,
    deps=[dg.AssetDep("region_buildings", partition_mapping=dg.AllPartitionMapping())],
    description="Every region's buildings in one GeoParquet 1.1 file and a copy partitioned by "
    "state_fips / county_fips, with a _common_metadata sidecar.",
    op_tags=profile_tags("buildings_geoparquet"),
    pool=CLUSTER_POOL,
)
def buildings_geoparquet(
    context: dg.AssetExecutionContext, storage: OcrStorage, compute: OcrCompute
):
    start = time.perf_counter()
    regions = storage.list_region_buildings()
    if not regions:
        raise ValueError(
            f"no region buildings files in {storage.layout.region_buildings_dir}; "
            "materialize region partitions first"
        )
    result, compute_metadata = compute.run(
        context, consolidate_buildings, storage, regions, _version(storage)
    )
    context.log.info(f"consolidated {result['rows']} buildings from {len(regions)} regions")
    return dg.MaterializeResult(
        metadata={
            "path": dg.MetadataValue.path(storage.layout.consolidated_buildings),
            "partitioned_path": dg.MetadataValue.path(storage.layout.partitioned_buildings),
            "regions": len(regions),
            "rows": result["rows"],
            "bytes": result["consolidated_bytes"],
            "partition_files": result["partition_files"],
            "seconds": round(time.perf_counter() - start, 3),
            **compute_metadata,
            "model_variant": storage.model_variant,
        }
    )


@dg.asset_check(asset=buildings_geoparquet, blocking=True)
def buildings_counts_agree(storage: OcrStorage) -> dg.AssetCheckResult:
    """Rows in the region files = consolidated file = partitioned copy."""
    lay = storage.layout
    regions = sum(
        pq.ParquetFile(lay.region_buildings(r), filesystem=storage.fs).metadata.num_rows
        for r in storage.list_region_buildings()
    )
    consolidated = pq.ParquetFile(
        lay.consolidated_buildings, filesystem=storage.fs
    ).metadata.num_rows
    partitioned = storage.parquet_dataset(lay.partitioned_buildings).count_rows()
    counts = {"region_files": regions, "consolidated": consolidated, "partitioned": partitioned}
    return dg.AssetCheckResult(passed=len(set(counts.values())) == 1, metadata=counts)


@dg.asset_check(asset=buildings_geoparquet, blocking=True)
def buildings_schema_and_ranges(storage: OcrStorage) -> dg.AssetCheckResult:
    """float32 risk variables, string GEOID, GeoParquet 1.1 covering bbox, documented ranges."""
    path = storage.layout.consolidated_buildings
    schema = pq.read_schema(path, filesystem=storage.fs)
    problems = [
        f"{v} is {schema.field(v).type}"
        for v in RISK_VARIABLES
        if str(schema.field(v).type) != "float"
    ]
    if str(schema.field("GEOID").type) not in ("string", "large_string"):
        problems.append(f"GEOID is {schema.field('GEOID').type}")
    geo = json.loads(schema.metadata[b"geo"])
    if geo.get("version") != "1.1.0" or "covering" not in geo["columns"]["geometry"]:
        problems.append("geo metadata is not GeoParquet 1.1 with a covering bbox")
    con = duckdb.connect()
    con.register("b", storage.parquet_stream(path, list(RISK_VARIABLES)))
    row = con.execute(
        "SELECT " + ", ".join(f"min({v}), max({v})" for v in RISK_VARIABLES) + " FROM b"
    ).fetchone()
    minimum = {v: row[2 * i] for i, v in enumerate(RISK_VARIABLES)}
    maximum = {v: row[2 * i + 1] for i, v in enumerate(RISK_VARIABLES)}
    problems += out_of_range(minimum, maximum)
    return dg.AssetCheckResult(passed=not problems, metadata={"problems": problems or ["none"]})


@dg.asset(
    group_name=PHASE02_GROUP,
    deps=[buildings_geoparquet, census_boundaries],
    description="Per census level (nation, states, counties, tracts, blocks): building count, "
    "mean and median of seven variables, risk-score histograms and the unit's polygon.",
    op_tags=profile_tags("region_risk_summary_stats"),
    pool=CLUSTER_POOL,
)
def region_risk_summary_stats(
    context: dg.AssetExecutionContext, storage: OcrStorage, compute: OcrCompute
):
    start = time.perf_counter()
    rows, compute_metadata = compute.run(context, write_summary_statistics, storage)
    level = choropleth_level(rows)
    preview = choropleth_preview(read_summary_statistics(storage, level), level)
    return dg.MaterializeResult(
        metadata={
            "paths": {lv: storage.layout.region_summary_stats(lv) for lv in CENSUS_LEVELS},
            "rows_per_level": rows,
            "preview": dg.MetadataValue.md(png_markdown(preview, f"{level} mean RPS")),
            "seconds": round(time.perf_counter() - start, 3),
            **compute_metadata,
            "model_variant": storage.model_variant,
        }
    )


@dg.asset_check(asset=region_risk_summary_stats, blocking=True)
def histograms_sum_to_counts(storage: OcrStorage) -> dg.AssetCheckResult:
    """Every histogram sums to building_count; each level counts every building once
    (scanned by DuckDB, never loaded whole)."""
    total = storage.parquet_rows(storage.layout.consolidated_buildings)
    problems, per_level = [], {}
    con = duckdb.connect()
    for level in CENSUS_LEVELS:
        con.register("stats", storage.parquet_dataset(storage.layout.region_summary_stats(level)))
        wrong, counted = con.execute(
            "SELECT count(*) FILTER (WHERE list_sum(risk_score_2011_hist) != building_count "
            "OR list_sum(risk_score_2047_hist) != building_count), "
            "coalesce(sum(building_count), 0) FROM stats"
        ).fetchall()[0]
        con.unregister("stats")
        if wrong:
            problems.append(f"{level}: {wrong} histogram(s) do not sum to building_count")
        per_level[level] = int(counted)
        if per_level[level] != total:
            problems.append(
                f"{level} counts {per_level[level]} buildings, consolidated has {total}"
            )
    return dg.AssetCheckResult(
        passed=not problems,
        metadata={"buildings": total, "per_level": per_level, "problems": problems or ["none"]},
    )


@dg.asset(
    group_name=PHASE02_GROUP,
    deps=[region_risk_summary_stats],
    tags=OPTIONAL,
    description="Optional: stats.geojson and stats.csv (with # key: value header) per level.",
    op_tags=profile_tags("regional_analysis_files"),
    pool=CLUSTER_POOL,
)
def regional_analysis_files(
    context: dg.AssetExecutionContext, storage: OcrStorage, compute: OcrCompute
):
    start = time.perf_counter()
    rows, compute_metadata = compute.run(context, write_analysis_files, storage, _version(storage))
    return dg.MaterializeResult(
        metadata={
            "folder": dg.MetadataValue.path(
                storage.layout.region_analysis("nation", "csv").rsplit("/", 2)[0]
            ),
            "rows_per_level": rows,
            "seconds": round(time.perf_counter() - start, 3),
            **compute_metadata,
            "model_variant": storage.model_variant,
        }
    )


@dg.asset_check(asset=regional_analysis_files)
def analysis_files_match_stats(storage: OcrStorage) -> dg.AssetCheckResult:
    """Each level's GeoJSON and CSV hold exactly the statistics' rows (GDAL counts the
    GeoJSON's features with its streaming parser; the CSV is read row by row)."""
    problems = []
    for level in CENSUS_LEVELS:
        expected = storage.parquet_rows(storage.layout.region_summary_stats(level))
        with storage.local_copy(storage.layout.region_analysis(level, "geojson")) as path:
            features = pyogrio.read_info(path, force_feature_count=True)["features"]
        with storage.fs.open(storage.layout.region_analysis(level, "csv"), "r") as f:
            rows = sum(1 for _ in csv.reader(line for line in f if not line.startswith("#"))) - 1
        if not features == rows == expected:
            problems.append(f"{level}: geojson {features}, csv {rows}, stats {expected}")
    return dg.AssetCheckResult(passed=not problems, metadata={"problems": problems or ["none"]})


@dg.asset(
    group_name=PHASE02_GROUP,
    deps=[dg.AssetDep("region_risk_raster", partition_mapping=dg.AllPartitionMapping())],
    tags=OPTIONAL,
    description="Optional: multiscale Web Mercator pyramid of rps_2011 / rps_2047 (Zarr v3), "
    "levels 0 up to the zoom matching 30 m pixels.",
    op_tags=profile_tags("risk_pyramid"),
    pool=CLUSTER_POOL,
)
def risk_pyramid(context: dg.AssetExecutionContext, storage: OcrStorage, compute: OcrCompute):
    start = time.perf_counter()
    lat = storage.open_raster_store()["latitude"].values
    max_zoom = max_zoom_for(PYRAMID_TARGET_RESOLUTION_M, float(lat[lat.size // 2]))
    result, compute_metadata = compute.run(context, write_pyramid, storage, max_zoom)
    return dg.MaterializeResult(
        metadata={
            "path": dg.MetadataValue.path(storage.layout.pyramid),
            "max_zoom": max_zoom,
            "finest_resolution_m": round(level_resolution(max_zoom), 2),
            **result,
            "seconds": round(time.perf_counter() - start, 3),
            **compute_metadata,
            "model_variant": storage.model_variant,
        }
    )


@dg.asset_check(asset=risk_pyramid)
def pyramid_levels_coarsen(storage: OcrStorage) -> dg.AssetCheckResult:
    """Levels 0…max exist, each finer level has more pixels, values stay in [0, 100]."""
    tree = storage.open_datatree(storage.layout.pyramid)
    levels = sorted(int(k) for k in tree.children)
    sizes = [tree[str(z)]["rps_2011"].size for z in levels]
    # a chunk at a time: the finest level of CONUS has billions of pixels
    finest = float(tree[str(levels[-1])]["rps_2011"].max(skipna=True).compute())
    ok = levels == list(range(len(levels))) and sizes == sorted(sizes) and not finest > 100
    return dg.AssetCheckResult(passed=bool(ok), metadata={"levels": levels, "pixels": sizes})
