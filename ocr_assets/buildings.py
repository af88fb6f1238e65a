"""`buildings_geoparquet` (phase 02): every region's buildings file → one consolidated
GeoParquet 1.1 file and a copy partitioned by state and county, with the checks that guard it."""

import itertools
import json
import threading
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from concurrent.futures import wait as futures_wait
from contextlib import ExitStack
from pathlib import Path

import dagster as dg
import duckdb
import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.dataset as ds
import pyarrow.parquet as pq

from ocr_assets.constants import PHASE02_GROUP, REGION_BUILDINGS
from ocr_assets.region_records import (
    RegionFilesError,
    checked_region_files,
    materialized_regions,
    recompute_hint,
)
from ocr_assets.step import run_step, step_asset
from ocr_resources.compute import ComputeProfile, OcrCompute
from ocr_resources.publication import vector_metadata
from ocr_resources.scratch import scratch_dir
from ocr_resources.storage import BATCH_ROWS, PARQUET_WRITE_OPTIONS, OcrStorage, even_batches
from ocr_science.parallel import worker_threads
from ocr_science.regions import sort_region_ids
from ocr_science.sampling import RISK_VARIABLES, BuildingValueTally, out_of_range


def _geo_metadata(dataset: ds.Dataset, region_paths: list[str]) -> bytes:
    """The region files' ``geo`` metadata with the bbox widened to all of them."""
    bboxes = []
    geo = None
    for fragment in dataset.get_fragments():
        geo = json.loads(fragment.physical_schema.metadata[b"geo"])
        bbox = geo["columns"]["geometry"].get("bbox")
        if bbox:
            bboxes.append(bbox)
    if geo is None:
        raise ValueError(f"no region buildings files among {len(region_paths)} paths")
    if bboxes:
        geo["columns"]["geometry"]["bbox"] = [
            min(b[0] for b in bboxes),
            min(b[1] for b in bboxes),
            max(b[2] for b in bboxes),
            max(b[3] for b in bboxes),
        ]
    return json.dumps(geo).encode()


# Sorting the buildings for the partitioned copy spills to disk beyond this (DuckDB's limit).
SORT_MEMORY_LIMIT = "256MB"
HIVE_NULL = "__HIVE_DEFAULT_PARTITION__"  # the partition of a missing value, as pyarrow names it
# a county's file in the partitioned copy, as DuckDB names its first file (consumers glob
# ``buildings.parquet/**/data_*.parquet``, docs/published.md §4.3)
PARTITION_FILE = "data_0.parquet"
# the columns of the region files, the consolidated file and the partitioned copy, in the
# published order (docs/published.md §4.2): the partition keys state_fips / county_fips are in the
# hive paths only, never in the files
BUILDINGS_COLUMNS: tuple[str, ...] = (
    *RISK_VARIABLES,
    "GEOID",
    "state",
    "county",
    "geometry",
    "bbox",
)
# a building's position in the consolidated file: the sort's tie-break between the many
# buildings of one block (DuckDB's parallel sort does not keep the input order of equal keys)
POSITION = "consolidated_position"


def _numbered(batches: Iterator[pa.RecordBatch], schema: pa.Schema) -> pa.RecordBatchReader:
    """``batches`` with each row's position in the stream as a ``POSITION`` column."""
    if POSITION in schema.names:
        raise ValueError(f"region buildings files must not have a {POSITION!r} column")

    def numbered() -> Iterator[pa.RecordBatch]:
        start = 0
        for batch in batches:
            positions = pa.array(np.arange(start, start + batch.num_rows, dtype=np.int64))
            start += batch.num_rows
            yield batch.append_column(POSITION, positions)

    return pa.RecordBatchReader.from_batches(
        schema.append(pa.field(POSITION, pa.int64())), numbered()
    )


def _by_geoid(
    batches: Iterator[pa.RecordBatch], schema: pa.Schema, scratch: Path, batch_rows: int
) -> Iterator[pa.RecordBatch]:
    """The buildings sorted by GEOID, then by their order in the stream (a total order, so
    every run writes the same bytes), in DuckDB, which spills to ``scratch`` past
    ``SORT_MEMORY_LIMIT``; batches of ``batch_rows`` rows of ``schema`` again (DuckDB's
    Arrow types cast back)."""
    con = duckdb.connect(config={"memory_limit": SORT_MEMORY_LIMIT, "temp_directory": str(scratch)})
    try:
        con.register("buildings_scan", _numbered(batches, schema))
        reader = con.sql(
            f"SELECT * EXCLUDE ({POSITION}) FROM buildings_scan ORDER BY GEOID, {POSITION}"
        ).to_arrow_reader(batch_rows)

        def cast_back() -> Iterator[pa.RecordBatch]:
            for batch in reader:
                columns = [c.cast(f.type) for c, f in zip(batch.columns, schema, strict=True)]
                yield pa.RecordBatch.from_arrays(columns, schema=schema)

        yield from even_batches(cast_back(), batch_rows)
    finally:
        con.close()


def _write_by_county(
    storage: OcrStorage, batches: Iterator[pa.RecordBatch], schema: pa.Schema, root: str
) -> tuple[int, int]:
    """Hive partitions ``state_fips=SS/county_fips=CCC/data_0.parquet`` from batches sorted by
    GEOID: one file open at a time, each run of a county written as it comes. Returns (files,
    rows) written.

    (pyarrow's partitioned dataset writer keeps every partition's file open and queues rows
    ahead of its encoders: memory that grows with the number of buildings, bench/scale.)"""
    files, rows, current, writer = 0, 0, None, None
    with ExitStack() as open_file:
        for batch in batches:
            county = pc.utf8_slice_codeunits(batch.column("GEOID"), 0, 5)
            keys = county.to_numpy(zero_copy_only=False)
            cuts = [0, *(np.flatnonzero(keys[1:] != keys[:-1]) + 1).tolist(), len(keys)]
            for start, stop in itertools.pairwise(cuts):
                key = keys[start]
                if writer is None or key != current:
                    open_file.close()
                    state, rest = (key[:2], key[2:]) if key is not None else (HIVE_NULL,) * 2
                    path = f"{root}/state_fips={state}/county_fips={rest}/{PARTITION_FILE}"
                    sink = open_file.enter_context(storage.files.open(path, "wb"))
                    writer = open_file.enter_context(
                        pq.ParquetWriter(sink, schema, **PARQUET_WRITE_OPTIONS)
                    )
                    current, files = key, files + 1
                writer.write_batch(batch.slice(start, stop - start))
            rows += batch.num_rows
    return files, rows


def _region_file_batches(
    storage: OcrStorage, region: str, schema: pa.Schema, batch_rows: int, checked: bool
) -> Iterator[pa.RecordBatch]:
    """A region file's rows in ``schema``, a row group at a time (its page checksums
    verified as they are read). ``checked``: its values tallied as they pass and the file
    refused, by name, before anything is published (``BuildingValueTally``), as is a file
    whose bytes do not decode."""
    path = storage.layout.region_buildings(region)
    tally = BuildingValueTally()
    try:
        for batch in storage.vector.iter_batches(path, schema.names, batch_rows):
            batch = pa.RecordBatch.from_arrays(batch.select(schema.names).columns, schema=schema)
            if checked:
                tally.add(
                    {v: _floats(batch.column(v)) for v in RISK_VARIABLES},
                    _located(batch.column("geometry"), batch.column("bbox")),
                )
            yield batch
    except (OSError, pa.ArrowException) as exc:  # a checksum, a decoder or a short read
        raise RegionFilesError(
            f"region {region}: {path} does not decode ({exc}); {recompute_hint([region])}"
        ) from exc
    if problems := tally.problems():
        raise RegionFilesError(
            f"region {region}: {path} holds {'; '.join(problems)}, which is never published; "
            + recompute_hint([region])
        )


def _floats(column: pa.Array) -> np.ndarray:
    """A risk variable's values, a null as NaN (missing either way)."""
    return column.to_numpy(zero_copy_only=False).astype(np.float64, copy=False)


def _located(geometry: pa.Array, bbox: pa.Array) -> np.ndarray:
    """Per row, whether the building has a location: a geometry, and a covering bbox that is
    not NaN (an empty geometry's is), read from Arrow without decoding a geometry."""
    xmin = bbox.field("xmin").to_numpy(zero_copy_only=False).astype(np.float64, copy=False)
    has_geometry = pc.is_valid(geometry).to_numpy(zero_copy_only=False)
    return has_geometry & pc.is_valid(bbox).to_numpy(zero_copy_only=False) & ~np.isnan(xmin)


class _Stopped(Exception):
    """One output of the consolidation stops reading because the other failed."""


def consolidate_buildings(
    storage: OcrStorage, region_ids: list[str], version: str | None, batch_rows: int = BATCH_ROWS
) -> dict:
    """Consolidated GeoParquet and its hive-partitioned copy, streamed region by region, and
    published together only once both are written and checked.

    Each region file is checked as it is read (values, locations, page checksums:
    ``_region_file_batches``) and both outputs must hold every row; a region file that fails
    raises RegionFilesError naming it, and the previous outputs stay as they were.

    Row order is fixed, so two runs on the same region files write the same bytes: the
    consolidated file holds the regions in id order (``sort_region_ids``, whatever order
    they are given in), each in its file's order; the partitioned copy is sorted by GEOID,
    then by that consolidated order.

    Every file's metadata is the region files' ``geo`` (bbox widened to all of them) and the
    7 published vector keys (:func:`vector_metadata`, ``version`` None = ``unversioned``);
    ``_common_metadata`` is the files' schema with that metadata, as published."""
    layout = storage.layout
    regions = sort_region_ids(region_ids)
    paths = [layout.region_buildings(r) for r in regions]
    dataset = storage.vector.parquet_dataset(paths)
    if tuple(dataset.schema.names) != BUILDINGS_COLUMNS:
        raise ValueError(
            f"region buildings files have columns {dataset.schema.names}, expected "
            f"{list(BUILDINGS_COLUMNS)} (the published order)"
        )
    metadata = {b"geo": _geo_metadata(dataset, paths)} | {
        k.encode(): v.encode() for k, v in vector_metadata(version).items()
    }
    schema = dataset.schema.with_metadata(metadata)

    stop = threading.Event()  # set when the consolidated file fails: the copy stops reading

    def region_batches(checked: bool) -> Iterator[pa.RecordBatch]:
        """Every region file's rows, a row group at a time and one file after the other (a
        dataset scan reads files and batches ahead of a slower writer, without bound)."""
        for region in regions:
            for batch in _region_file_batches(storage, region, schema, batch_rows, checked):
                if stop.is_set():
                    raise _Stopped
                yield batch

    def write_consolidated(path: str) -> int:
        rows = 0
        with (
            storage.files.open(path, "wb") as f,
            pq.ParquetWriter(f, schema, **PARQUET_WRITE_OPTIONS) as w,
        ):
            for batch in region_batches(checked=True):
                w.write_batch(batch)
                rows += batch.num_rows
        return rows

    def write_partitioned(path: str, scratch: Path) -> tuple[int, int]:
        sorted_batches = _by_geoid(region_batches(checked=False), schema, scratch, batch_rows)
        written = _write_by_county(storage, sorted_batches, schema, path)
        storage.files.makedirs(path)  # no rows (all regions empty): no partitions
        with storage.files.open(f"{path}/_common_metadata", "wb") as f:
            pq.write_metadata(schema, f)
        return written

    with ExitStack() as stack:  # both temporaries are moved into place only at its end
        consolidated = stack.enter_context(storage.files.atomic_path(layout.consolidated_buildings))
        partitioned = stack.enter_context(storage.files.atomic_path(layout.partitioned_buildings))
        scratch = stack.enter_context(scratch_dir("sort-buildings"))
        # the two outputs read the region files side by side on two threads (one after the
        # other on one): the sort's wall time, not the sum (bench/scale.py). The checked
        # pass's error is the one raised (it names the file; the copy's read of the same file
        # would surface wrapped by DuckDB), and it stops the copy.
        with ThreadPoolExecutor(min(2, worker_threads()), thread_name_prefix="buildings") as pool:
            written = pool.submit(write_consolidated, consolidated)
            copied = pool.submit(write_partitioned, partitioned, scratch)
            if written.exception() is not None:
                stop.set()
                futures_wait([copied])
                raise written.exception()
        rows = written.result()
        files, partitioned_rows = copied.result()
        consolidated_bytes = storage.files.size(consolidated)
        if partitioned_rows != rows:  # a region file changed between the two reads
            raise RegionFilesError(
                f"the partitioned copy got {partitioned_rows} rows, the consolidated file "
                f"{rows}: a region file changed while they were written; deploy again"
            )
    return {
        "rows": rows,
        "consolidated_bytes": int(consolidated_bytes),
        "partition_files": files,
    }


@step_asset(
    "buildings_geoparquet",
    PHASE02_GROUP,
    [dg.AssetDep(REGION_BUILDINGS, partition_mapping=dg.AllPartitionMapping())],
    "Every region's buildings in one GeoParquet 1.1 file and a copy partitioned by "
    "state_fips / county_fips, with a _common_metadata sidecar.",
    {"parquet", "duckdb"},
    (
        __name__,
        "ocr_assets.region_records",
        "ocr_science.regions",
        "ocr_science.sampling",
        "ocr_resources.publication",
        "ocr_resources.storage.vector",
        "ocr_resources.storage.geoparquet",
    ),
    ComputeProfile("c8g.12xlarge", "c8g.12xlarge"),
)
def buildings_geoparquet(
    context: dg.AssetExecutionContext, storage: OcrStorage, compute: OcrCompute
):
    # the regions the instance has materialized in this environment, each file checked to be
    # there with the rows its materialization recorded: none is dropped silently
    materialized = materialized_regions(context.instance, storage)
    if not materialized:
        raise ValueError(
            f"no region of this environment is materialized (region buildings in "
            f"{storage.layout.region_buildings_dir}); materialize region partitions first"
        )
    try:
        regions = checked_region_files(storage, materialized)
    except RegionFilesError as exc:
        raise dg.Failure(description=str(exc), allow_retries=False) from exc
    unrecorded = sorted(set(storage.vector.list_region_buildings()) - set(regions))
    if unrecorded:
        context.log.warning(
            f"left out region files no materialization records (a run that did not finish): "
            f"{', '.join(unrecorded)}"
        )
    try:
        step = run_step(context, storage, compute, consolidate_buildings, regions, storage.version)
    except RegionFilesError as exc:  # the same files would fail again: no retry
        raise dg.Failure(description=str(exc), allow_retries=False) from exc
    result = step.result
    context.log.info(f"consolidated {result['rows']} buildings from {len(regions)} regions")
    return step.materialize(
        [storage.layout.consolidated_buildings, storage.layout.partitioned_buildings],
        path=dg.MetadataValue.path(storage.layout.consolidated_buildings),
        partitioned_path=dg.MetadataValue.path(storage.layout.partitioned_buildings),
        regions=len(regions),
        rows=result["rows"],
        bytes=result["consolidated_bytes"],
        partition_files=result["partition_files"],
    )


@dg.asset_check(asset=buildings_geoparquet, blocking=True)
def buildings_counts_agree(
    context: dg.AssetCheckExecutionContext, storage: OcrStorage
) -> dg.AssetCheckResult:
    """Rows in the materialized regions' files = consolidated file = partitioned copy."""
    lay = storage.layout
    regions = sum(
        storage.vector.parquet_rows(lay.region_buildings(r))
        for r in materialized_regions(context.instance, storage)
    )
    consolidated = storage.vector.parquet_rows(lay.consolidated_buildings)
    partitioned = storage.vector.parquet_dataset(lay.partitioned_buildings).count_rows()
    counts = {"region_files": regions, "consolidated": consolidated, "partitioned": partitioned}
    return dg.AssetCheckResult(passed=len(set(counts.values())) == 1, metadata=counts)


@dg.asset_check(asset=buildings_geoparquet, blocking=True)
def buildings_schema_and_ranges(storage: OcrStorage) -> dg.AssetCheckResult:
    """Published column order, float32 risk variables, string GEOID, GeoParquet 1.1 covering
    bbox, the 7 vector metadata keys, documented ranges."""
    path = storage.layout.consolidated_buildings
    schema = storage.vector.parquet_schema(path)
    problems = [] if tuple(schema.names) == BUILDINGS_COLUMNS else [f"columns {schema.names}"]
    expected = vector_metadata(storage.version)
    stored = {k.decode(): v.decode() for k, v in schema.metadata.items() if k != b"geo"}
    if stored != expected:
        problems.append(f"metadata {sorted(stored)} is not the published {list(expected)}")
    problems += [
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
    con.register("b", storage.vector.parquet_stream(path, list(RISK_VARIABLES)))
    row = con.execute(
        "SELECT " + ", ".join(f"min({v}), max({v})" for v in RISK_VARIABLES) + " FROM b"
    ).fetchone()
    minimum = {v: row[2 * i] for i, v in enumerate(RISK_VARIABLES)}
    maximum = {v: row[2 * i + 1] for i, v in enumerate(RISK_VARIABLES)}
    problems += out_of_range(minimum, maximum)
    return dg.AssetCheckResult(passed=not problems, metadata={"problems": problems or ["none"]})
