"""A region's inputs: the region grid (the conditional-risk input's chunks) and every input cut
to one region's window, as the fire model takes them (docs/design.md §4–5)."""

from __future__ import annotations

import itertools
import threading
from collections.abc import Iterator

import dask.array
import geopandas as gpd
import numpy as np
import xarray as xr

from ocr_resources.layout import StorageLayout
from ocr_resources.storage.inputs import InputDataError, InputReader
from ocr_science.composite import GATHER_ROWS, NegativeWindWeights, WindTile
from ocr_science.fire_model import YEARS, RegionInputs, WindTiles
from ocr_science.kernels import DIRECTIONS
from ocr_science.regions import HALO_DEG, Region, RegionGrid, valid_region_ids_from_mask

WIND_DIMS = ("latitude", "longitude", "wind_direction")  # the stored layout (docs/design.md §3)


# One stored wind chunk read and gathered at a time in this process. A region's fields run side
# by side as threads of one process (the local backend) and read the same chunks; reading a
# real one (6000 × 4500 × 8) holds ~2 GB at once (its compressed bytes, the 864 MB it decodes
# to, the window's part copied out of it), so two fields reading at once took a full-size
# region to 4.2 GB (bench.region_path --chunking real). Reentrant: a thread may read a window
# inside another.
_WIND_READ = threading.RLock()


def wind_tiles(wind: xr.DataArray) -> WindTiles:
    """The stored ``(latitude, longitude, wind_direction)`` window as a source of tiles: the
    window's part of one stored chunk (one dask block, chunked as stored) per read, in
    row-major chunk order. Zarr decodes the chunks of one selection concurrently, so a read
    of more than one chunk's part would hold several; the fire model keeps the pixels it needs
    from each tile before asking for the next, so memory does not grow with the window, and
    the process reads one tile at a time (``_WIND_READ``, held until the next tile is asked
    for or the source is closed). Read in the calling thread (a region's field already runs
    on a worker). An in-memory (unchunked) window comes as full-width bands of
    ``GATHER_ROWS`` rows, with no lock (nothing is decoded)."""
    if wind.dims != WIND_DIMS:
        raise ValueError(f"wind distribution dims must be {WIND_DIMS}; got {wind.dims}")
    height, width = wind.shape[:2]
    data = wind.data if wind.chunks else None
    if isinstance(data, dask.array.Array):
        rows, cols = (np.cumsum((0, *c)).tolist() for c in data.chunks[:2])
    else:
        rows, cols = [*range(0, height, GATHER_ROWS), height], [0, width]

    def tiles() -> Iterator[WindTile]:
        for (r0, r1), (c0, c1) in itertools.product(
            itertools.pairwise(rows), itertools.pairwise(cols)
        ):
            if isinstance(data, dask.array.Array):
                with _WIND_READ:  # until the next tile is asked for: while this one is gathered
                    values = data[r0:r1, c0:c1].compute(scheduler="sync")
                    yield WindTile(r0, c0, np.asarray(values))
                    del values
            else:
                yield WindTile(r0, c0, np.asarray(wind[r0:r1, c0:c1].values))

    return tiles


class RegionReader:
    """The region grid and one region's inputs, each input checked as it is opened."""

    def __init__(self, inputs: InputReader, layout: StorageLayout) -> None:
        self._inputs, self._layout = inputs, layout

    def region_grid(self) -> RegionGrid:
        """The region grid of the conditional-risk input: its coordinates and chunk shape."""
        crps = self._inputs.open_input(self._layout.crps_rps, ("CRPS", "RPS"))["CRPS"]
        chunks = crps.encoding.get("shards") or crps.encoding.get("chunks")
        return RegionGrid(
            crps["latitude"].values, crps["longitude"].values, int(chunks[0]), int(chunks[1])
        )

    def valid_region_ids(self) -> list[str]:
        """Chunks of the conditional-risk input that hold any non-missing value."""
        grid = self.region_grid()
        crps = self._inputs.open_input(self._layout.crps_rps, ("CRPS",))["CRPS"].data
        crps = crps.rechunk((grid.chunk_lat, grid.chunk_lon))
        has_data = dask.array.map_blocks(
            lambda b: np.isfinite(b).any(keepdims=True), crps, dtype=bool, chunks=(1, 1)
        ).compute()
        return valid_region_ids_from_mask(has_data)

    def read_region_inputs(
        self,
        grid: RegionGrid,
        region: Region,
        fields: tuple[int, ...] = YEARS,
        reference: bool = True,
        halo_deg: float = HALO_DEG,
    ) -> RegionInputs:
        """Cut the inputs to the region's window, the region widened by ``halo_deg`` (what
        the BP ``fields`` need: their 270 m rasters, lazily, and the wind distribution) and to
        the region (``reference`` values: CRPS, RPS and the 30 m BP copies)."""
        lat_w, lon_w = grid.window(region, halo_deg)
        window = {"latitude": lat_w, "longitude": lon_w}
        inner = {"latitude": region.lat_slice, "longitude": region.lon_slice}
        empty = np.empty((0, 0), np.float32)
        no_wind = np.empty((len(DIRECTIONS), 0, 0), np.float32)
        inputs = RegionInputs(
            latitude=grid.latitude[lat_w],
            longitude=grid.longitude[lon_w],
            rows=slice(region.lat_slice.start - lat_w.start, region.lat_slice.stop - lat_w.start),
            cols=slice(region.lon_slice.start - lon_w.start, region.lon_slice.stop - lon_w.start),
            bounds=region.bounds(halo_deg),
            bp_270m={
                y: self._inputs.open_input(self._layout.bp_270m(y), ("BP",))["BP"] for y in fields
            },
            wind=wind_tiles(self._read_wind(grid, window)) if fields else no_wind,
            crps=empty,
            rps_scott=empty,
        )
        if reference:
            scott = self._inputs.open_input(self._layout.crps_rps, ("CRPS", "RPS"))
            inputs.crps = np.asarray(scott["CRPS"].isel(inner).values)
            inputs.rps_scott = np.asarray(scott["RPS"].isel(inner).values)
            for year in YEARS:
                ref = self._inputs.open_input(self._layout.bp_30m(year), ("BP",))["BP"]
                self._check_same_grid(grid, ref, self._layout.bp_30m(year))
                inputs.bp_riley[year] = np.asarray(ref.isel(inner).values)
        return inputs

    def require_region_chunks(self, region: Region) -> None:
        """Every 30 m input (conditional risk, burn probability, wind) has each stored chunk
        under a region of the catalog: the catalog's regions are where the conditional-risk
        input has data, so a chunk missing there is lost, not empty (read, it would be NaN
        and the region written without its buildings). The 270 m burn probability is read
        over a wider window, where chunks may be empty, and is not required here."""
        window = {"latitude": region.lat_slice, "longitude": region.lon_slice}
        where = f"region {region.region_id}, a valid region of the catalog"
        required = [
            (self._layout.crps_rps, ("CRPS", "RPS")),
            *((self._layout.bp_30m(year), ("BP",)) for year in YEARS),
            (self._layout.wind, ("wind_direction_distribution",)),
        ]
        for path, names in required:
            self._inputs.require_chunks(path, names, window, where)

    def check_buildings_outside(self, region_ids: list[str]) -> int:
        """The buildings input's row groups that no region of ``region_ids`` reads, checked
        once (:meth:`InputReader.check_row_groups_outside`); returns their rows: buildings
        outside every region."""
        grid = self.region_grid()
        # a catalog id beyond this grid (a catalog of a larger store) reads nothing here
        ids = set(region_ids) & set(grid.all_region_ids())
        windows = np.array([grid.region(r).bounds() for r in sorted(ids)]).reshape(-1, 4)
        spec = self._layout.input_spec(self._layout.buildings)
        return self._inputs.check_row_groups_outside(spec, windows)

    def _read_wind(self, grid: RegionGrid, window: dict[str, slice]) -> xr.DataArray:
        """The window's wind distribution in its stored layout, lazily: the fire model reads it
        a chunk row at a time and keeps only the pixels it needs (``wind_weights``)."""
        path = self._layout.wind
        wind_da = self._inputs.open_input(path)["wind_direction_distribution"]
        self._check_same_grid(grid, wind_da, path)
        return wind_da.isel(window).transpose(*WIND_DIMS)

    def negative_wind_error(self, region_id: str, exc: NegativeWindWeights) -> InputDataError:
        """A negative fraction found while the model read the wind, as an input error."""
        return InputDataError(
            "wind_direction_distribution",
            self._layout.wind,
            f"expected fractions of hours >= 0, got {exc.count} negative value(s) "
            f"in the window of region {region_id}",
        )

    def _check_same_grid(self, grid: RegionGrid, da: xr.DataArray, path: str) -> None:
        if not (
            np.array_equal(da["latitude"].values, grid.latitude)
            and np.array_equal(da["longitude"].values, grid.longitude)
        ):
            raise InputDataError(
                self._layout.input_spec(path).asset,
                path,
                "expected the conditional-risk grid (bit-identical latitude/longitude "
                "coordinates, as all 30 m inputs share), got other coordinates",
            )

    def read_buildings(self, region: Region) -> gpd.GeoDataFrame:
        """Buildings whose bounding box meets the region, their covering bbox checked against
        their geometry in every row group read (a corrupt bbox is refused, never trusted)."""
        spec = self._layout.input_spec(self._layout.buildings)
        return self._inputs.read_geoparquet_within(
            spec, (region.lon0, region.lat0, region.lon1, region.lat1)
        )
