"""The five inputs (DESIGN §3): checked against their documented format before anything is
computed or written, then cut to a region's window. A broken input is an ``InputDataError``
naming the input, what was expected and what was found."""

from __future__ import annotations

import itertools
import json
from collections.abc import Callable, Collection, Iterator
from typing import Any, NoReturn

import dask.array
import geopandas as gpd
import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.dataset as ds
import pyarrow.parquet as pq
import xarray as xr
from pyproj import CRS
from pyproj.exceptions import CRSError

from ocr_assets.science.composite import GATHER_ROWS, NegativeWindWeights
from ocr_assets.science.fire_model import YEARS, RegionInputs
from ocr_assets.science.kernels import DIRECTIONS
from ocr_assets.science.regions import HALO_DEG, Region, RegionGrid, valid_region_ids_from_mask
from ocr_resources.layout import InputSpec
from ocr_resources.storage.vector import VectorStore

WIND_DIMS = ("latitude", "longitude", "wind_direction")  # the stored layout (DESIGN §3)


class InputDataError(ValueError):
    """An input dataset that is missing or not in the documented format (DESIGN §3).

    The message names the input (asset key and path) and says what was expected and what was
    found. Retrying cannot fix it, so steps fail at once rather than retry.
    """

    def __init__(self, asset: str, path: str, problem: str) -> None:
        super().__init__(asset, path, problem)  # all in args, so it pickles across workers
        self.asset, self.path, self.problem = asset, path, problem

    def __str__(self) -> str:
        return f"input {self.asset!r} at {self.path}: {self.problem}"


def _names(names: Collection[Any]) -> str:
    return ", ".join(repr(str(n)) for n in names) or "none"


def _crs_name(crs: CRS) -> str:
    return crs.to_string() if crs.to_epsg() else crs.name


def wind_row_blocks(wind: xr.DataArray) -> Callable[[], Iterator[np.ndarray]]:
    """The stored ``(latitude, longitude, wind_direction)`` window as a source of row blocks,
    read one chunk row at a time (a fixed number of rows when not chunked): the fire model
    keeps only the pixels it needs, so one block is ever in memory."""
    if wind.dims != WIND_DIMS:
        raise ValueError(f"wind distribution dims must be {WIND_DIMS}; got {wind.dims}")
    rows = len(wind)
    edges = np.cumsum((0, *wind.chunks[0])) if wind.chunks else [*range(0, rows, GATHER_ROWS), rows]

    def blocks() -> Iterator[np.ndarray]:
        for a, b in itertools.pairwise(edges):
            yield np.asarray(wind[a:b].values)

    return blocks


class InputReader(VectorStore):
    """Input checks and reads of :class:`OcrStorage`."""

    def check_inputs(self, assets: Collection[str] | None = None) -> None:
        """Every input (or those of the given asset keys) against its documented format.

        Metadata only (Zarr metadata and coordinates, Parquet footers), so it is cheap enough
        to run before a deploy or a region starts; values are checked where they are read.
        """
        for spec in self.layout.input_specs():
            if assets is None or spec.asset in assets:
                if spec.is_raster:
                    self.open_input(spec.path)
                else:
                    self._geoparquet_schema(spec)

    def _require_exists(self, spec: InputSpec, kind: str) -> None:
        if not self.exists(spec.path):
            raise InputDataError(
                spec.asset,
                spec.path,
                f"does not exist; expected {kind} (write the sample with `ocr sample-data` "
                "or ingest the real data to this path)",
            )

    def open_input(self, path: str, variables: tuple[str, ...] = ()) -> xr.Dataset:
        """A Zarr input opened lazily (chunked as stored) and checked against its spec
        (variables, dims, dtype, CRS), so a broken input fails here, by name, before any step
        computes or writes."""
        spec = self.layout.input_spec(path)
        self._require_exists(spec, "a Zarr store")
        try:
            ds = xr.open_zarr(
                path,
                consolidated=False,
                chunks={},
                decode_coords="all",
                storage_options=self.storage_options or None,
            )
        except (ValueError, KeyError, TypeError) as exc:  # not Zarr, or unreadable metadata
            raise InputDataError(
                spec.asset, path, f"expected a Zarr store, got one that cannot be opened ({exc})"
            ) from exc
        self._check_raster(spec, ds, variables)
        return ds

    @staticmethod
    def _check_raster(spec: InputSpec, ds: xr.Dataset, requested: tuple[str, ...]) -> None:
        """Variables, their dims and dtype, the CRS and the wind labels of one Zarr input."""

        def refuse(problem: str) -> NoReturn:
            raise InputDataError(spec.asset, spec.path, problem)

        wanted = tuple(dict.fromkeys((*spec.variables, *requested)))
        missing = [v for v in wanted if v not in ds.data_vars]
        if missing:
            refuse(
                f"expected data variable(s) {_names(missing)}, got {_names(sorted(ds.data_vars))}"
            )
        for name in wanted:
            da = ds[name]
            if da.dims != spec.dims:
                refuse(
                    f"expected variable {name!r} with dims ({', '.join(spec.dims)}), "
                    f"got ({', '.join(map(str, da.dims))})"
                )
            if not np.issubdtype(da.dtype, np.floating):
                refuse(
                    f"expected variable {name!r} as floating point (NaN = missing), got {da.dtype}"
                )
        ref = ds.variables.get("spatial_ref")
        wkt = ref.attrs.get("crs_wkt") if ref is not None else None
        if not wkt:
            refuse(
                f"expected CRS {spec.crs} in the crs_wkt of a 'spatial_ref' coordinate, got none"
            )
        try:
            crs = CRS.from_wkt(wkt)
        except CRSError:
            refuse(f"expected CRS {spec.crs}, got a crs_wkt that is not a CRS: {wkt[:80]!r}")
        if not crs.equals(CRS.from_user_input(spec.crs), ignore_axis_order=True):
            refuse(f"expected CRS {spec.crs}, got {_crs_name(crs)}")
        if "wind_direction" in spec.dims:
            labels = [str(v) for v in ds["wind_direction"].values]
            if labels != list(DIRECTIONS):
                refuse(f"expected wind_direction labels {_names(DIRECTIONS)}, got {_names(labels)}")

    def _geoparquet_schema(self, spec: InputSpec) -> pa.Schema:
        """The Parquet schema of a vector input, checked: GeoParquet metadata, CRS, columns."""

        def refuse(problem: str) -> NoReturn:
            raise InputDataError(spec.asset, spec.path, problem)

        self._require_exists(spec, "a GeoParquet file")
        try:
            with self.fs.open(spec.path, "rb") as f:
                schema = pq.read_schema(f)
        except pa.ArrowInvalid as exc:
            refuse(f"expected a Parquet file, got one that cannot be read ({exc})")
        raw = (schema.metadata or {}).get(b"geo")
        if not raw:
            refuse(
                "expected GeoParquet ('geo' metadata naming the geometry column), "
                "got a Parquet file without it"
            )
        try:
            geo = json.loads(raw)
            column = geo["columns"][geo["primary_column"]]
        except (ValueError, KeyError, TypeError) as exc:
            refuse(
                f"expected GeoParquet 'geo' metadata, got metadata that cannot be read ({exc!r})"
            )
        # GeoParquet: no "crs" key means OGC:CRS84 (lon/lat WGS 84); null means unknown
        crs_json = column.get("crs", "OGC:CRS84")
        if crs_json is None:
            refuse(f"expected CRS {spec.crs}, got an undefined CRS (crs: null)")
        crs = CRS.from_user_input(crs_json)
        if not crs.equals(CRS.from_user_input(spec.crs), ignore_axis_order=True):
            refuse(f"expected CRS {spec.crs}, got {_crs_name(crs)}")
        missing = [c for c in spec.columns if c not in schema.names]
        if missing:
            refuse(f"expected column(s) {_names(missing)}, got {_names(schema.names)}")
        geoid = schema.field("GEOID").type
        if not (pa.types.is_string(geoid) or pa.types.is_large_string(geoid)):
            refuse(f"expected column 'GEOID' as text, got {geoid}")
        return schema

    def _read_geoparquet(self, spec: InputSpec, **kwargs: Any) -> gpd.GeoDataFrame:
        """A checked vector input, read; GEOIDs of the documented length only."""
        self._geoparquet_schema(spec)
        try:
            gdf = gpd.read_parquet(spec.path, filesystem=self.fs, **kwargs)
        except pa.ArrowInvalid as exc:
            raise InputDataError(
                spec.asset, spec.path, f"expected a readable Parquet file, got an error ({exc})"
            ) from exc
        lengths = gdf["GEOID"].astype("string").str.len().fillna(-1)
        wrong = gdf["GEOID"][lengths != spec.geoid_length]
        if len(wrong):
            raise InputDataError(
                spec.asset,
                spec.path,
                f"expected {spec.geoid_length}-character GEOIDs, got {len(wrong)} of another "
                f"length, e.g. {_names(pd.unique(wrong)[:3])}",
            )
        return gdf

    def region_grid(self) -> RegionGrid:
        """The region grid of the conditional-risk input: its coordinates and chunk shape."""
        crps = self.open_input(self.layout.crps_rps, ("CRPS", "RPS"))["CRPS"]
        chunks = crps.encoding.get("shards") or crps.encoding.get("chunks")
        return RegionGrid(
            crps["latitude"].values, crps["longitude"].values, int(chunks[0]), int(chunks[1])
        )

    def valid_region_ids(self) -> list[str]:
        """Chunks of the conditional-risk input that hold any non-missing value."""
        grid = self.region_grid()
        crps = self.open_input(self.layout.crps_rps, ("CRPS",))["CRPS"].data
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
            bp_270m={y: self.open_input(self.layout.bp_270m(y), ("BP",))["BP"] for y in fields},
            wind=wind_row_blocks(self._read_wind(grid, window)) if fields else no_wind,
            crps=empty,
            rps_scott=empty,
        )
        if reference:
            scott = self.open_input(self.layout.crps_rps, ("CRPS", "RPS"))
            inputs.crps = np.asarray(scott["CRPS"].isel(inner).values)
            inputs.rps_scott = np.asarray(scott["RPS"].isel(inner).values)
            for year in YEARS:
                ref = self.open_input(self.layout.bp_30m(year), ("BP",))["BP"]
                self._check_same_grid(grid, ref, self.layout.bp_30m(year))
                inputs.bp_riley[year] = np.asarray(ref.isel(inner).values)
        return inputs

    def _read_wind(self, grid: RegionGrid, window: dict[str, slice]) -> xr.DataArray:
        """The window's wind distribution in its stored layout, lazily: the fire model reads it
        a chunk row at a time and keeps only the pixels it needs (``wind_weights``)."""
        path = self.layout.wind
        wind_da = self.open_input(path)["wind_direction_distribution"]
        self._check_same_grid(grid, wind_da, path)
        return wind_da.isel(window).transpose(*WIND_DIMS)

    def negative_wind_error(self, region_id: str, exc: NegativeWindWeights) -> InputDataError:
        """A negative fraction found while the model read the wind, as an input error."""
        return InputDataError(
            "wind_direction_distribution",
            self.layout.wind,
            f"expected fractions of hours >= 0, got {exc.count} negative value(s) "
            f"in the window of region {region_id}",
        )

    def _check_same_grid(self, grid: RegionGrid, da: xr.DataArray, path: str) -> None:
        if not (
            np.array_equal(da["latitude"].values, grid.latitude)
            and np.array_equal(da["longitude"].values, grid.longitude)
        ):
            raise InputDataError(
                self.layout.input_spec(path).asset,
                path,
                "expected the conditional-risk grid (bit-identical latitude/longitude "
                "coordinates, as all 30 m inputs share), got other coordinates",
            )

    def read_buildings(self, region: Region) -> gpd.GeoDataFrame:
        """Buildings whose bounding box meets the region (GeoParquet covering-bbox filter)."""
        spec = self.layout.input_spec(self.layout.buildings)
        return self._read_geoparquet(
            spec, bbox=(region.lon0, region.lat0, region.lon1, region.lat1)
        )

    def crs_wkt_4326(self) -> str:
        """The CRS of the conditional-risk grid, from its ``spatial_ref`` coordinate."""
        ds = self.open_input(self.layout.crps_rps, ("CRPS",))
        return str(ds["spatial_ref"].attrs["crs_wkt"])

    def read_census(self, level: str) -> gpd.GeoDataFrame:
        return self._read_geoparquet(self.layout.input_spec(self.layout.census(level)))

    def census_dataset(self, level: str) -> ds.Dataset:
        """A census level as a pyarrow dataset, checked first (GeoParquet metadata, CRS,
        columns, GEOID lengths) by a scan of its GEOID column a batch at a time."""
        spec = self.layout.input_spec(self.layout.census(level))
        self._geoparquet_schema(spec)
        wrong, examples = 0, []
        try:
            for batch in self.iter_batches(spec.path, ["GEOID"]):
                geoid = batch.column(0)
                bad = pc.fill_null(pc.not_equal(pc.utf8_length(geoid), spec.geoid_length), True)
                wrong += pc.sum(bad).as_py() or 0
                if len(examples) < 3:
                    examples += geoid.filter(bad).to_pylist()[: 3 - len(examples)]
        except pa.ArrowInvalid as exc:
            raise InputDataError(
                spec.asset, spec.path, f"expected a readable Parquet file, got an error ({exc})"
            ) from exc
        if wrong:
            raise InputDataError(
                spec.asset,
                spec.path,
                f"expected {spec.geoid_length}-character GEOIDs, got {wrong} of another "
                f"length, e.g. {_names(list(dict.fromkeys(examples)))}",
            )
        return self.parquet_dataset(spec.path)
