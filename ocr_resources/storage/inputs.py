"""The five inputs (DESIGN §3): checked against their documented format before anything is
computed or written. A broken input is an ``InputDataError``
naming the input, what was expected and what was found."""

from __future__ import annotations

import json
from collections.abc import Collection
from typing import Any, NoReturn

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

from ocr_assets.science.kernels import DIRECTIONS
from ocr_resources.layout import InputSpec
from ocr_resources.storage.vector import VectorStore


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
