"""The wind read one stored chunk's part of the window at a time (``wind_tiles``) and gathered
from those tiles (``WindWeights.gather_tiles``): bit-identical to the whole-row and in-memory
gathers whatever the chunking, every stored chunk under the window decoded exactly once."""

from __future__ import annotations

import itertools
import threading
from pathlib import Path

import numpy as np
import pytest
import xarray as xr
from zarr.abc.store import ByteRequest
from zarr.core.buffer import Buffer, BufferPrototype
from zarr.storage import LocalStore, WrapperStore

from ocr_resources.storage import regions
from ocr_resources.storage.regions import WIND_DIMS, wind_tiles
from ocr_science.composite import NegativeWindWeights, WindTile, WindWeights

NAME = "wind_direction_distribution"


def _stored(shape: tuple[int, int], seed: int) -> np.ndarray:
    """A (H, W, 8) float32 distribution as stored: random fractions, some calm pixels (all
    zero) and some missing ones (a NaN)."""
    rng = np.random.default_rng(seed)
    values = rng.random((*shape, 8), dtype=np.float32)
    values[rng.random(shape) < 0.1] = 0.0
    values[rng.random(shape) < 0.05, rng.integers(0, 8)] = np.nan
    return values


def _assert_same(a: WindWeights, b: WindWeights) -> None:
    """Bit for bit: shape, pixels and weights (NaN where NaN)."""
    assert a.shape == b.shape
    np.testing.assert_array_equal(a.pixels, b.pixels)
    assert a.weights.dtype == b.weights.dtype == np.float32
    np.testing.assert_array_equal(a.weights.view(np.uint32), b.weights.view(np.uint32))


def _row_blocks(values: np.ndarray, seed: int) -> list[np.ndarray]:
    """Full-width row blocks of random heights: the gather the tiles replace."""
    cuts = np.random.default_rng(seed).integers(1, len(values), 3)
    return np.split(values, np.unique(cuts))


def _edges(window: slice, chunk: int) -> list[int]:
    """The window's boundaries along one axis: its ends and the stored chunks' inside it."""
    inner = range((window.start // chunk + 1) * chunk, window.stop, chunk)
    return [0, *(e - window.start for e in inner), window.stop - window.start]


CHUNKINGS = [
    # (array shape, stored chunks, window): windows at odd offsets across chunk boundaries
    ((23, 19), (5, 7), (slice(3, 21), slice(2, 18))),
    ((23, 19), (4, 3), (slice(1, 23), slice(0, 17))),
    ((7, 6), (1, 1), (slice(1, 6), slice(2, 5))),  # 1-pixel chunks
    ((23, 19), (23, 19), (slice(4, 20), slice(3, 11))),  # one chunk
    ((12, 9), (50, 40), (slice(0, 12), slice(0, 9))),  # a chunk larger than the array
]


@pytest.mark.parametrize(("shape", "chunks", "window"), CHUNKINGS)
def test_tiles_gather_bit_identical_to_row_blocks_and_stack(shape, chunks, window):
    values = _stored(shape, seed=sum(shape) + sum(chunks))
    where = np.random.default_rng(7).random(values[window].shape[:2]) < 0.4
    stored = xr.DataArray(values, dims=WIND_DIMS)
    stored = stored.chunk({"latitude": chunks[0], "longitude": chunks[1]})
    cut = stored.isel(latitude=window[0], longitude=window[1])
    tiles = list(wind_tiles(cut)())
    # one tile per stored chunk under the window (its part of the window), row-major
    expected = [
        (r0, c0, (r1 - r0, c1 - c0))
        for (r0, r1), (c0, c1) in itertools.product(
            itertools.pairwise(_edges(window[0], chunks[0])),
            itertools.pairwise(_edges(window[1], chunks[1])),
        )
    ]
    assert [(t.row, t.col, t.values.shape[:2]) for t in tiles] == expected
    tiled = WindWeights.gather_tiles(tiles, where)
    whole = values[window]
    _assert_same(tiled, WindWeights.gather(_row_blocks(whole, 3), where))
    _assert_same(tiled, WindWeights.from_stack(np.moveaxis(whole, -1, 0), where))
    everywhere = np.ones(where.shape, bool)
    _assert_same(
        WindWeights.gather_tiles(wind_tiles(cut)(), everywhere),
        WindWeights.from_stack(np.moveaxis(whole, -1, 0)),
    )


def test_irregular_dask_chunks_and_an_in_memory_window():
    """Chunks of several sizes (as a window's edge chunks are), and an unchunked window (full
    width row bands): the same weights."""
    values = _stored((26, 11), seed=5)
    where = np.random.default_rng(8).random((26, 11)) < 0.5
    reference = WindWeights.from_stack(np.moveaxis(values, -1, 0), where)
    stored = xr.DataArray(values, dims=WIND_DIMS)
    irregular = stored.chunk({"latitude": (3, 8, 2, 13), "longitude": (1, 6, 4)})
    for da in (irregular, stored):
        _assert_same(WindWeights.gather_tiles(wind_tiles(da)(), where), reference)


def test_negative_fractions_counted_in_every_tile():
    """Negative fractions are counted wherever they are, also outside ``where`` and in several
    tiles, as the row-block gather counts them."""
    values = np.full((9, 10, 8), 0.125, np.float32)
    values[0, 0, 3] = values[4, 7, 0] = values[8, 9, 7] = values[8, 9, 6] = -0.01
    where = np.zeros((9, 10), bool)
    where[4, 7] = True
    stored = xr.DataArray(values, dims=WIND_DIMS).chunk({"latitude": 4, "longitude": 3})
    with pytest.raises(NegativeWindWeights) as tiled:
        WindWeights.gather_tiles(wind_tiles(stored)(), where)
    with pytest.raises(NegativeWindWeights) as blocks:
        WindWeights.gather(_row_blocks(values, 1), where)
    assert tiled.value.count == blocks.value.count == 4


def test_tiles_must_cover_the_field_once_row_by_row():
    where = np.ones((4, 6), bool)
    values = np.full((4, 6, 8), 0.125, np.float32)

    def tile(r: slice, c: slice) -> WindTile:
        return WindTile(r.start, c.start, values[r, c])

    left, right = (slice(0, 4), slice(0, 3)), (slice(0, 4), slice(3, 6))
    with pytest.raises(ValueError, match=r"cover 12 of the field's 24 pixels"):
        WindWeights.gather_tiles([tile(*left)], where)
    with pytest.raises(ValueError, match=r"got \(4, 3, 8\) at \(0, 3\)"):  # right before left
        WindWeights.gather_tiles([tile(*right), tile(*left)], where)
    with pytest.raises(ValueError, match=r"got \(4, 3, 8\) at \(0, 0\)"):  # twice
        WindWeights.gather_tiles([tile(*left), tile(*left)], where)
    with pytest.raises(ValueError, match=r"got \(2, 7, 8\) at \(0, 0\)"):  # wider than the field
        WindWeights.gather_tiles([WindTile(0, 0, np.zeros((2, 7, 8), np.float32))], where)
    with pytest.raises(ValueError, match=r"got \(4, 6, 7\) at \(0, 0\)"):  # not 8 directions
        WindWeights.gather_tiles([WindTile(0, 0, values[..., :7])], where)
    # rows of one chunk row may arrive in any order of chunk rows, each row left to right
    lower, upper = (slice(2, 4), slice(0, 6)), (slice(0, 2), slice(0, 6))
    _assert_same(
        WindWeights.gather_tiles([tile(*lower), tile(*upper)], where),
        WindWeights.from_stack(np.moveaxis(values, -1, 0)),
    )


def test_a_gather_that_stops_early_frees_the_read_slot():
    """The storage reads one chunk at a time per process, holding its read slot while a tile
    is gathered: a gather that fails on a tile frees it at once, even while its traceback
    (which keeps the tile source alive) is kept, so the region's other field goes on."""
    stored = xr.DataArray(_stored((10, 10), seed=1), dims=WIND_DIMS)
    stored = stored.chunk({"latitude": 5, "longitude": 5})
    with pytest.raises(ValueError, match="must cover a") as raised:
        WindWeights.gather_tiles(wind_tiles(stored)(), np.ones((10, 4), bool))
    acquired: list[bool] = []

    def other_field() -> None:
        acquired.append(regions._WIND_READ.acquire(timeout=5))
        if acquired[-1]:
            regions._WIND_READ.release()

    thread = threading.Thread(target=other_field)
    thread.start()
    thread.join()
    assert acquired == [True] and raised.value is not None


class CountingStore(WrapperStore[LocalStore]):
    """A store that records every chunk object read and how many reads overlap."""

    def __init__(self, store: LocalStore) -> None:
        super().__init__(store)
        self.reads: list[str] = []
        self.in_flight = self.most_in_flight = 0
        self._lock = threading.Lock()

    async def get(
        self, key: str, prototype: BufferPrototype, byte_range: ByteRequest | None = None
    ) -> Buffer | None:
        chunk = f"{NAME}/c/" in key
        if chunk:
            with self._lock:
                self.reads.append(key)
                self.in_flight += 1
                self.most_in_flight = max(self.most_in_flight, self.in_flight)
        try:
            return await self._store.get(key, prototype, byte_range)
        finally:
            if chunk:
                with self._lock:
                    self.in_flight -= 1


def test_on_disk_store_each_chunk_under_the_window_read_once(tmp_path: Path):
    """A Zarr v3 store with odd chunks, opened lazily as stored: the tiles are the window's
    parts of its stored chunks, each chunk under the window is read exactly once (none
    other), one at a time, and the weights equal the in-memory gather."""
    shape, chunks = (31, 26), (7, 9)
    window = (slice(5, 30), slice(4, 23))  # into the first and last chunk on every side
    values = _stored(shape, seed=11)
    path = tmp_path / "wind.zarr"
    ds = xr.DataArray(values, dims=WIND_DIMS, name=NAME).to_dataset()
    encoding = {NAME: {"chunks": (*chunks, 8)}}
    ds.to_zarr(path, zarr_format=3, consolidated=False, encoding=encoding)
    store = CountingStore(LocalStore(path, read_only=True))
    opened = xr.open_dataset(store, engine="zarr", chunks={}, consolidated=False)[NAME]
    assert opened.chunks is not None and opened.chunks[:2] == (
        (7, 7, 7, 7, 3),
        (9, 9, 8),
    )
    cut = opened.isel(latitude=window[0], longitude=window[1]).transpose(*WIND_DIMS)
    where = np.random.default_rng(2).random(cut.shape[:2]) < 0.3
    store.reads.clear()
    tiled = WindWeights.gather_tiles(wind_tiles(cut)(), where)
    under = [
        f"{NAME}/c/{i}/{j}/0"
        for i, j in itertools.product(
            range(window[0].start // chunks[0], (window[0].stop - 1) // chunks[0] + 1),
            range(window[1].start // chunks[1], (window[1].stop - 1) // chunks[1] + 1),
        )
    ]
    assert len(under) == 5 * 3
    assert store.reads == under  # each once, in row-major chunk order
    assert store.most_in_flight == 1
    _assert_same(tiled, WindWeights.from_stack(np.moveaxis(values[window], -1, 0), where))
