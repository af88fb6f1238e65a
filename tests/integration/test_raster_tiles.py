"""The risk surface's PNG tiles (issues 18, 27): a Web Mercator tile sampled from the published
pyramid's EPSG:4326 levels (against an independent sampling), colours, what a cold tile reads,
and the ``/tiles/…`` route of ``ocr serve`` (statuses, validators, Host check), on a pyramid
written here in topozarr's layout with known values."""

from __future__ import annotations

import http.client
import io
import shutil
from pathlib import Path

import fsspec
import numpy as np
import pytest
import xarray as xr
import zarr
from fsspec.implementations.local import LocalFileSystem
from PIL import Image
from pyproj import Transformer

from ocr_assets.pyramid import PYRAMID_CRS
from ocr_jobs.serve import serve_in_thread
from ocr_jobs.serve.raster import PyramidTiles
from ocr_jobs.serve.site import VENDOR_FILES, MapSite, ServeError, map_site
from ocr_resources.storage import OcrStorage
from ocr_science.pyramid import TILE_SIZE
from ocr_science.scoring import RISK_COLORS, score_rgba
from tests.e2e.test_deploy import BUCKET, s3_endpoint  # noqa: F401  (S3 on a local moto server)
from tests.e2e.test_map_page import _hex_rgb

STEP = 1 / 3600  # level 0's pixel: 1 arc-second, as the raster store's
WEST, SOUTH = -120.25, 38.0
SHAPE = (600, 520)  # level 0, rows (south first) × columns
LEVELS = 4
ZOOM = 13  # 360° / 256 / 2^13 = 0.618″ < 1″ ≤ 1.236″ at z12: the first zoom drawn from level 0
# tile z13 (1361, 3157) covers 120.1904–120.1465°W, 38.0654–38.1000°N: level 0's rows
# 235–360 and columns 214–372
TILE = (1361, 3157)
TILE_URL = f"/tiles/rps_2011/{ZOOM}/{TILE[0]}/{TILE[1]}.png"


def _rgb(score: int) -> tuple[int, int, int]:
    return _hex_rgb(RISK_COLORS[score])


def _known_values() -> dict[str, np.ndarray]:
    """Level 0: NaN outside a few blocks of known scores (row 0 is the south)."""
    rps = np.full(SHAPE, np.nan, np.float32)
    rps[100:400, 200:300] = 2.0  # score 9
    rps[100:400, 300:350] = 0.005  # score 1
    rps[100:400, 350:380] = 0.0  # no risk: transparent
    rps[500:600, 0:100] = 0.15  # score 6
    return {"rps_2011": rps, "rps_2047": np.where(np.isnan(rps), rps, rps * 2)}


def _write_pyramid(path: str, values: dict[str, np.ndarray]) -> None:
    """The pyramid as risk_pyramid writes it (topozarr's layout, consolidated Zarr v3)."""
    import xproj  # noqa: F401
    from topozarr.coarsen import create_pyramid

    ds = xr.Dataset(
        {name: (("latitude", "longitude"), data) for name, data in values.items()},
        coords={
            "latitude": SOUTH + (np.arange(SHAPE[0]) + 0.5) * STEP,
            "longitude": WEST + (np.arange(SHAPE[1]) + 0.5) * STEP,
        },
    ).proj.assign_crs(spatial_ref=PYRAMID_CRS)
    pyramid = create_pyramid(
        ds.chunk(256), LEVELS, x_dim="longitude", y_dim="latitude", target_shard_bytes=None
    )
    pyramid.dt.to_zarr(path, mode="w", zarr_format=3, encoding=pyramid.encoding)
    zarr.consolidate_metadata(path)


@pytest.fixture
def pyramid(tmp_path) -> str:
    path = str(tmp_path / "pyramid.zarr")
    _write_pyramid(path, _known_values())
    return path


def _sampled(path: str, variable: str, z: int, x: int, y: int) -> np.ndarray:
    """The tile computed independently: pixel centres by pyproj's inverse Web Mercator, the
    level by its pixel width in arc-seconds, the level pixel by arithmetic on its edges."""
    tree = xr.open_datatree(path, engine="zarr")
    tile_width = 360 / 256 / 2**z
    level = max((k for k in range(LEVELS) if STEP * 2**k <= tile_width * (1 + 1e-9)), default=0)
    data = tree[str(level)][variable].values
    half, size = 20037508.342789244, 2 * 20037508.342789244 / (TILE_SIZE * 2**z)
    mx = -half + (x * TILE_SIZE + np.arange(TILE_SIZE) + 0.5) * size
    my = half - (y * TILE_SIZE + np.arange(TILE_SIZE) + 0.5) * size
    to_lonlat = Transformer.from_crs("EPSG:3857", "EPSG:4326", always_xy=True)
    lon, _ = to_lonlat.transform(mx, np.zeros_like(mx))
    _, lat = to_lonlat.transform(np.zeros_like(my), my)
    width = STEP * 2**level
    col = np.floor((lon - WEST) / width).astype(int)
    row = np.floor((lat - SOUTH) / width).astype(int)
    out = np.full((TILE_SIZE, TILE_SIZE), np.nan, np.float32)
    r_ok = (row >= 0) & (row < data.shape[0])
    c_ok = (col >= 0) & (col < data.shape[1])
    out[np.ix_(r_ok, c_ok)] = data[np.ix_(row[r_ok], col[c_ok])]
    return out


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


def test_a_tile_samples_the_level_pixel_under_each_pixel_centre(pyramid):
    tiles = PyramidTiles(fsspec.filesystem("file"), pyramid)
    assert tiles.zooms() == list(range(ZOOM + 1))
    west, south, east, north = tiles.bounds()
    assert (west, south) == pytest.approx((WEST, SOUTH), abs=1e-12)
    assert (east, north) == pytest.approx(
        (WEST + SHAPE[1] * STEP, SOUTH + SHAPE[0] * STEP), abs=1e-12
    )
    # z13 and z12 from level 0, z11 from level 1 (2″ ≤ 2.47″), z10 from level 2, z8 from 3
    for z, x, y in [
        (13, *TILE),
        (13, 1362, 3157),
        (12, 680, 1578),
        (11, 340, 789),
        (10, 170, 394),
        (8, 42, 98),
    ]:
        for variable in ("rps_2011", "rps_2047"):
            got = tiles.values(variable, z, x, y)
            want = _sampled(pyramid, variable, z, x, y)
            assert got is not None, (z, x, y)
            np.testing.assert_array_equal(got, want)


def test_known_level_renders_known_colours_at_known_pixels(pyramid):
    tiles = PyramidTiles(fsspec.filesystem("file"), pyramid)
    pixels = _pixels(tiles.png("rps_2011", ZOOM, *TILE))
    # by hand: the tile spans 120.19043–120.14648°W (0.0439453° over 256 px); level 0 column
    # 250 (score 9) has its centre at 120.180417°W, tile column 58; column 320 (score 1) at
    # 120.160972°W, tile column 171; column 365 (RPS 0) at 120.148472°W, tile column 244.
    # Tile row 128 is at 38.0827°N, level row 297 (inside rows 100–399 of the blocks)
    assert tuple(pixels[128, 58]) == (*_rgb(9), 255)
    assert tuple(pixels[128, 171]) == (*_rgb(1), 255)
    assert pixels[128, 244, 3] == 0  # RPS 0
    # the other year is another picture: 2 × 2.0 = 4 is score 10, 2 × 0.005 = 0.01 score 2
    other = _pixels(tiles.png("rps_2047", ZOOM, *TILE))
    assert tuple(other[128, 58]) == (*_rgb(10), 255) and tuple(other[128, 171]) == (*_rgb(2), 255)
    # east of it: RPS 0 (level columns 372–379), NaN (380–519), then outside level 0
    east = _pixels(tiles.png("rps_2011", ZOOM, TILE[0] + 1, TILE[1]))
    assert (east[:, :, 3] == 0).all()
    np.testing.assert_array_equal(
        _pixels(tiles.png("rps_2011", ZOOM, *TILE)),
        score_rgba(_sampled(pyramid, "rps_2011", ZOOM, *TILE)),
    )


def test_a_tile_without_data_or_outside_the_level_has_none(pyramid):
    tiles = PyramidTiles(fsspec.filesystem("file"), pyramid)
    assert tiles.png("rps_2011", ZOOM, TILE[0] + 2, TILE[1]) is None  # east of the level
    assert tiles.png("rps_2011", ZOOM, TILE[0], TILE[1] - 10) is None  # north of it
    # inside it (level rows ~485–600, columns ~372–530), every pixel missing
    assert tiles.png("rps_2011", ZOOM, TILE[0] + 1, TILE[1] - 2) is None


def test_a_cold_tile_reads_only_its_chunks_and_a_warm_one_none(pyramid):
    fs = CountingFileSystem()
    tiles = PyramidTiles(fs, pyramid)
    tiles.zooms()  # opening reads every level's coordinates (small, 1-D), once
    coordinates = sorted(p.split("pyramid.zarr/")[1] for p in fs.chunk_reads)
    assert coordinates == sorted(
        f"{k}/{name}/c/0" for k in range(LEVELS) for name in ("latitude", "longitude")
    )
    fs.chunk_reads.clear()
    # level 0 is chunked 300 × 260 (topozarr: 600 and 520 px in two chunks each); the tile
    # samples level rows 235–360 and columns 214–372: all four chunks
    tiles.png("rps_2011", ZOOM, *TILE)
    read = sorted(p.split("pyramid.zarr/")[1] for p in fs.chunk_reads)
    assert read == [f"0/rps_2011/c/{i}/{j}" for i in (0, 1) for j in (0, 1)], read
    fs.chunk_reads.clear()
    tiles.png("rps_2011", ZOOM, *TILE)
    tiles.png("rps_2011", ZOOM, TILE[0] + 1, TILE[1])  # its neighbour: the same chunks
    assert fs.chunk_reads == []  # decoded chunks are kept for the next tiles
    # a z11 tile is drawn from level 1 (300 × 260, one chunk)
    tiles.png("rps_2011", 11, 340, 789)
    assert [p.split("pyramid.zarr/")[1] for p in fs.chunk_reads] == ["1/rps_2011/c/0/0"]


def test_a_replaced_pyramid_is_read_again(pyramid, monkeypatch):
    import ocr_jobs.serve.raster as raster

    monkeypatch.setattr(raster, "RECHECK_SECONDS", 0.0)
    tiles = PyramidTiles(fsspec.filesystem("file"), pyramid)
    before = tiles.stamp
    assert tuple(_pixels(tiles.png("rps_2011", ZOOM, *TILE))[128, 58]) == (*_rgb(9), 255)
    values = _known_values()
    values["rps_2011"][100:400, 200:300] = 0.04  # score 4 now
    _write_pyramid(pyramid, values)
    assert tiles.stamp != before
    assert tuple(_pixels(tiles.png("rps_2011", ZOOM, *TILE))[128, 58]) == (*_rgb(4), 255)


def test_tiles_on_s3_read_through_the_storage_filesystem(pyramid, s3_endpoint):  # noqa: F811
    storage = OcrStorage(root=f"s3://{BUCKET}/tiles", environment="qa", endpoint_url=s3_endpoint)
    storage.files.fs.put(pyramid, storage.files.fs_path(storage.layout.pyramid), recursive=True)
    tiles = PyramidTiles(storage.files.fs, storage.files.fs_path(storage.layout.pyramid))
    local = PyramidTiles(fsspec.filesystem("file"), pyramid)
    assert tiles.png("rps_2047", ZOOM, *TILE) == local.png("rps_2047", ZOOM, *TILE)


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
        ok = _get(server, TILE_URL)
        assert ok.status == 200 and ok.getheader("Content-Type") == "image/png"
        assert ok.body == tiles.png("rps_2011", ZOOM, *TILE)
        etag = ok.getheader("ETag")
        assert etag and ok.getheader("Cache-Control") == "no-cache"
        again = _get(server, TILE_URL, {"If-None-Match": etag})
        assert again.status == 304 and again.body == b""
        assert _get(server, f"/tiles/rps_2011/{ZOOM}/1363/3157.png").status == 204
        # a tile is small and whole: a byte range asked of it is answered with all of it
        ranged = _get(server, TILE_URL, {"Range": "bytes=0-9"})
        assert ranged.status == 200 and ranged.body == ok.body
        for bad in (
            f"/tiles/rps_2012/{ZOOM}/1361/3157.png",  # no such variable
            f"/tiles/rps_2011/{ZOOM + 1}/2722/6314.png",  # past the finest level's zoom
            f"/tiles/rps_2011/{ZOOM}/{2**ZOOM}/0.png",  # x off the world
            f"/tiles/rps_2011/{ZOOM}/-1/0.png",
            f"/tiles/rps_2011/{ZOOM}/1361/3157.jpg",
            "/tiles/rps_2011/../../zarr.json",
            f"/tiles/rps_2011/{ZOOM}/{'9' * 5000}/1.png",
        ):
            answer = _get(server, bad)
            assert answer.status == 404, (bad, answer.status)
        foreign = _get(server, TILE_URL, {"Host": "evil.example"})
        assert foreign.status == 403
    # an environment without a pyramid has no tiles at all
    with serve_in_thread(MapSite(archives={}, config={})) as server:
        assert _get(server, TILE_URL).status == 404


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
