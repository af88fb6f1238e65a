"""The risk surface's PNG tiles (issue 18): colours, tile windows, what a cold tile reads, and
the ``/tiles/…`` route of ``ocr serve`` (statuses, validators, Host check), on a pyramid level
written here with known values."""

from __future__ import annotations

import http.client
import io
import shutil
from pathlib import Path

import fsspec
import numpy as np
import pytest
import zarr
from fsspec.implementations.local import LocalFileSystem
from PIL import Image

from ocr_assets.science.pyramid import (
    TILE_SIZE,
    WEB_MERCATOR_HALF,
    level_bounds,
    level_origin,
    level_resolution,
    tile_window,
)
from ocr_assets.science.scoring import RISK_COLORS, score_rgba
from ocr_jobs.serve import serve_in_thread
from ocr_jobs.serve.raster import PyramidTiles
from ocr_jobs.serve.site import VENDOR_FILES, MapSite, ServeError, map_site
from ocr_resources.storage import OcrStorage
from tests.test_deploy import BUCKET, s3_endpoint  # noqa: F401  (S3 on a local moto server)
from tests.test_map_page import _hex_rgb

ZOOM = 12
# the level's first pixel in the global grid: inside tile (x=1353, y=1577), not on its corner
ORIGIN = (1577 * TILE_SIZE + 100, 1353 * TILE_SIZE + 200)
SHAPE = (300, 250)  # rows, columns: the level spans tiles x 1353–1355, y 1577–1579
CHUNKS = (64, 64)


def _rgb(score: int) -> tuple[int, int, int]:
    return _hex_rgb(RISK_COLORS[score])


def _write_level(path: str, values: dict[str, np.ndarray], zoom: int = ZOOM) -> None:
    """One pyramid level as risk_pyramid stores it: ``/<zoom>/{rps_2011, rps_2047, x, y}``,
    x / y the pixel centres in EPSG:3857, chunks never stored when all missing (NaN)."""
    root = zarr.open_group(path, mode="w", zarr_format=3)
    level = root.create_group(str(zoom))
    res = level_resolution(zoom)
    level.create_array("x", data=(ORIGIN[1] + np.arange(SHAPE[1]) + 0.5) * res - WEB_MERCATOR_HALF)
    level.create_array("y", data=WEB_MERCATOR_HALF - (ORIGIN[0] + np.arange(SHAPE[0]) + 0.5) * res)
    for name, data in values.items():
        array = level.create_array(
            name, shape=SHAPE, chunks=CHUNKS, dtype="float32", fill_value=float("nan")
        )
        array[:] = data


def _known_values() -> dict[str, np.ndarray]:
    rps = np.full(SHAPE, np.nan, np.float32)
    rps[0:10, 0:10] = 2.0  # score 9
    rps[10:20, 0:10] = 0.005  # score 1
    rps[20:30, 0:10] = 0.0  # no risk: transparent
    rps[200:300, 180:250] = 0.15  # score 6, in other chunks and tiles
    return {"rps_2011": rps, "rps_2047": np.where(np.isnan(rps), rps, rps * 2)}


@pytest.fixture
def pyramid(tmp_path) -> str:
    path = str(tmp_path / "pyramid.zarr")
    _write_level(path, _known_values())
    return path


class CountingFileSystem(LocalFileSystem):
    """The local filesystem, counting the whole-object reads of chunk objects (``…/c/…``)."""

    cachable = False  # a fresh counter per instance

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.chunk_reads: list[str] = []

    def cat_file(self, path, start=None, end=None, **kwargs):
        if "/c/" in str(path):
            self.chunk_reads.append(str(path))
        return super().cat_file(path, start=start, end=end, **kwargs)


def _pixels(png: bytes) -> np.ndarray:
    image = Image.open(io.BytesIO(png))
    assert image.mode == "RGBA" and image.size == (TILE_SIZE, TILE_SIZE)
    return np.asarray(image)


def test_score_colours_and_transparency():
    values = np.array([[np.nan, 0.0, 0.005, 0.01, 3.0, 100.0]], np.float32)
    rgba = score_rgba(values)
    assert rgba.shape == (1, 6, 4) and rgba.dtype == np.uint8
    assert rgba[0, 0, 3] == 0 and rgba[0, 1, 3] == 0  # missing and no risk: transparent
    # 0.01 is score 2 in float32 too (the edge's own precision); 3 and 100 are score 10
    for column, score in ((2, 1), (3, 2), (4, 10), (5, 10)):
        assert tuple(rgba[0, column, :3]) == _rgb(score) and rgba[0, column, 3] == 255


def test_tile_window_and_level_geometry():
    # by hand: the level starts 100 rows and 200 columns into tile (1353, 1577)
    assert tile_window(ORIGIN, SHAPE, 1353, 1577) == (
        (slice(0, 156), slice(0, 56)),
        (slice(100, 256), slice(200, 256)),
    )
    assert tile_window(ORIGIN, SHAPE, 1354, 1578) == (
        (slice(156, 300), slice(56, 250)),
        (slice(0, 144), slice(0, 194)),
    )
    assert tile_window(ORIGIN, SHAPE, 1356, 1577) is None  # east of the level
    assert tile_window(ORIGIN, SHAPE, 1353, 1576) is None  # north of it
    res = level_resolution(ZOOM)
    first_x = (ORIGIN[1] + 0.5) * res - WEB_MERCATOR_HALF
    first_y = WEB_MERCATOR_HALF - (ORIGIN[0] + 0.5) * res
    assert level_origin(ZOOM, first_x, first_y) == ORIGIN
    west, south, east, north = level_bounds(ZOOM, ORIGIN, SHAPE)
    assert west < east and south < north and -180 < west < 180 and -85 < south < 85


def test_known_level_renders_known_colours_at_known_pixels(pyramid):
    tiles = PyramidTiles(fsspec.filesystem("file"), pyramid)
    assert tiles.zooms() == [ZOOM]
    pixels = _pixels(tiles.png("rps_2011", ZOOM, 1353, 1577))
    # level pixel (row, col) is tile pixel (row + 100, col + 200) in this tile
    assert tuple(pixels[100, 200]) == (*_rgb(9), 255)
    assert tuple(pixels[109, 209]) == (*_rgb(9), 255)
    assert tuple(pixels[110, 200]) == (*_rgb(1), 255)
    assert pixels[120, 200, 3] == 0  # RPS 0
    assert pixels[99, 200, 3] == 0 and pixels[100, 199, 3] == 0  # outside the level
    assert pixels[150, 230, 3] == 0  # NaN inside the level
    # the other year is another picture: 2 × 2.0 is still 9, 2 × 0.005 = 0.01 is score 2
    other = _pixels(tiles.png("rps_2047", ZOOM, 1353, 1577))
    assert tuple(other[110, 200]) == (*_rgb(2), 255)
    # level pixels 200–299 × 180–249 (score 6): tile (1354, 1578) from its row 44, column 124
    far = _pixels(tiles.png("rps_2011", ZOOM, 1354, 1578))
    assert tuple(far[44, 124]) == (*_rgb(6), 255) and tuple(far[143, 193]) == (*_rgb(6), 255)
    assert far[43, 124, 3] == 0 and far[144, 124, 3] == 0


def test_a_tile_without_data_or_outside_the_level_has_none(pyramid):
    tiles = PyramidTiles(fsspec.filesystem("file"), pyramid)
    assert tiles.png("rps_2011", ZOOM, 1356, 1577) is None  # outside the level
    assert tiles.png("rps_2011", ZOOM, 1355, 1577) is None  # inside it, every pixel missing
    assert tiles.png("rps_2011", ZOOM + 1, 2706, 3154) is None  # no such level


def test_a_cold_tile_reads_only_its_chunks_and_a_warm_one_none(pyramid):
    fs = CountingFileSystem()
    tiles = PyramidTiles(fs, pyramid)
    # tile (1353, 1577) covers level rows 0–155, columns 0–55: chunk rows 0–2, column 0;
    # the level's first x and y (its place in the grid) are read once
    tiles.png("rps_2011", ZOOM, 1353, 1577)
    read = sorted(p.split("pyramid.zarr/")[1] for p in fs.chunk_reads)
    expected = [f"{ZOOM}/rps_2011/c/{i}/0" for i in range(3)]
    assert read == [*expected, f"{ZOOM}/x/c/0", f"{ZOOM}/y/c/0"], read
    fs.chunk_reads.clear()
    tiles.png("rps_2011", ZOOM, 1353, 1577)
    assert fs.chunk_reads == []  # decoded chunks are kept for the next tiles
    # the tile east of it shares chunk column 0: only columns 1–3 are read
    tiles.png("rps_2011", ZOOM, 1354, 1577)
    read = sorted(p.split("pyramid.zarr/")[1] for p in fs.chunk_reads)
    assert read == [f"{ZOOM}/rps_2011/c/{i}/{j}" for i in range(3) for j in (1, 2, 3)], read


def test_a_replaced_pyramid_is_read_again(pyramid, monkeypatch):
    import ocr_jobs.serve.raster as raster

    monkeypatch.setattr(raster, "RECHECK_SECONDS", 0.0)
    tiles = PyramidTiles(fsspec.filesystem("file"), pyramid)
    before = tiles.stamp
    assert tuple(_pixels(tiles.png("rps_2011", ZOOM, 1353, 1577))[100, 200]) == (*_rgb(9), 255)
    values = _known_values()
    values["rps_2011"][0:10, 0:10] = 0.04  # score 4 now
    _write_level(pyramid, values)
    assert tiles.stamp != before
    assert tuple(_pixels(tiles.png("rps_2011", ZOOM, 1353, 1577))[100, 200]) == (*_rgb(4), 255)


def test_tiles_on_s3_read_through_the_storage_filesystem(pyramid, s3_endpoint):  # noqa: F811
    storage = OcrStorage(root=f"s3://{BUCKET}/tiles", environment="qa", endpoint_url=s3_endpoint)
    storage.fs.put(pyramid, storage.fs_path(storage.layout.pyramid), recursive=True)
    tiles = PyramidTiles(storage.fs, storage.fs_path(storage.layout.pyramid))
    local = PyramidTiles(fsspec.filesystem("file"), pyramid)
    assert tiles.png("rps_2047", ZOOM, 1353, 1577) == local.png("rps_2047", ZOOM, 1353, 1577)


def _get(server, path: str, headers: dict | None = None) -> http.client.HTTPResponse:
    connection = http.client.HTTPConnection("127.0.0.1", server.server_address[1], timeout=10)
    connection.request("GET", path, headers=headers or {})
    response = connection.getresponse()
    response.body = response.read()
    connection.close()
    return response


def test_tile_route_statuses_validators_and_host_check(pyramid):
    tiles = PyramidTiles(fsspec.filesystem("file"), pyramid)
    site = MapSite(archives={}, config={}, raster=tiles)
    with serve_in_thread(site) as server:
        ok = _get(server, f"/tiles/rps_2011/{ZOOM}/1353/1577.png")
        assert ok.status == 200 and ok.getheader("Content-Type") == "image/png"
        assert ok.body == tiles.png("rps_2011", ZOOM, 1353, 1577)
        etag = ok.getheader("ETag")
        assert etag and ok.getheader("Cache-Control") == "no-cache"
        again = _get(server, f"/tiles/rps_2011/{ZOOM}/1353/1577.png", {"If-None-Match": etag})
        assert again.status == 304 and again.body == b""
        assert _get(server, f"/tiles/rps_2011/{ZOOM}/1356/1577.png").status == 204
        # a tile is small and whole: a byte range asked of it is answered with all of it
        ranged = _get(server, f"/tiles/rps_2011/{ZOOM}/1353/1577.png", {"Range": "bytes=0-9"})
        assert ranged.status == 200 and ranged.body == ok.body
        for bad in (
            f"/tiles/rps_2012/{ZOOM}/1353/1577.png",  # no such variable
            f"/tiles/rps_2011/{ZOOM + 1}/1353/1577.png",  # no such level
            f"/tiles/rps_2011/{ZOOM}/{2**ZOOM}/0.png",  # x off the world
            f"/tiles/rps_2011/{ZOOM}/-1/0.png",
            f"/tiles/rps_2011/{ZOOM}/1353/1577.jpg",
            "/tiles/rps_2011/../../zarr.json",
            f"/tiles/rps_2011/{ZOOM}/{'9' * 5000}/1.png",
        ):
            answer = _get(server, bad)
            assert answer.status == 404, (bad, answer.status)
        foreign = _get(server, f"/tiles/rps_2011/{ZOOM}/1353/1577.png", {"Host": "evil.example"})
        assert foreign.status == 403
    # an environment without a pyramid has no tiles at all
    with serve_in_thread(MapSite(archives={}, config={})) as server:
        assert _get(server, f"/tiles/rps_2011/{ZOOM}/1353/1577.png").status == 404


def test_serve_names_a_pyramid_that_does_not_read_and_runs_without_one(tmp_path, pyramid):
    storage = OcrStorage(root=str(tmp_path / "data"), environment="local")
    web = tmp_path / "web"
    (web / "vendor").mkdir(parents=True)
    for name in VENDOR_FILES:
        (web / "vendor" / name).write_text("")
    archive = Path(storage.layout.pmtiles("regions"))
    archive.parent.mkdir(parents=True)
    archive.write_bytes(b"PMTiles")
    assert map_site(storage, web).config["raster"] is None  # optional: no pyramid, no tiles
    shutil.copytree(pyramid, storage.layout.pyramid)
    site = map_site(storage, web)
    assert site.config["raster"]["maxzoom"] == ZOOM and site.raster is not None
    Path(storage.layout.pyramid, "zarr.json").write_text("{not json")
    with pytest.raises(ServeError, match=r"pyramid at .* cannot be read"):
        map_site(storage, web)
