"""Each collaborator of the storage resource built alone, from a layout (and the collaborators it
needs), with no Dagster resource: its reads and writes checked with the libraries themselves
(json, hashlib, pyarrow, geopandas, icechunk, xarray), not with the collaborator."""

from __future__ import annotations

import hashlib
import json
import os
import pickle

import geopandas as gpd
import icechunk
import numpy as np
import pyarrow.parquet as pq
import pytest
import shapely
import xarray as xr

from ocr_resources.layout import StorageLayout
from ocr_resources.storage import (
    FileStore,
    InputDataError,
    InputFingerprints,
    InputReader,
    OcrStorage,
    OutputManifests,
    RasterStore,
    RegionReader,
    VectorStore,
)
from ocr_resources.storage.raster_store import TEMPLATE_MESSAGE
from ocr_science.regions import RegionGrid
from ocr_science.sampling import RISK_VARIABLES
from tests.sample_inputs import copy_inputs

COLLABORATORS = (
    FileStore,
    VectorStore,
    OutputManifests,
    RasterStore,
    InputReader,
    RegionReader,
    InputFingerprints,
)


def _points(n: int) -> gpd.GeoDataFrame:
    return gpd.GeoDataFrame(
        {"GEOID": [f"{i:02d}" for i in range(n)]},
        geometry=shapely.points(np.arange(n, dtype=float), np.zeros(n)),
        crs="EPSG:4326",
    )


def _public(cls: type) -> set[str]:
    return {name for name in vars(cls) if not name.startswith("_")}


def test_each_method_is_reachable_one_way_only():
    """No method is on two collaborators, nor on the resource beside its collaborator."""
    seen: dict[str, str] = {}
    for cls in COLLABORATORS:
        for name in _public(cls):
            assert name not in seen, f"{name} on {cls.__name__} and {seen[name]}"
            seen[name] = cls.__name__
    assert not _public(OcrStorage) & set(seen)


def test_the_resource_builds_each_collaborator_once_outside_its_config(tmp_path):
    storage = OcrStorage(root=str(tmp_path), environment="qa")
    assert storage.files is storage.files
    assert isinstance(storage.fingerprints, InputFingerprints)
    assert storage.regions is storage.regions
    # built collaborators are no config: the resource's values are its fields alone
    assert set(dict(storage)) == set(OcrStorage.model_fields)


def test_file_store_writes_atomically_and_conditionally(tmp_path):
    files = FileStore(StorageLayout(str(tmp_path), "qa"))
    path = f"{tmp_path}/a/b.json"
    files.write_json(path, {"x": [1, 2]})
    with open(path) as f:
        assert json.load(f) == {"x": [1, 2]}
    assert [n for n in os.listdir(tmp_path / "a") if n.startswith(".tmp-")] == []

    lock = f"{tmp_path}/lock"
    token = files.create_exclusive(lock, b"first")
    assert token == hashlib.sha256(b"first").hexdigest()
    assert files.create_exclusive(lock, b"second") is None
    assert files.replace_if(lock, "not-the-token", b"third") is None
    with open(lock, "rb") as f:
        assert f.read() == b"first"
    assert files.delete_if(lock, token)
    assert not os.path.exists(lock)


def test_file_store_wipes_its_environment_only(tmp_path):
    qa, other = (StorageLayout(str(tmp_path), env) for env in ("qa", "other"))
    for layout in (qa, other):
        FileStore(layout).write_text(layout.region_buildings("y0_x0"), "x")
    assert FileStore(qa).wipe_environment()
    assert not os.path.exists(qa.region_buildings("y0_x0"))
    assert os.path.exists(other.region_buildings("y0_x0"))


def test_vector_store_writes_and_reads_geoparquet(tmp_path):
    layout = StorageLayout(str(tmp_path), "qa")
    vector = VectorStore(FileStore(layout), layout)
    for region in ("y1_x0", "y0_x2"):
        assert vector.write_geoparquet(_points(3), layout.region_buildings(region)) > 0
    path = layout.region_buildings("y1_x0")
    assert pq.read_metadata(path).num_rows == 3 == vector.parquet_rows(path)
    assert sum(b.num_rows for b in vector.iter_batches(path, ["GEOID"], batch_rows=2)) == 3
    assert gpd.read_parquet(path)["GEOID"].tolist() == ["00", "01", "02"]
    assert sorted(vector.list_region_buildings()) == ["y0_x2", "y1_x0"]


def test_output_manifests_find_a_changed_output(tmp_path):
    layout = StorageLayout(str(tmp_path), "qa")
    files = FileStore(layout)
    manifests = OutputManifests(files, VectorStore(files, layout))
    path = layout.region_buildings("y0_x0")
    files.makedirs(os.path.dirname(path))
    _points(4).to_parquet(path)
    recorded = manifests.output_manifest(path)
    assert recorded["rows"] == 4 and recorded["bytes"] == os.path.getsize(path)
    assert manifests.output_problems(path, recorded) == []
    _points(5).to_parquet(path)
    assert manifests.output_problems(path, recorded)


def test_raster_store_commits_the_template_then_a_region(tmp_path):
    layout = StorageLayout(str(tmp_path), "qa")
    raster = RasterStore(FileStore(layout), layout)
    grid = RegionGrid(
        latitude=38.0 + np.arange(8) * 0.01,
        longitude=-120.0 + np.arange(8) * 0.01,
        chunk_lat=4,
        chunk_lon=4,
    )
    template = raster.ensure_raster_store(grid)
    assert raster.ensure_raster_store(grid) == template
    assert raster.committed_regions() == {}
    region = grid.region("y0_x1")
    values = {name: np.full(region.shape, 0.5, np.float32) for name in RISK_VARIABLES}
    snapshot = raster.write_region_window(region, values)
    assert raster.committed_regions() == {"y0_x1": snapshot}

    repo = icechunk.Repository.open(icechunk.local_filesystem_storage(layout.raster_store))
    messages = [s.message for s in repo.ancestry(branch="main")]
    assert messages == ["wrote region_id (y0_x1)", TEMPLATE_MESSAGE, "Repository initialized"]
    ds = xr.open_zarr(repo.readonly_session("main").store, consolidated=False)
    window = ds[RISK_VARIABLES[0]].values
    assert (window[:4, 4:] == 0.5).all() and np.isnan(window[:, :4]).all()


def test_input_reader_opens_and_refuses_inputs(sample_root, tmp_path):
    layout = StorageLayout(sample_root, "local")
    files = FileStore(layout)
    inputs = InputReader(files, VectorStore(files, layout), layout)
    inputs.check_inputs()
    census = inputs.read_census("states")
    assert len(census) == pq.read_metadata(layout.census("states")).num_rows

    spec = layout.input_spec(layout.crps_rps)
    repo = icechunk.Repository.open(icechunk.local_filesystem_storage(spec.path))
    assert inputs.input_snapshot(spec) == repo.lookup_branch("main")

    empty = StorageLayout(str(tmp_path / "out"), "local", input_root=str(tmp_path / "none"))
    none = InputReader(FileStore(empty), VectorStore(FileStore(empty), empty), empty)
    with pytest.raises(InputDataError, match="does not exist"):
        none.check_inputs(["buildings"])


def test_region_reader_reads_the_grid_and_a_region(sample_root):
    layout = StorageLayout(sample_root, "local")
    files = FileStore(layout)
    regions = RegionReader(InputReader(files, VectorStore(files, layout), layout), layout)
    grid = regions.region_grid()
    repo = icechunk.Repository.open(icechunk.local_filesystem_storage(layout.crps_rps))
    crps = xr.open_zarr(repo.readonly_session("main").store, consolidated=False)["CRPS"]
    assert (grid.latitude.size, grid.longitude.size) == crps.shape
    assert np.array_equal(grid.latitude, crps["latitude"].values)
    valid = regions.valid_region_ids()
    assert valid and set(valid) <= set(grid.all_region_ids())
    buildings = regions.read_buildings(grid.region(valid[0]))
    west, south, east, north = grid.region(valid[0]).bounds()
    box = buildings.geometry.bounds
    meets = (box.minx <= east) & (box.maxx >= west) & (box.miny <= north) & (box.maxy >= south)
    assert len(buildings) and meets.all()


def test_input_fingerprints_change_with_the_input(sample_root, tmp_path):
    root = tmp_path / "out"
    copy_inputs(sample_root, root)

    def fingerprints() -> InputFingerprints:
        layout = StorageLayout(str(root), "local")
        files = FileStore(layout)
        vector = VectorStore(files, layout)
        inputs = InputReader(files, vector, layout)
        return InputFingerprints(files, vector, inputs, RegionReader(inputs, layout), layout)

    before = fingerprints().input_version("census_boundaries")
    assert fingerprints().input_version("census_boundaries") == before
    nation = StorageLayout(str(root), "local").census("nation")
    table = pq.read_table(nation)
    pq.write_table(table.slice(0, table.num_rows - 1) if table.num_rows > 1 else table[:0], nation)
    assert fingerprints().input_version("census_boundaries") != before


def test_collaborators_pickle_and_work_after(sample_root):
    """A collaborator travels to a worker process as it is (plain values only)."""
    storage = OcrStorage(root=sample_root, environment="local")
    regions = pickle.loads(pickle.dumps(storage.regions))
    assert regions.region_grid().chunk_lat == storage.regions.region_grid().chunk_lat
    files = pickle.loads(pickle.dumps(storage.files))
    assert files.exists(storage.layout.buildings)
