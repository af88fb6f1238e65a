"""What a user sees in the Dagster UI: kinds on every asset, a description on every check, the
three tile assets in one group, readable previews, and regions without values saying so."""

import io

import dagster as dg
import numpy as np
from matplotlib.image import imread

from ocr_assets.constants import PHASE03_GROUP
from ocr_assets.previews import NO_FINITE_VALUES, choropleth_preview, raster_preview
from ocr_assets.regions import _no_values_note
from ocr_assets.tiles import TILESETS
from ocr_jobs.definitions import build_definitions
from ocr_resources.settings import OcrSettings


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
        {"mean_rps_2011": [0.0, 0.5], "mean_rps_2047": [0.1, 2.0]},
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
