"""The CONUS raster store as published: an Icechunk repository with one template commit and a
commit per region, written by concurrent processes on a local root and on S3 (a moto server),
read back by a reader that knows only Icechunk and xarray (as OCR's docs open it)."""

import multiprocessing
import os
import signal
import uuid
from collections import Counter
from concurrent.futures import ProcessPoolExecutor

import icechunk
import numpy as np
import pytest
import xarray as xr

from ocr_resources.publication import raster_attributes
from ocr_resources.storage import OcrStorage
from ocr_resources.storage.raster_store import TEMPLATE_MESSAGE, committed_region_ids
from ocr_science.sampling import RISK_VARIABLES
from tests.serial_s3 import serial_s3_server

pytestmark = pytest.mark.slow

BUCKET = "ocr-raster-test"
REGIONS = ["y0_x0", "y0_x1", "y0_x2", "y0_x3", "y1_x0", "y1_x1", "y1_x2", "y1_x3"]
NEVER_WRITTEN = "y3_x4"


@pytest.fixture(scope="module")
def s3_endpoint():
    """A moto S3 server on 127.0.0.1 with the test bucket (credentials are fake)."""
    with serial_s3_server(BUCKET) as endpoint:
        yield endpoint


@pytest.fixture(params=["local", "s3"])
def spec(request, env_root, sample_root) -> dict:
    """A fresh output root on local disk or on S3, reading the session's sample inputs."""
    if request.param == "local":
        return {"root": env_root}
    endpoint = request.getfixturevalue("s3_endpoint")
    return {
        "root": f"s3://{BUCKET}/{uuid.uuid4().hex}",
        "endpoint_url": endpoint,
        "input_root": f"{sample_root}-inputs",
    }


def _window(region, seed: int) -> dict[str, np.ndarray]:
    """Values with a NaN share, different per region and variable."""
    rng = np.random.default_rng(seed)
    values = {name: rng.random(region.shape).astype(np.float32) for name in RISK_VARIABLES}
    for v in values.values():
        v[rng.random(region.shape) < 0.2] = np.nan
    return values


def _write(spec: dict, region_id: str, seed: int, barrier=None) -> str:
    """One writer process: the template if missing, then its region; the region's snapshot."""
    storage = OcrStorage(**spec)
    grid = storage.regions.region_grid()
    if barrier is not None:
        barrier.wait()  # every writer starts its template check at once
    storage.raster.ensure_raster_store(grid)
    region = grid.region(region_id)
    return storage.raster.write_region_window(region, _window(region, seed))


def _ensure(spec: dict, barrier) -> str:
    storage = OcrStorage(**spec)
    grid = storage.regions.region_grid()
    barrier.wait()
    return storage.raster.ensure_raster_store(grid)


def _write_then_die(spec: dict, region_id: str) -> None:
    """A writer killed (SIGKILL) after its data is written into its session, before the
    commit, as an OOM kill or a lost VM would."""
    icechunk.Session.commit = lambda *a, **k: os.kill(os.getpid(), signal.SIGKILL)
    storage = OcrStorage(**spec)
    grid = storage.regions.region_grid()
    region = grid.region(region_id)
    storage.raster.write_region_window(region, _window(region, 99))


def _independent_repo(storage: OcrStorage) -> icechunk.Repository:
    """The repository opened as a user would: Icechunk's own storage constructors."""
    path = storage.layout.raster_store
    if path.startswith("s3://"):
        bucket, _, prefix = path.removeprefix("s3://").partition("/")
        ic_storage = icechunk.s3_storage(
            bucket=bucket,
            prefix=prefix,
            endpoint_url=storage.endpoint_url,
            allow_http=True,
            force_path_style=True,
            from_env=True,
        )
    else:
        ic_storage = icechunk.local_filesystem_storage(path)
    return icechunk.Repository.open(ic_storage)


def _read(storage: OcrStorage) -> tuple[xr.Dataset, list[str]]:
    """The dataset on ``main`` and its commit messages (newest first), read independently."""
    repo = _independent_repo(storage)
    session = repo.readonly_session("main")
    ds = xr.open_dataset(session.store, engine="zarr", chunks={})
    return ds, [s.message for s in repo.ancestry(branch="main")]


def test_concurrent_region_commits_lose_nothing(spec):
    """8 processes race to create the template and commit a region each: one template commit,
    every region committed exactly once, each region's data as written, the rest NaN."""
    ctx = multiprocessing.get_context("spawn")
    with ctx.Manager() as manager, ProcessPoolExecutor(len(REGIONS), mp_context=ctx) as pool:
        barrier = manager.Barrier(len(REGIONS))
        snapshots = list(
            pool.map(_write, [spec] * len(REGIONS), REGIONS, range(len(REGIONS)), [barrier] * 8)
        )
    storage = OcrStorage(**spec)
    ds, messages = _read(storage)
    assert messages[-2:] == [TEMPLATE_MESSAGE, "Repository initialized"]
    assert Counter(r for m in messages for r in committed_region_ids(m)) == Counter(REGIONS)
    assert len(messages) == len(REGIONS) + 2  # nothing else was committed
    assert storage.raster.committed_regions() == dict(zip(REGIONS, snapshots, strict=True))
    grid = storage.regions.region_grid()
    for seed, region_id in enumerate(REGIONS):
        region = grid.region(region_id)
        window = ds.isel(latitude=region.lat_slice, longitude=region.lon_slice)
        for name, expected in _window(region, seed).items():
            np.testing.assert_array_equal(window[name].values, expected, f"{region_id} {name}")
    never = grid.region(NEVER_WRITTEN)
    assert np.isnan(ds.isel(latitude=never.lat_slice, longitude=never.lon_slice).to_array()).all()


def test_racing_first_writers_commit_one_template(spec):
    ctx = multiprocessing.get_context("spawn")
    with ctx.Manager() as manager, ProcessPoolExecutor(4, mp_context=ctx) as pool:
        barrier = manager.Barrier(4)
        snapshots = set(pool.map(_ensure, [spec] * 4, [barrier] * 4))
    _, messages = _read(OcrStorage(**spec))
    assert messages == [TEMPLATE_MESSAGE, "Repository initialized"]
    assert len(snapshots) == 1  # every writer returned the one template's snapshot


def test_killed_region_writer_leaves_no_data(spec):
    storage = OcrStorage(**spec)
    grid = storage.regions.region_grid()
    template = storage.raster.ensure_raster_store(grid)
    killed = multiprocessing.get_context("spawn").Process(
        target=_write_then_die, args=(spec, "y1_x1")
    )
    killed.start()
    killed.join(120)
    assert killed.exitcode == -signal.SIGKILL
    ds, messages = _read(storage)
    assert messages == [TEMPLATE_MESSAGE, "Repository initialized"]
    region = grid.region("y1_x1")
    assert np.isnan(ds.isel(latitude=region.lat_slice, longitude=region.lon_slice).to_array()).all()
    # the next writer is not held up by the dead one (a local root's commit lock died with it)
    snapshot = _write(spec, "y1_x1", 3)
    assert storage.raster.committed_regions() == {"y1_x1": snapshot}
    assert _independent_repo(storage).lookup_branch("main") == snapshot != template


def test_stored_layout_is_the_published_one(env_root):
    """docs/published.md §4.1: variables, dims, dtype, one chunk per region, NaN fill, attributes,
    coordinates without ``spatial_ref``, as an independent reader sees them."""
    storage = OcrStorage(root=env_root, version="1.2.3")
    grid = storage.regions.region_grid()
    storage.raster.ensure_raster_store(grid)
    ds, _ = _read(storage)
    assert set(ds.data_vars) == set(RISK_VARIABLES) and len(ds.data_vars) == len(RISK_VARIABLES)
    assert set(ds.coords) == {"latitude", "longitude"} and "spatial_ref" not in ds.variables
    assert ds.attrs == raster_attributes("1.2.3")
    step = float(grid.latitude[1] - grid.latitude[0])
    assert ds["latitude"].attrs == {
        "units": "degrees_north",
        "resolution": pytest.approx(-step),
        "crs": "EPSG:4326",
    }
    assert ds["longitude"].attrs == {
        "units": "degrees_east",
        "resolution": pytest.approx(float(grid.longitude[1] - grid.longitude[0])),
        "crs": "EPSG:4326",
    }
    np.testing.assert_array_equal(ds["latitude"].values, grid.latitude)
    assert (np.diff(ds["latitude"].values) > 0).all()  # ascending, as published
    for name in RISK_VARIABLES:
        var = ds[name]
        assert var.dims == ("latitude", "longitude") and var.dtype == np.float32
        assert var.encoding["chunks"] == (grid.chunk_lat, grid.chunk_lon)
        assert var.encoding.get("shards") is None
        assert np.isnan(var.encoding["fill_value"])
        assert var.attrs == {}  # as observed: the stored variables carry no attributes
    # our own reader gives the same lazy dataset, in stored chunks and template order
    ours = storage.raster.open_raster_store()
    assert list(ours.data_vars) == list(RISK_VARIABLES)
    assert ours["rps_2011"].chunks == ds["rps_2011"].chunks


def test_a_region_whose_commit_is_missing_is_not_committed(env_root):
    storage = OcrStorage(root=env_root)
    grid = storage.regions.region_grid()
    template = storage.raster.ensure_raster_store(grid)
    first = _write({"root": env_root}, "y1_x1", 1)
    _write({"root": env_root}, "y1_x2", 2)
    assert set(storage.raster.committed_regions()) == {"y1_x1", "y1_x2"}
    _independent_repo(storage).reset_branch("main", first)
    assert storage.raster.committed_regions() == {"y1_x1": first}
    _independent_repo(storage).reset_branch("main", template)
    assert storage.raster.committed_regions() == {}
    # a region written twice: its latest commit counts
    _write({"root": env_root}, "y1_x1", 1)
    again = _write({"root": env_root}, "y1_x1", 5)
    assert storage.raster.committed_regions() == {"y1_x1": again}


def test_commit_messages_parse_as_published():
    assert committed_region_ids("wrote region_id (y5_x14)") == ["y5_x14"]
    assert committed_region_ids("wrote region_id (y1_x1),wrote region_id (y1_x2)") == [
        "y1_x1",
        "y1_x2",
    ]
    # the published reader splits on "," without stripping: " wrote ..." is not a region
    assert committed_region_ids("wrote region_id (y1_x1), wrote region_id (y1_x2)") == ["y1_x1"]
    assert committed_region_ids(TEMPLATE_MESSAGE) == []
    assert committed_region_ids("Repository initialized") == []


@pytest.mark.parametrize("zarr_format", [2, 3])
def test_absent_chunks_are_found_by_dimension_name_in_zarr_v2_and_v3(tmp_path, zarr_format):
    """The existence check of an input's chunks under a region's window (issue 29): a 4 × 6
    array in 2 × 3 chunks, stored (lon, lat) so the window's dims must be matched by name
    (v3 metadata, v2's ``_ARRAY_DIMENSIONS``); one chunk deleted is the one reported, and
    only under a window that covers it."""
    import fsspec

    from ocr_resources.storage.raster_store import StoredArray

    path = tmp_path / "input.zarr"
    data = np.arange(24, dtype="float32").reshape(6, 4)
    ds = xr.Dataset({"CRPS": (("longitude", "latitude"), data)})
    ds.to_zarr(
        path, zarr_format=zarr_format, consolidated=False, encoding={"CRPS": {"chunks": (3, 2)}}
    )
    key = "CRPS/c/1/0" if zarr_format == 3 else "CRPS/1.0"
    (path / key).unlink()
    stored = StoredArray(fsspec.filesystem("file"), str(path), "CRPS")
    everything = {"latitude": slice(0, 4), "longitude": slice(0, 6)}
    assert stored.absent(everything) == [key]
    # latitude 0:2 and longitude 3:6 are stored chunk (1, 0), as (longitude, latitude)
    assert stored.absent({"latitude": slice(0, 2), "longitude": slice(3, 6)}) == [key]
    assert stored.absent({"latitude": slice(2, 4), "longitude": slice(0, 6)}) == []


def test_a_tree_is_copied_into_place_on_s3_concurrently_metadata_last(s3_endpoint, monkeypatch):
    """S3 has no rename: a finished tree's objects are copied into place many at a time
    (a CONUS pyramid has ~440,000; issue 30: one after another took hours), every chunk before
    any metadata document, and objects the new tree does not have are deleted."""
    import asyncio

    import s3fs

    storage = OcrStorage(root=f"s3://{BUCKET}/{uuid.uuid4().hex}", endpoint_url=s3_endpoint)
    target = f"{storage.root}/tree.zarr"
    fs = storage.files.fs
    fs.pipe({f"{target}/stale/c/0": b"old", f"{target}/zarr.json": b"{}"})
    fresh = {f"{target}/zarr.json": b'{"root": 1}'}
    for level in range(3):
        fresh[f"{target}/{level}/zarr.json"] = b"{}"
        fresh |= {f"{target}/{level}/rps/c/0/{i}": bytes([i]) * 64 for i in range(12)}
    started, in_flight, most = [], [0], [0]
    real = s3fs.S3FileSystem._cp_file

    async def counted(self, path1, path2, **kwargs):
        started.append(path2)
        in_flight[0] += 1
        most[0] = max(most[0], in_flight[0])
        try:
            await asyncio.sleep(0.01)
            return await real(self, path1, path2, **kwargs)
        finally:
            in_flight[0] -= 1

    monkeypatch.setattr(s3fs.S3FileSystem, "_cp_file", counted)
    with storage.files.atomic_path(target) as tmp:
        fs.pipe({tmp + key[len(target) :]: value for key, value in fresh.items()})
    assert most[0] > 1, "copied one object at a time"
    kinds = [p.rsplit("/", 1)[-1] == "zarr.json" for p in started]
    assert kinds == sorted(kinds), "a metadata document was copied before a chunk"
    assert len(started) == len(fresh)
    stored = {p: fs.cat_file(p) for p in fs.find(target)}
    assert stored == {k.removeprefix("s3://"): v for k, v in fresh.items()}
