"""Reruns write the same bytes, and a killed tile step leaves no scratch folder behind.

The downstream assets (GeoParquet, statistics, analysis files, pyramid, PMTiles) are
materialized twice on the same sample regions and every file compared by sha256, so two
deployments can be compared byte for byte."""

from __future__ import annotations

import hashlib
import json
import os
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import dagster as dg
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
import pytest
import shapely
import shapely.geometry
from pmtiles.reader import MmapSource, Reader

from ocr_assets import buildings
from ocr_assets.tiles import TILESET_BY_ARCHIVE, build_pmtiles
from ocr_jobs.definitions import build_definitions, build_resources
from ocr_jobs.jobs import DOWNSTREAM_JOB, REGION_JOB
from ocr_resources.scratch import remove_stale_scratch, scratch_dir, scratch_parent
from ocr_resources.settings import OcrSettings
from ocr_resources.storage import OcrStorage
from ocr_science.regions import sort_region_ids
from tests.sample_inputs import link_inputs

pytestmark = pytest.mark.slow

REGIONS = ("y1_x2", "y1_x1")  # given out of order: the consolidation orders them itself


def _digests(root: Path) -> dict[str, str]:
    """sha256 of every file the pipeline wrote under ``root`` (the inputs are a link)."""
    return {
        str(path.relative_to(root)): hashlib.sha256(path.read_bytes()).hexdigest()
        for top in ("intermediate", "output")
        for path in sorted((root / top).rglob("*"))
        if path.is_file()
    }


@pytest.fixture(scope="module")
def reruns(tmp_path_factory, sample_root) -> dict:
    """Two sample regions, then the whole downstream job (optional assets included) twice
    on them in one instance; every output's digest after each run."""
    root = tmp_path_factory.mktemp("determinism")
    link_inputs(sample_root, root)
    settings = OcrSettings(storage_root=str(root), environment="local")
    defs = build_definitions(settings)
    digests = []
    with dg.instance_for_test() as instance:
        for region in REGIONS:
            job = defs.resolve_job_def(REGION_JOB)
            assert job.execute_in_process(partition_key=region, instance=instance).success
        for _ in range(2):
            job = defs.resolve_job_def(DOWNSTREAM_JOB)
            assert job.execute_in_process(instance=instance).success
            digests.append(_digests(root))
    return {"root": root, "storage": build_resources(settings)["storage"], "digests": digests}


def test_a_rerun_writes_every_output_byte_for_byte(reruns):
    first, second = reruns["digests"]
    lay = reruns["storage"].layout
    root = str(reruns["root"]) + "/"
    written = {root + name for name in first}
    expected = {lay.consolidated_buildings, *(lay.pmtiles(n) for n in TILESET_BY_ARCHIVE)}
    assert expected <= written
    assert any(n.startswith(lay.partitioned_buildings.removeprefix(root)) for n in first)
    changed = sorted(n for n in first.keys() | second.keys() if first.get(n) != second.get(n))
    assert changed == [], f"changed on a rerun with the same inputs: {changed}"


def test_archives_record_no_scratch_path(reruns):
    """tippecanoe writes its command line into the archive's metadata: it must not carry the
    run's scratch folder (nor this machine's paths); the name is the tileset's (-n)."""
    for name in TILESET_BY_ARCHIVE:
        with open(reruns["storage"].layout.pmtiles(name), "rb") as f:
            metadata = Reader(MmapSource(f)).metadata()
        options = metadata["generator_options"]
        assert options.startswith(f"tippecanoe -o {name}.pmtiles "), options
        assert "/" not in options and tempfile.gettempdir() not in json.dumps(metadata)
        assert metadata["name"] == TILESET_BY_ARCHIVE[name].name


def _with_position(table: pa.Table) -> pa.Table:
    return table.append_column("position", pa.array(range(table.num_rows), pa.int64()))


def test_rows_are_in_the_documented_order(reruns):
    """Consolidated: regions in id order, each in its file's order. Partitioned: by GEOID,
    then by the consolidated order (a block has many buildings: the tie-break matters)."""
    storage = reruns["storage"]
    lay = storage.layout
    consolidated = pq.read_table(lay.consolidated_buildings)
    regions = pa.concat_tables(
        pq.read_table(lay.region_buildings(r)).select(consolidated.column_names)
        for r in sort_region_ids(REGIONS)
    )
    assert consolidated.equals(regions)
    ties = consolidated.group_by("GEOID").aggregate([("GEOID", "count")])
    assert pc.max(ties["GEOID_count"]).as_py() > 5  # otherwise the order is not tested
    numbered = _with_position(consolidated)
    expected = numbered.take(
        pc.sort_indices(numbered, [("GEOID", "ascending"), ("position", "ascending")])
    ).drop_columns(["position"])
    parts = sorted(Path(lay.partitioned_buildings).rglob("*.parquet"))
    partitioned = pa.concat_tables(
        pq.read_table(p, partitioning=None).select(consolidated.column_names) for p in parts
    )
    assert partitioned.equals(expected)


def test_partitioned_copy_is_the_same_on_every_run(reruns):
    """DuckDB sorts with threads: equal GEOIDs came out in a different order on each run.
    The two outputs are written side by side on two threads, or one after the other on one:
    the same bytes either way."""
    from ocr_science.parallel import thread_limit

    source = reruns["storage"]
    storage = OcrStorage(root=source.root, environment="qa")  # leaves the fixture's outputs
    for region in REGIONS:
        storage.files.fs.makedirs(os.path.dirname(storage.layout.region_buildings(region)), True)
        storage.files.fs.copy(
            source.layout.region_buildings(region), storage.layout.region_buildings(region)
        )
    seen = set()
    for threads in (2, 1, 2, 1, 2):
        with thread_limit(threads):
            buildings.consolidate_buildings(storage, list(REGIONS), None, batch_rows=16)
        digests = _digests(Path(storage.root))
        seen.add(tuple(sorted((n, d) for n, d in digests.items() if "buildings.parquet" in n)))
    assert len(seen) == 1


# --- scratch folders -----------------------------------------------------------------------

HANGING_TILE_STEP = """
import sys, time
from pathlib import Path
from ocr_assets.tiles import TILESET_BY_ARCHIVE, build_pmtiles
from ocr_resources.storage import OcrStorage

def hang():
    Path(sys.argv[2]).write_text("writing layers")
    time.sleep(600)
    yield

spec = TILESET_BY_ARCHIVE["buildings"]
build_pmtiles(OcrStorage(root=sys.argv[1]), spec, {"risk": hang})
"""


def _one_building():
    """The ``risk`` layer of one square building (one feature, its GeoJSON line)."""
    square = shapely.box(-120.5, 38.0, -120.499, 38.001)
    line = json.dumps(
        {"type": "Feature", "properties": {"0": 1.5}, "geometry": shapely.geometry.mapping(square)}
    )
    return lambda: iter([(1, f"{line}\n".encode())])


def test_a_killed_tile_step_leaves_no_scratch_behind(tmp_path, monkeypatch):
    """A tile step killed with SIGKILL cannot clean up; the next tile step removes what it
    left, and its own scratch folder too."""
    tmp = tmp_path / "tmp"
    tmp.mkdir()
    ready = tmp_path / "ready"
    proc = subprocess.Popen(
        [sys.executable, "-c", HANGING_TILE_STEP, str(tmp_path / "killed"), str(ready)],
        env={**os.environ, "TMPDIR": str(tmp)},
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    try:
        deadline = time.monotonic() + 120
        while not ready.exists():
            assert proc.poll() is None, proc.stderr.read().decode()[-2000:]
            assert time.monotonic() < deadline, "the tile step did not start"
            time.sleep(0.1)
        assert list(tmp.rglob("*")), "the tile step made no scratch folder"
    finally:
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait(30)
        proc.stderr.close()
    left = [p for p in tmp.rglob("*") if p.is_dir()]
    assert left  # nothing can clean up after SIGKILL ...

    monkeypatch.setattr(tempfile, "tempdir", str(tmp))
    storage = OcrStorage(root=str(tmp_path / "data"))
    result = build_pmtiles(storage, TILESET_BY_ARCHIVE["buildings"], {"risk": _one_building()})
    assert result["features"] == {"risk": 1}
    # ... so the next tile step does: only the (empty) parent of the scratch folders stays
    assert [p.name for p in tmp.iterdir()] == [scratch_parent().name]
    assert list(scratch_parent().iterdir()) == []


def test_only_the_scratch_of_ended_processes_is_removed(tmp_path):
    dead = subprocess.Popen([sys.executable, "-c", ""])
    dead.wait()
    alive = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        folders = {
            "dead": tmp_path / f"{dead.pid}-pmtiles-regions-abc",
            "alive": tmp_path / f"{alive.pid}-pmtiles-regions-def",
            "own": tmp_path / f"{os.getpid()}-sort-buildings-ghi",
            "other": tmp_path / "not-a-scratch-folder",
        }
        for folder in folders.values():
            folder.mkdir()
            (folder / "layer.fgb").write_bytes(b"x")
        assert remove_stale_scratch(tmp_path) == [folders["dead"]]
        assert sorted(p.name for p in tmp_path.iterdir()) == sorted(
            folders[k].name for k in ("alive", "own", "other")
        )
    finally:
        alive.kill()
        alive.wait()


def test_scratch_is_removed_when_the_step_fails(tmp_path):
    with pytest.raises(RuntimeError, match="boom"), scratch_dir("test", tmp_path) as folder:
        (folder / "part").write_bytes(b"x")
        raise RuntimeError("boom")
    assert list(tmp_path.iterdir()) == []
    with pytest.raises(ValueError, match="scratch label"), scratch_dir("../escape", tmp_path):
        pass
