"""What a user sees in the Dagster UI: kinds on every asset, a description on every check, the
three tile assets in one group, readable previews, and regions without values saying so."""

import io
import json
import os
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import dagster as dg
import numpy as np
import pytest
from matplotlib.image import imread

from ocr_assets.constants import PHASE03_GROUP
from ocr_assets.previews import NO_FINITE_VALUES, choropleth_preview, raster_preview
from ocr_assets.regions import _no_values_note
from ocr_assets.tiles import TILESETS
from ocr_jobs.definitions import build_definitions
from ocr_resources.settings import OcrSettings
from tests.processes import interrupt_group

pytestmark = pytest.mark.slow


def _defs(tmp_path) -> dg.Definitions:
    return build_definitions(OcrSettings(storage_root=str(tmp_path), environment="local"))


def test_every_asset_has_kinds_and_every_check_a_description(tmp_path):
    defs = _defs(tmp_path)
    specs = defs.resolve_all_asset_specs()
    assert len(specs) == 14
    assert not [s.key.to_user_string() for s in specs if not s.kinds]
    graph = defs.resolve_asset_graph()
    checks = [c for key in graph.asset_check_keys for c in [graph.get_check_spec(key)]]
    assert len(checks) == 8
    assert not [c.name for c in checks if not (c.description or "").strip()]


def test_the_three_tile_assets_share_the_tiles_group(tmp_path):
    groups = {
        s.key.to_user_string(): s.group_name for s in _defs(tmp_path).resolve_all_asset_specs()
    }
    assert {groups[t.key] for t in TILESETS} == {PHASE03_GROUP}


def _pixels(png: bytes) -> tuple[int, int]:
    height, width = imread(io.BytesIO(png), format="png").shape[:2]
    return width, height


def test_previews_are_large_enough_to_read():
    rng = np.random.default_rng(0)
    width, height = _pixels(raster_preview(rng.random((90, 120)) * 2, "y1_x1 rps_2011", 38.0))
    assert width >= 450 and height >= 380
    import geopandas as gpd
    from shapely.geometry import box

    units = gpd.GeoDataFrame(
        {"rps_2011_mean": [0.0, 0.5], "rps_2047_mean": [0.1, 2.0]},
        geometry=[box(0, 0, 1, 1), box(1, 0, 2, 1)],
        crs="EPSG:4326",
    )
    width, height = _pixels(choropleth_preview(units, "states"))
    assert width >= 800 and height >= 400


def test_a_region_without_finite_values_says_so():
    missing = np.full((90, 120), np.nan, np.float32)
    rasters = {f"rps_{y}": missing for y in (2011, 2047)}
    assert _no_values_note(rasters) == {"note": NO_FINITE_VALUES}
    some = {**rasters, "rps_2047": np.where(np.arange(120) < 3, 0.5, np.nan).astype(np.float32)}
    assert _no_values_note(some) == {}
    # the preview is not an empty frame: the middle of the plot carries the text (the title is
    # above it, the colour bar to its right)
    image = imread(io.BytesIO(raster_preview(missing, "all water")), format="png")[..., :3]
    height, width = image.shape[:2]
    middle = image[int(0.4 * height) : int(0.6 * height), int(0.1 * width) : int(0.7 * width)]
    assert (middle < 0.5).any()


ROOT = Path(__file__).resolve().parents[2]
BIN = Path(sys.executable).parent
QUIET_ENV = {"VIRTUAL_ENV": sys.prefix, "COLUMNS": "200"}
WARNINGS = ("will not be used", "SupersessionWarning", "does not match the virtual environment")


def test_dg_checks_and_lists_the_definitions():
    """The dg CLI works on the project as it is (three packages, [tool.dg] in pyproject)."""
    env = {**os.environ, **QUIET_ENV}
    check = subprocess.run(
        [str(BIN / "dg"), "check", "defs"], cwd=ROOT, env=env, capture_output=True, text=True
    )
    assert check.returncode == 0, check.stdout + check.stderr
    assert "All definitions loaded successfully" in check.stdout + check.stderr
    listed = subprocess.run(
        [str(BIN / "dg"), "list", "defs", "--json"],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
    )
    assert listed.returncode == 0, listed.stderr
    keys = {a["asset_key"] for a in json.loads(listed.stdout)["assets"]}
    assert len(keys) == 14 and {"region_risk_raster", "building_pmtiles"} <= keys
    assert not [w for w in WARNINGS if w in check.stderr + listed.stderr]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_ocr_dev_serves_the_ui_on_the_environments_instance_without_warnings(tmp_path):
    """``make dev`` = ``ocr dev``: dg dev on the environment's instance home, on 127.0.0.1 and
    the chosen port, with none of the warnings a user saw (dagster.yaml not used, use dg dev,
    another venv)."""
    env_file = tmp_path / "dev.env"
    env_file.write_text(
        f"OCR_STORAGE_ROOT={tmp_path / 'data'}\nOCR_DAGSTER_HOME_ROOT={tmp_path / 'homes'}\n"
    )
    port = _free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("OCR_")}
    process = subprocess.Popen(
        [str(BIN / "ocr"), "dev", "--env-file", str(env_file), "--port", str(port)],
        cwd=ROOT,
        env={**env, **QUIET_ENV},
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        start_new_session=True,
    )
    try:
        deadline, status = time.monotonic() + 120, None
        while time.monotonic() < deadline and status != 200:
            time.sleep(1)
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/server_info") as reply:
                    status = reply.status
            except OSError:
                assert process.poll() is None, process.stdout.read()
        assert status == 200
    finally:
        output = interrupt_group(process)
    assert f"http://127.0.0.1:{port}/" in output
    assert (tmp_path / "homes" / "local" / "dagster.yaml").is_file()  # the instance it used
    assert not [w for w in WARNINGS if w in output], output
