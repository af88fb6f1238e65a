"""`regional_analysis_files` (phase 02, optional): each level's statistics → stats.geojson
and stats.csv (with a ``# key: value`` header)."""

import csv
import json
from collections.abc import Iterator

import dagster as dg
import pyarrow as pa
import pyogrio
import shapely
import shapely.geometry

from ocr_assets.constants import PHASE02_GROUP, REGIONAL_ANALYSIS_FILES
from ocr_assets.science.statistics import (
    CENSUS_LEVELS,
)
from ocr_assets.statistics import region_risk_summary_stats, statistics_batches
from ocr_assets.step import dataset_metadata, dataset_version, run_step, step_asset
from ocr_resources.compute import OcrCompute
from ocr_resources.storage import BATCH_ROWS, OcrStorage


def _feature_lines(batch: pa.RecordBatch, first_id: int) -> Iterator[str]:
    """GeoJSON features of a batch, as GeoPandas' ``to_json`` writes them (id = row number)."""
    geometries = shapely.from_wkb(batch.column("geometry").to_numpy(zero_copy_only=False))
    properties = batch.drop_columns(["geometry"]).to_pylist()
    for i, (props, geometry) in enumerate(zip(properties, geometries, strict=True)):
        feature = {
            "id": str(first_id + i),
            "type": "Feature",
            "properties": props,
            "geometry": shapely.geometry.mapping(geometry),
        }
        yield json.dumps(feature)


def write_analysis_files(
    storage: OcrStorage, version: str, batch_rows: int = BATCH_ROWS
) -> dict[str, int]:
    """Per level: ``stats.geojson`` (FeatureCollection) and ``stats.csv`` with ``# key: value``
    header lines, both streamed from the statistics file a batch at a time."""
    written: dict[str, int] = {}
    for level in CENSUS_LEVELS:
        total = storage.parquet_rows(storage.layout.region_summary_stats(level))
        with storage.atomic_open(storage.layout.region_analysis(level, "geojson"), "w") as f:
            f.write('{"type": "FeatureCollection", "features": [')
            rows = 0
            for batch in statistics_batches(storage, level, batch_rows):
                for line in _feature_lines(batch, rows):
                    f.write(line if rows == 0 else ", " + line)
                    rows += 1
            f.write("]}")
        header = {"level": level, "rows": total, **dataset_metadata(version, "ODbL-1.0")}
        with storage.atomic_open(storage.layout.region_analysis(level, "csv"), "w") as f:
            f.write("".join(f"# {k}: {v}\n" for k, v in header.items()))
            out = csv.writer(f, lineterminator="\n")
            names = None
            for batch in statistics_batches(storage, level, batch_rows):
                table = batch.drop_columns(["geometry"])
                if names is None:
                    names = table.schema.names
                    out.writerow(names)
                for row in table.to_pylist():
                    out.writerow(_csv_value(row[n]) for n in names)
            if names is None:
                out.writerow(_statistics_schema_names(storage, level))
        written[level] = total
    return written


def _csv_value(value: object) -> object:
    """A cell as pandas' ``to_csv`` writes it: lists as JSON, missing as empty."""
    if isinstance(value, list):
        return json.dumps(value)
    return "" if value is None else value


def _statistics_schema_names(storage: OcrStorage, level: str) -> list[str]:
    schema = storage.parquet_schema(storage.layout.region_summary_stats(level))
    return [n for n in schema.names if n not in ("geometry", "bbox")]


@step_asset(
    REGIONAL_ANALYSIS_FILES,
    PHASE02_GROUP,
    [region_risk_summary_stats],
    "Optional: stats.geojson and stats.csv (with # key: value header) per level.",
    {"geojson", "csv"},
    optional=True,
)
def regional_analysis_files(
    context: dg.AssetExecutionContext, storage: OcrStorage, compute: OcrCompute
):
    step = run_step(context, storage, compute, write_analysis_files, dataset_version(storage))
    return step.materialize(
        folder=dg.MetadataValue.path(
            storage.layout.region_analysis("nation", "csv").rsplit("/", 2)[0]
        ),
        rows_per_level=step.result,
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
        with storage.open(storage.layout.region_analysis(level, "csv"), "r") as f:
            rows = sum(1 for _ in csv.reader(line for line in f if not line.startswith("#"))) - 1
        if not features == rows == expected:
            problems.append(f"{level}: geojson {features}, csv {rows}, stats {expected}")
    return dg.AssetCheckResult(passed=not problems, metadata={"problems": problems or ["none"]})
