"""Permanent input data errors: corrupt values that the file formats themselves do not
detect are refused by name, at once, and change nothing; a transient read error stays a retry.

- A covering ``bbox`` that disagrees with its geometry (bytes changed in the bbox column: zstd
  raw blocks carry no checksum) used to drop the region's buildings silently, because the read
  filtered rows on the bbox before their geometry was read.
- A Zarr chunk that does not decode used to be retried three times as if transient, and its
  error named neither the store nor the chunk.

Each case breaks a copy of the good root of ``tests/integration/test_bad_inputs.py`` (the
sample inputs and a good deployment's outputs), snapshots every file, runs the region job (or
the read the asset calls) and compares the snapshot afterwards. docs/reliability.md lists the cases.
"""

from __future__ import annotations

import struct
from pathlib import Path

import dagster as dg
import geopandas as gpd
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import shapely
import zarr
from geopandas.testing import assert_geodataframe_equal

import ocr_assets.regions as region_module
from ocr_jobs.definitions import build_definitions
from ocr_jobs.jobs import REGION_JOB
from ocr_resources.region_catalog import load_valid_region_ids
from ocr_resources.sample_data import SampleSpec, write_sample_data
from ocr_resources.settings import OcrSettings
from ocr_resources.storage import InputDataError, OcrStorage, VectorStore
from ocr_science.sampling import centroids_deg
from tests.e2e.test_deploy import BUCKET, s3_endpoint  # noqa: F401  (S3 on a local moto server)
from tests.integration.test_bad_inputs import (  # noqa: F401  (fixtures: the good root and its copies)
    REGION,
    _no_ocr_variables,
    _region_run,
    assert_unchanged,
    good_root,
    root,
    sample_region,
    snapshot,
)

pytestmark = pytest.mark.slow

ROWS_PER_GROUP = 500  # the corrupted buildings file has several row groups, one of them bad
SHIFT_DEG = 1.0  # moves a bbox right out of the region (and of the sample)


def _failure(result: dg.ExecuteInProcessResult):
    """The serialized error of the run's one step failure."""
    failures = [e for e in result.all_events if e.event_type == dg.DagsterEventType.STEP_FAILURE]
    assert len(failures) == 1
    return failures[0].step_failure_data.error


def _refused_at_once(result: dg.ExecuteInProcessResult, expected: str) -> None:
    """The region failed on its first attempt with ``expected`` (an InputDataError), was not
    retried (neither inside the step nor as a step), and its cause carries none of the
    library frames (zarr, xarray, dask, pyarrow) that used to bury the message in the logs."""
    assert not result.success
    error = _failure(result)
    assert (error.cls_name, error.cause.cls_name) == ("Failure", "InputDataError")
    assert _message(error.cause) == expected
    described = _described(result)
    assert described == f"region {REGION} failed on attempt 1: {expected}"
    events = {e.event_type for e in result.all_events}
    assert dg.DagsterEventType.STEP_UP_FOR_RETRY not in events
    library = ("/zarr/", "/xarray/", "/dask/array/", "/pyarrow/", "/geopandas/")
    assert [f for f in error.cause.stack if any(p in f for p in library)] == []


def _box(values) -> str:
    return "[" + ", ".join(f"{v:.9g}" for v in values) + "]"


def _message(cause) -> str:
    return cause.message.partition(f"{cause.cls_name}: ")[2].strip()


def _described(result: dg.ExecuteInProcessResult) -> str:
    failure = next(e for e in result.all_events if e.event_type == dg.DagsterEventType.STEP_FAILURE)
    return failure.step_failure_data.user_failure_data.description


# a covering bbox that disagrees with its geometry -------------------------------------------
def shift_bboxes_in_one_row_group(path: str) -> tuple[int, list[int]]:
    """Rewrite the buildings in row groups of ``ROWS_PER_GROUP`` rows; in the row group that
    holds the region's first building, every second building of the region gets its bbox
    moved ``SHIFT_DEG`` east, its geometry unchanged. Returns (row group, moved file rows)."""
    table = pq.read_table(path)
    geometry = shapely.from_wkb(table["geometry"].to_numpy(zero_copy_only=False))
    inside = np.flatnonzero(sample_region().contains(*centroids_deg(geometry)))
    group = int(inside[0]) // ROWS_PER_GROUP
    mine = inside[inside // ROWS_PER_GROUP == group]
    moved = mine[::2]
    bbox = table["bbox"].combine_chunks()
    fields = {name: bbox.field(name).to_numpy().copy() for name in ("xmin", "ymin", "xmax", "ymax")}
    fields["xmin"][moved] += SHIFT_DEG
    fields["xmax"][moved] += SHIFT_DEG
    corrupt = pa.StructArray.from_arrays(
        [pa.array(v) for v in fields.values()], fields=list(bbox.type)
    )
    index = table.schema.get_field_index("bbox")
    table = table.set_column(index, table.schema.field("bbox"), corrupt)
    pq.write_table(table, path, row_group_size=ROWS_PER_GROUP, compression="zstd")
    return group, [int(r) for r in moved]


def test_covering_bbox_that_disagrees_with_its_geometry_is_refused_by_row(root):  # noqa: F811
    """Before: the region silently lost every moved building and the run succeeded."""
    storage = OcrStorage(root=str(root), environment="local")
    path = storage.layout.buildings
    group, moved = shift_bboxes_in_one_row_group(path)
    before = snapshot(root)

    result = _region_run(storage)

    assert not result.success  # before: success, the moved buildings missing from the output
    table = pq.read_table(path)
    first = table.slice(moved[0], 1)
    box = [first["bbox"][0][name].as_py() for name in ("xmin", "ymin", "xmax", "ymax")]
    bounds = shapely.bounds(shapely.from_wkb(first["geometry"][0].as_py()))
    rows = ", ".join(map(str, moved[:5])) + (", …" if len(moved) > 5 else "")
    _refused_at_once(
        result,
        f"input 'buildings' at {path}: expected a covering bbox that contains each row's "
        f"geometry, got {len(moved)} row(s) in row group {group} whose bbox does not (rows "
        f"{rows}); row {moved[0]}: bbox {_box(box)}, geometry bounds {_box(bounds)}",
    )
    assert_unchanged(before, root)


def overwrite_page_bytes(path: str, column: str) -> None:
    """40 bytes overwritten in ``column``'s first data page (row group 0), just after its zstd
    frame's magic number: the frame's own header, so the page cannot decompress (bytes in the
    middle of a frame may still decompress, into other values)."""
    metadata = pq.ParquetFile(path).metadata.row_group(0)
    chunk = next(
        metadata.column(i)
        for i in range(metadata.num_columns)
        if metadata.column(i).path_in_schema == column
    )
    end = (chunk.dictionary_page_offset or chunk.data_page_offset) + chunk.total_compressed_size
    data = bytearray(Path(path).read_bytes())
    frame = data.index(b"\x28\xb5\x2f\xfd", chunk.data_page_offset, end) + 4
    data[frame : frame + 40] = b"\xab" * 40
    Path(path).write_bytes(bytes(data))


def test_buildings_page_that_does_not_decompress_is_refused_not_retried(root):  # noqa: F811
    """Before: pyarrow's OSError ("ZSTD decompression failed") was retried as if it were a
    network error, three attempts, and named no row group."""
    storage = OcrStorage(root=str(root), environment="local")
    path = storage.layout.buildings
    overwrite_page_bytes(path, "geometry")
    before = snapshot(root)

    result = _region_run(storage)

    _refused_at_once(
        result,
        f"input 'buildings' at {path}: expected row groups that decode, got row group 0 that "
        "does not (OSError: ZSTD decompression failed: Unsupported frame parameter)",
    )
    assert_unchanged(before, root)


def lower_footer_statistic(path: str, column: str, value: float) -> float:
    """Overwrite, in the footer only, the max statistic of ``column`` (a DOUBLE) of the file's
    one row group by ``value``, as a few changed footer bytes do; returns the true max."""
    metadata = pq.ParquetFile(path).metadata
    assert metadata.num_row_groups == 1
    names = [metadata.schema.column(i).path for i in range(metadata.num_columns)]
    true_max = metadata.row_group(0).column(names.index(column)).statistics.max
    data = Path(path).read_bytes()
    footer_start = len(data) - 8 - int.from_bytes(data[-8:-4], "little")
    footer = data[footer_start:-8]
    old, new = struct.pack("<d", true_max), struct.pack("<d", value)
    assert old in footer
    Path(path).write_bytes(data[:footer_start] + footer.replace(old, new) + data[-8:])
    return true_max


def test_row_group_statistics_that_exclude_its_rows_are_refused(root):  # noqa: F811
    """Readers skip a row group by its bbox statistics: statistics that stop short of its
    buildings lose them in the regions beyond. A region that reads the group checks them."""
    storage = OcrStorage(root=str(root), environment="local")
    path = storage.layout.buildings
    pq.write_table(pq.read_table(path), path, compression="zstd")  # one row group
    region = sample_region()
    short = (region.lon0 + region.lon1) / 2  # still meets the region, so the group is read
    true_max = lower_footer_statistic(path, "bbox.xmax", short)

    with pytest.raises(InputDataError) as raised:
        storage.regions.read_buildings(region)

    spanned = shapely.total_bounds(gpd.read_parquet(path).geometry.values)
    assert spanned[2] == true_max
    stated = [*spanned[:2], short, spanned[3]]
    assert str(raised.value) == (
        f"input 'buildings' at {path}: expected the bbox statistics of row group 0 to contain "
        f"its rows' geometries, got statistics {_box(stated)} for geometries spanning "
        f"{_box(spanned)}"
    )


def test_checked_read_returns_what_the_bbox_filter_returned(sample_storage, sample_grid):
    """On a good file the checked read is a whole read filtered by geometry bounds (the bbox
    filter's rule, edges included), row for row, under the pipeline's column names."""
    path = sample_storage.layout.buildings
    everything = gpd.read_parquet(path)
    bounds = shapely.bounds(everything.geometry.values)
    columns = {"block_geoid": "GEOID", "state_abbrev": "state", "county_name": "county"}
    for region_id in ("y0_x0", REGION, "y3_x5"):
        region = sample_grid.region(region_id)
        meets = (
            (bounds[:, 0] <= region.lon1)
            & (bounds[:, 2] >= region.lon0)
            & (bounds[:, 1] <= region.lat1)
            & (bounds[:, 3] >= region.lat0)
        )
        filtered = everything.loc[meets, ["geometry", *columns]].rename(columns=columns)
        read = sample_storage.regions.read_buildings(region)
        assert len(read) > 0
        # the file says no CRS (OGC:CRS84); the reader names it EPSG:4326, as OCR's outputs do
        assert read.crs.to_epsg() == 4326 and filtered.crs.equals("OGC:CRS84")
        expected = filtered.reset_index(drop=True).set_crs(4326, allow_override=True)
        assert_geodataframe_equal(read, expected, check_dtype=False)


def test_float32_bbox_rounded_to_nearest_is_accepted(tmp_path, sample_storage):
    """GeoParquet 1.1 allows a FLOAT bbox; rounded to nearest (not outward) it can sit inside
    its geometry by half a float step, which is not a disagreement."""
    storage = OcrStorage(root=str(tmp_path), environment="local")
    path = Path(storage.layout.buildings)
    path.parent.mkdir(parents=True)
    table = pq.read_table(sample_storage.layout.buildings)
    bbox = table["bbox"].combine_chunks()
    single = pa.struct([(f.name, pa.float32()) for f in bbox.type])
    rounded = bbox.cast(single)  # round to nearest
    assert (rounded.field("xmax").to_numpy() < bbox.field("xmax").to_numpy()).any()
    index = table.schema.get_field_index("bbox")
    table = table.set_column(index, pa.field("bbox", single), rounded)
    pq.write_table(table, path, compression="zstd")

    region = sample_region()
    read = storage.regions.read_buildings(region)
    expected = sample_storage.regions.read_buildings(region)
    assert_geodataframe_equal(read, expected)


# a Zarr chunk that does not decode ----------------------------------------------------------
def overwrite_bytes(path: Path) -> None:
    """40 bytes inside the chunk's zstd frame overwritten (no checksum would catch it)."""
    data = bytearray(path.read_bytes())
    data[20:60] = b"\xab" * 40
    path.write_bytes(bytes(data))


# (asset, store, chunk key in the store): read by the model's field (BP at 270 m), by its wind
# row blocks, and by the region's reference values (CRPS)
CHUNKS = {
    "burn_probability_read_by_the_model": (
        "burn_probability",
        lambda s: s.layout.bp_270m(2011),
        "BP/c/1/0",
    ),
    "wind_read_a_chunk_row_at_a_time": (
        "wind_direction_distribution",
        lambda s: s.layout.wind,
        "wind_direction_distribution/c/2/2/0",
    ),
    "conditional_risk_read_as_reference": (
        "conditional_risk",
        lambda s: s.layout.crps_rps,
        "CRPS/c/1/1",
    ),
}


@pytest.mark.parametrize("case", list(CHUNKS))
def test_corrupt_zarr_chunk_is_named_and_not_retried(case, root):  # noqa: F811
    """Before: "Zstd decompression error", no store, no chunk, three attempts (5 s and 10 s
    apart) and a traceback of ~40 library frames per attempt in the logs."""
    asset, store, key = CHUNKS[case]
    storage = OcrStorage(root=str(root), environment="local")
    path = store(storage)
    overwrite_bytes(Path(path, key))
    before = snapshot(root)

    result = _region_run(storage)

    _refused_at_once(
        result,
        f"input {asset!r} at {path}: expected every stored chunk to decode, got chunk "
        f"{key!r} that does not (RuntimeError: Zstd decompression error: "
        "b'Data corruption detected')",
    )
    assert_unchanged(before, root)


def test_transient_read_error_of_a_chunk_is_retried(root, monkeypatch):  # noqa: F811
    """A read that fails on the way (here the first read of a burn-probability chunk, by the
    model) is not the data's fault: the chunk decodes when fetched again, so the error stays
    as it came and the region's retry succeeds."""
    storage = OcrStorage(root=str(root), environment="local")
    read = zarr.storage.LocalStore.get
    failed: list[str] = []

    async def flaky(self, key, *args, **kwargs):
        if key == "BP/c/1/0" and not failed:
            failed.append(key)
            raise OSError("connection reset by peer")
        return await read(self, key, *args, **kwargs)

    monkeypatch.setattr(zarr.storage.LocalStore, "get", flaky)
    monkeypatch.setattr(region_module, "RETRY_DELAY_SECONDS", 0)
    settings = OcrSettings(storage_root=storage.root, environment=storage.environment)
    job = build_definitions(settings).resolve_job_def(REGION_JOB)
    with dg.instance_for_test() as instance:
        result = job.execute_in_process(partition_key=REGION, instance=instance)
        records = instance.get_records_for_run(result.run_id).records
        logged = "\n".join(r.event_log_entry.user_message for r in records)
    assert failed == ["BP/c/1/0"]
    assert result.success
    assert f"region {REGION} failed on attempt 1: connection reset by peer; retrying" in logged


def test_on_s3_a_corrupt_chunk_is_named_and_buildings_are_read_checked(
    s3_endpoint,  # noqa: F811
    sample_storage,
):
    """The same reads against S3 (a moto server): the chunk is fetched again by key through
    the storage's filesystem, and the buildings are read a row group at a time."""
    storage = OcrStorage(root=f"s3://{BUCKET}/corruption", endpoint_url=s3_endpoint)
    # plain Zarr on S3 (its chunks are objects to break by key)
    write_sample_data(storage, SampleSpec(), container="zarr")
    chunk = f"{storage.layout.crps_rps}/CRPS/c/1/1"
    data = bytearray(storage.files.fs.cat_file(storage.files.fs_path(chunk)))
    data[20:60] = b"\xab" * 40
    storage.files.fs.pipe_file(storage.files.fs_path(chunk), bytes(data))

    region = sample_region()
    crps = storage.inputs.open_input(storage.layout.crps_rps)["CRPS"]
    with pytest.raises(InputDataError) as raised:
        crps.isel(latitude=region.lat_slice, longitude=region.lon_slice).compute()
    assert str(raised.value) == (
        f"input 'conditional_risk' at {storage.layout.crps_rps}: expected every stored chunk "
        "to decode, got chunk 'CRPS/c/1/1' that does not (RuntimeError: Zstd decompression "
        "error: b'Data corruption detected')"
    )
    assert_geodataframe_equal(
        storage.regions.read_buildings(region), sample_storage.regions.read_buildings(region)
    )


def test_transient_read_error_of_a_row_group_stays_as_it_came(sample_storage, monkeypatch):
    """An OSError while a row group is read whose bytes decode when fetched again is not the
    data's fault: it is raised as it came (the region step retries it), never as an input
    error."""
    read = VectorStore.iter_batches
    failed: list[str] = []

    def flaky(self, path, *args, **kwargs):
        if not failed:
            failed.append(path)
            raise OSError("connection reset by peer")
        return read(self, path, *args, **kwargs)

    monkeypatch.setattr(VectorStore, "iter_batches", flaky)
    region = sample_region()
    with pytest.raises(OSError, match=r"^connection reset by peer$"):
        sample_storage.regions.read_buildings(region)
    assert failed == [sample_storage.layout.buildings]
    assert len(sample_storage.regions.read_buildings(region)) > 0


def test_a_row_group_no_region_reads_is_checked_once_before_a_deploy(root):  # noqa: F811
    """Issue 29 case 1: every covering bbox of one row group moved 50° east, its statistics
    with it, so no region's read picks the group and its buildings were lost without a word
    (248 of 1221 in the issue's run, exit 0). The deploy's pre-flight reads the groups no
    region reads and refuses the disagreement by row group; a good file passes, with the rows
    that lie outside every region counted."""
    storage = OcrStorage(root=str(root), environment="local")
    path = storage.layout.buildings
    valid = load_valid_region_ids("sample")
    table = pq.read_table(path)
    pq.write_table(table, path, row_group_size=ROWS_PER_GROUP, compression="zstd")
    # independently of the bbox column: the groups whose geometries meet no region
    grid = storage.regions.region_grid()
    boxes = np.array([grid.region(r).bounds() for r in valid])
    bounds = shapely.bounds(shapely.from_wkb(table["geometry"].to_numpy(zero_copy_only=False)))
    groups = np.arange(len(bounds)) // ROWS_PER_GROUP

    def meets_a_region(b: np.ndarray) -> bool:
        return any(
            ((b[:, 0] <= e) & (b[:, 2] >= w) & (b[:, 1] <= n) & (b[:, 3] >= s)).any()
            for w, s, e, n in boxes
        )

    reads = [meets_a_region(bounds[groups == g]) for g in range(groups.max() + 1)]
    outside = sum(int((groups == g).sum()) for g, read in enumerate(reads) if not read)
    assert storage.regions.check_buildings_outside(valid) == outside > 0

    group = (
        int(
            np.flatnonzero(
                sample_region().contains(
                    *centroids_deg(
                        shapely.from_wkb(table["geometry"].to_numpy(zero_copy_only=False))
                    )
                )
            )[0]
        )
        // ROWS_PER_GROUP
    )
    bbox = table["bbox"].combine_chunks()
    fields = {n: bbox.field(n).to_numpy().copy() for n in ("xmin", "ymin", "xmax", "ymax")}
    rows = slice(group * ROWS_PER_GROUP, (group + 1) * ROWS_PER_GROUP)
    fields["xmin"][rows] += 50.0
    fields["xmax"][rows] += 50.0
    moved = pa.StructArray.from_arrays(
        [pa.array(v) for v in fields.values()], fields=list(bbox.type)
    )
    table = table.set_column(
        table.schema.get_field_index("bbox"), table.schema.field("bbox"), moved
    )
    pq.write_table(table, path, row_group_size=ROWS_PER_GROUP, compression="zstd")
    with pytest.raises(InputDataError) as refused:
        storage.regions.check_buildings_outside(valid)
    size = min(ROWS_PER_GROUP, len(table) - group * ROWS_PER_GROUP)
    assert str(refused.value).startswith(
        f"input 'buildings' at {path}: expected a covering bbox that contains each row's "
        f"geometry, got {size} row(s) in row group {group} whose bbox does not"
    ), str(refused.value)
