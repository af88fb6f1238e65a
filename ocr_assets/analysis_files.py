"""`regional_analysis_files` (phase 02, optional): each level's statistics → ``stats.csv`` and
``stats.geojson`` in ``region-analysis/<folder>/``, as published (docs/published.md §4.5):
the CSV opens with one ``# key: value`` line per vector metadata key, the GeoJSON has a
``metadata`` member."""

import csv
import json
from collections.abc import Iterator
from typing import TextIO

import dagster as dg
import pyarrow as pa
import pyogrio
import shapely
from shapely.geometry import mapping

from ocr_assets.constants import PHASE02_GROUP, REGIONAL_ANALYSIS_FILES
from ocr_assets.statistics import region_risk_summary_stats, statistics_batches, statistics_schema
from ocr_assets.step import run_step, step_asset
from ocr_resources.compute import ComputeProfile, OcrCompute
from ocr_resources.publication import vector_metadata
from ocr_resources.storage import BATCH_ROWS, OcrStorage
from ocr_science.statistics import CENSUS_LEVELS, SCORED

# statistics columns the published analysis files leave out, per level: the nation's NAME
# (ocr/pipeline/write_aggregated_region_analysis_files.py:22-26 names no nation NAME)
LEFT_OUT: dict[str, tuple[str, ...]] = {"nation": ("NAME",)}


ANALYSIS_FORMATS = ("csv", "geojson")  # the files of each level's folder


def analysis_columns(level: str) -> list[str]:
    """A level's CSV columns and GeoJSON property keys, in order: the statistics' columns
    without the polygon (and without :data:`LEFT_OUT`)."""
    dropped = {"geometry", *LEFT_OUT.get(level, ())}
    return [n for n in statistics_schema(level).names if n not in dropped]


def metadata_lines(version: str | None) -> str:
    """The CSV's first lines: ``# key: value`` for each vector metadata key, in order."""
    return "".join(f"# {k}: {v}\n" for k, v in vector_metadata(version).items())


def _histogram_text(counts: list[int]) -> str:
    """A histogram as the published CSV holds it: DuckDB's JSON text (no spaces)."""
    return json.dumps(counts, separators=(",", ":"))


def _rows(batch: pa.RecordBatch, columns: list[str]) -> list[dict]:
    return batch.select(columns).to_pylist()


def _features(rows: list[dict], batch: pa.RecordBatch) -> Iterator[str]:
    """The GeoJSON features of a batch: ``type``, ``properties``, ``geometry``; no ``id``."""
    geometries = shapely.from_wkb(batch.column("geometry").to_numpy(zero_copy_only=False))
    for properties, geometry in zip(rows, geometries, strict=True):
        feature = {"type": "Feature", "properties": properties, "geometry": mapping(geometry)}
        yield json.dumps(feature)


def _write_level(
    storage: OcrStorage,
    level: str,
    version: str | None,
    csv_file: TextIO,
    geojson: TextIO,
    batch_rows: int,
) -> int:
    """Both files of a level in one pass over its statistics, a batch at a time."""
    columns = analysis_columns(level)
    metadata = json.dumps(vector_metadata(version))
    geojson.write(f'{{"type": "FeatureCollection", "metadata": {metadata}, "features": [')
    csv_file.write(metadata_lines(version))
    out = csv.writer(csv_file, lineterminator="\n")
    out.writerow(columns)
    rows = 0
    for batch in statistics_batches(storage, level, batch_rows):
        records = _rows(batch, columns)
        for feature in _features(records, batch):
            geojson.write(feature if rows == 0 else ", " + feature)
            rows += 1
        for record in records:
            out.writerow(_histogram_text(record[c]) if c in SCORED else record[c] for c in columns)
    geojson.write("]}")
    return rows


def write_analysis_files(
    storage: OcrStorage, version: str | None, batch_rows: int = BATCH_ROWS
) -> dict[str, int]:
    """Per level: ``stats.csv`` and ``stats.geojson``, streamed from the statistics file a
    batch at a time, each written to a temporary name and moved into place when complete."""
    written: dict[str, int] = {}
    layout = storage.layout
    for level in CENSUS_LEVELS:
        with (
            storage.files.atomic_open(layout.region_analysis(level, "csv"), "w") as csv_file,
            storage.files.atomic_open(layout.region_analysis(level, "geojson"), "w") as geojson,
        ):
            written[level] = _write_level(storage, level, version, csv_file, geojson, batch_rows)
    return written


@step_asset(
    REGIONAL_ANALYSIS_FILES,
    PHASE02_GROUP,
    [region_risk_summary_stats],
    "Optional: stats.csv (with # key: value metadata lines) and stats.geojson (with a "
    "metadata member) per level, in region-analysis/{block,tracts,counties,states,nation}.",
    {"geojson", "csv"},
    (
        __name__,
        "ocr_assets.statistics",
        "ocr_science.statistics",
        "ocr_resources.publication",
        "ocr_resources.storage.files",
        "ocr_resources.storage.vector",
    ),
    ComputeProfile("r8g.4xlarge", "r8g.4xlarge"),
)
def regional_analysis_files(
    context: dg.AssetExecutionContext, storage: OcrStorage, compute: OcrCompute
):
    step = run_step(context, storage, compute, write_analysis_files, storage.version)
    layout = storage.layout
    files = [layout.region_analysis(lv, ext) for lv in CENSUS_LEVELS for ext in ANALYSIS_FORMATS]
    return step.materialize(
        files,
        folder=dg.MetadataValue.path(
            storage.layout.region_analysis("nation", "csv").rsplit("/", 2)[0]
        ),
        rows_per_level=step.result,
    )


@dg.asset_check(asset=regional_analysis_files)
def analysis_files_match_stats(storage: OcrStorage) -> dg.AssetCheckResult:
    """Each level's CSV and GeoJSON hold exactly the statistics' rows, with the published
    metadata lines, columns and members (GDAL counts the GeoJSON's features with its
    streaming parser; the CSV is read line by line; nothing is loaded whole)."""
    problems = []
    expected_lines = metadata_lines(storage.version).splitlines()
    for level in CENSUS_LEVELS:
        expected = storage.vector.parquet_rows(storage.layout.region_summary_stats(level))
        with storage.files.local_copy(storage.layout.region_analysis(level, "geojson")) as path:
            features = pyogrio.read_info(path, force_feature_count=True)["features"]
            with open(path) as f:
                head = f.read(4096)
        if not head.startswith('{"type": "FeatureCollection", "metadata": '):
            problems.append(f"{level}: geojson does not open with type and metadata members")
        with storage.files.open(storage.layout.region_analysis(level, "csv"), "r") as f:
            lines = (line.rstrip("\n") for line in f)
            header = [next(lines, "") for _ in expected_lines]
            names = next(csv.reader([next(lines, "")]))
            rows = sum(1 for _ in csv.reader(lines))
        if header != expected_lines:
            problems.append(f"{level}: csv metadata lines {header}")
        if names != analysis_columns(level):
            problems.append(f"{level}: csv columns {names}")
        if not features == rows == expected:
            problems.append(f"{level}: geojson {features}, csv {rows}, stats {expected}")
    return dg.AssetCheckResult(passed=not problems, metadata={"problems": problems or ["none"]})
