"""The five inputs (docs/design.md §3): checked against their documented format before anything is
computed or written. A broken input is an ``InputDataError``
naming the input, what was expected and what was found."""

from __future__ import annotations

import functools
import json
import uuid
from collections.abc import Callable, Collection, Iterator
from dataclasses import dataclass
from typing import Any, NoReturn, ParamSpec, TypeVar

import dask.array
import geopandas as gpd
import icechunk
import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.dataset as ds
import pyarrow.parquet as pq
import shapely
import xarray as xr
from pyproj import CRS
from pyproj.exceptions import CRSError

from ocr_resources.layout import BUILDING_COLUMNS, LATLON, InputSpec, StorageLayout
from ocr_resources.storage.files import FileStore
from ocr_resources.storage.geoparquet import BBOX_FIELDS, geoparquet_crs
from ocr_resources.storage.raster_store import StoredArray
from ocr_resources.storage.vector import Extent, VectorStore, covering_extents, meets
from ocr_science.kernels import DIRECTIONS

# how many rows of the row groups a windowed read went through have no geometry (null or
# empty: no location, so in no window), in the read's ``attrs``: counted, never dropped unsaid
ROWS_WITHOUT_GEOMETRY = "rows_without_geometry"


class InputDataError(ValueError):
    """An input dataset that is missing or not in the documented format (docs/design.md §3).

    The message names the input (asset key and path) and says what was expected and what was
    found. Retrying cannot fix it, so steps fail at once rather than retry.
    """

    def __init__(self, asset: str, path: str, problem: str) -> None:
        super().__init__(asset, path, problem)  # all in args, so it pickles across workers
        self.asset, self.path, self.problem = asset, path, problem

    def __str__(self) -> str:
        return f"input {self.asset!r} at {self.path}: {self.problem}"


P = ParamSpec("P")
T = TypeVar("T")


def without_input_traceback(fn: Callable[P, T]) -> Callable[P, T]:
    """``fn``, its ``InputDataError`` raised without the frames below ``fn``.

    An input error is a refusal of the data, not a fault of the code: its message names the
    input and what is wrong. The library frames under it (zarr, dask, xarray: ~40 lines) say
    nothing more and would bury that message, once per log line that prints the error."""

    @functools.wraps(fn)
    def wrapper(*args: P.args, **kwargs: P.kwargs) -> T:
        try:
            return fn(*args, **kwargs)
        except InputDataError as exc:
            raise exc.with_traceback(None) from None

    return wrapper


def _names(names: Collection[Any]) -> str:
    return ", ".join(repr(str(n)) for n in names) or "none"


def _crs_name(crs: CRS) -> str:
    return crs.to_string() if crs.to_epsg() else crs.name


def _window(window: dict[str, slice]) -> str:
    return ", ".join(f"{d} {s.start}:{s.stop}" for d, s in window.items())


def _box(values: np.ndarray) -> str:
    return "[" + ", ".join(f"{v:.9g}" for v in values) + "]"


def _covers(box: np.ndarray, bounds: np.ndarray, eps: float) -> np.ndarray:
    """Which boxes contain the bounds in the same row (NaN in a box never does).

    GeoParquet 1.1 lets a covering bbox be FLOAT: a writer that rounds to nearest instead of
    outward leaves it inside the geometry by up to half a float step, so one step of the
    column's type, relative to the coordinate, is tolerated (~1.5 m at 120° in float32; a
    DOUBLE bbox must hold the bounds to ~1e-14°)."""
    slack = eps * np.abs(bounds)
    low = box[:, :2] <= bounds[:, :2] + slack[:, :2]
    high = box[:, 2:] >= bounds[:, 2:] - slack[:, 2:]
    return low.all(axis=1) & high.all(axis=1)


def _bbox_values(bbox: pa.StructArray) -> np.ndarray:
    """A covering bbox column as float64 ``(xmin, ymin, xmax, ymax)`` rows (a missing box is
    NaN)."""
    fields = dict(zip([f.name for f in bbox.type], bbox.flatten(), strict=True))
    return np.column_stack(
        [fields[n].to_numpy(zero_copy_only=False).astype(np.float64) for n in BBOX_FIELDS]
    )


def _bbox_eps(schema: pa.Schema, bbox: str) -> float:
    """The machine epsilon of a covering bbox column's stored type (FLOAT or DOUBLE)."""
    return float(np.finfo(schema.field(bbox).type.field("xmin").type.to_pandas_dtype()).eps)


def stored_columns(spec: InputSpec, names: Collection[str]) -> dict[str, str]:
    """The stored name of each column the pipeline reads (its name → the file's), the first
    of its accepted names that the file has: the published buildings' ``block_geoid``,
    ``state_abbrev`` and ``county_name`` are read as ``GEOID``, ``state`` and ``county``."""
    found = {}
    for column in spec.columns:
        for candidate in BUILDING_COLUMNS.get(column, (column,)):
            if candidate in names:
                found[column] = candidate
                break
    return found


def covering_column(schema: pa.Schema, geo: dict[str, Any]) -> str | None:
    """The covering bbox column: GeoParquet 1.1's covering metadata, else a ``bbox`` struct
    of xmin/ymin/xmax/ymax as the published buildings carry (DuckDB writes no covering
    metadata), so row groups are still skipped by their statistics; None: no bbox."""
    covering = geo["columns"][geo["primary_column"]].get("covering", {}).get("bbox", {})
    if covering.get("xmin"):
        return covering["xmin"][0]
    if "bbox" in schema.names:
        kind = schema.field("bbox").type
        if pa.types.is_struct(kind) and {f.name for f in kind} >= set(BBOX_FIELDS):
            return "bbox"
    return None


def _wrong_geoids(spec: InputSpec, geoids: pa.Array) -> tuple[int, list[str | None]]:
    """How many GEOIDs are not of the input's documented form (a missing one counts), and
    up to three of them, first seen first."""
    bad = pc.fill_null(
        pc.invert(pc.match_substring_regex(geoids, f"^(?:{spec.geoid_pattern})$")), True
    )
    return pc.sum(bad).as_py() or 0, list(dict.fromkeys(geoids.filter(bad).to_pylist()))[:3]


def _refuse_geoids(spec: InputSpec, wrong: int, examples: list[str | None]) -> None:
    if wrong:
        raise InputDataError(
            spec.asset,
            spec.path,
            f"expected GEOIDs of the form {spec.geoid_pattern}, got {wrong} of another form, "
            f"e.g. {_names(list(dict.fromkeys(examples))[:3])}",
        )


class CheckedChunks:
    """A lazily opened input variable, read for dask a block (a stored chunk) at a time.

    A block that fails to read is looked into: when a stored object under it is fetched whole
    and still does not decode, the input is corrupt — an ``InputDataError`` naming the store
    and the chunk key, permanent, so the step fails at once instead of retrying. Anything
    else (a network error, a timeout, an object that decodes when fetched again) is raised
    as it came and stays retryable."""

    def __init__(self, variable: xr.Variable, spec: InputSpec, stored: StoredArray) -> None:
        self._variable, self._spec, self._stored = variable, spec, stored
        self.shape, self.dtype, self.ndim = variable.shape, variable.dtype, variable.ndim

    def chunked(self) -> xr.Variable:
        """The variable as a dask array chunked as stored (what ``open_zarr(chunks={})``
        gives), every block read through ``__getitem__``; attributes and encoding kept."""
        preferred = self._variable.encoding["preferred_chunks"]
        data = dask.array.from_array(
            self,
            chunks=tuple(preferred[d] for d in self._variable.dims),
            name=f"{self._spec.asset}-{self._stored.name}-{uuid.uuid4().hex}",
            fancy=False,
            meta=np.empty((0,) * self.ndim, self.dtype),
        )
        return self._variable.copy(deep=False, data=data)

    def __getitem__(self, key: tuple[slice | int, ...]) -> np.ndarray:
        try:
            values = np.asarray(self._variable[key].values)
        except Exception:
            bad = self._undecodable(key)
            if not bad:
                raise  # as it came: retryable
            keys = ", ".join(repr(k) for k, _ in bad)
            which = f"chunk {keys} that does" if len(bad) == 1 else f"chunks {keys} that do"
            self._refuse(f"expected every stored chunk to decode, got {which} not ({bad[0][1]})")
        self._check_range(key, values)
        return values

    def _check_range(self, key: tuple[slice | int, ...], values: np.ndarray) -> None:
        """Values outside the input's documented range are refused with the chunk they are
        in: bytes changed in a chunk that still decodes (no codec checksum caught them) would
        otherwise reach the model, and a retry would read them again."""
        if self._spec.value_range is None or not values.size:
            return
        low, high = self._spec.value_range
        # one pass each, no temporary the size of the chunk (a real wind chunk is 864 MB);
        # NaN (missing) is skipped, an all-NaN chunk gives NaN, in range by comparison
        least, most = np.fmin.reduce(values, axis=None), np.fmax.reduce(values, axis=None)
        if least < low or most > high:
            found = values[(values < low) | (values > high)]
            keys = ", ".join(repr(k) for k in self._stored.keys_under(self._selection(key)))
            self._refuse(
                f"expected values in [{low:g}, {high:g}] (NaN = missing), got {found.size} "
                f"outside it ({found.min():.6g} … {found.max():.6g}) in chunk {keys}"
            )

    def _refuse(self, problem: str) -> NoReturn:
        raise InputDataError(self._spec.asset, self._spec.path, problem)

    def _selection(self, key: tuple[slice | int, ...]) -> tuple[slice, ...]:
        """The block ``key`` as explicit start/stop slices of the array."""
        return tuple(
            slice(*k.indices(n)[:2]) if isinstance(k, slice) else slice(k, k + 1)
            for k, n in zip(key, self.shape, strict=True)
        )

    def _undecodable(self, key: tuple[slice | int, ...]) -> list[tuple[str, str]]:
        """The stored objects under the block ``key`` that do not decode; none when they
        cannot even be fetched (an I/O error is not the data's fault)."""
        try:
            return self._stored.undecodable(self._selection(key))
        except Exception:
            return []


@dataclass(frozen=True)
class _GroupRead:
    """What reading one row group of a vector input takes: which group, its footer extent
    (None: no statistics), its first row in the file, the columns, the geometry and covering
    columns, and the covering's float step."""

    group: int
    extent: Extent | None
    first_row: int
    columns: list[str]
    geometry: str
    bbox: str | None
    eps: float


class InputReader:
    """The published inputs, opened and checked against their catalog entries: rasters lazily,
    vector inputs a row group at a time."""

    def __init__(self, files: FileStore, vector: VectorStore, layout: StorageLayout) -> None:
        self._files, self._vector, self._layout = files, vector, layout

    def check_inputs(self, assets: Collection[str] | None = None) -> None:
        """Every input (or those of the given asset keys) against its documented format.

        Metadata only (Zarr metadata and coordinates, Parquet footers), so it is cheap enough
        to run before a deploy or a region starts; values are checked where they are read.
        """
        for spec in self._layout.input_specs():
            if assets is None or spec.asset in assets:
                if spec.is_raster:
                    self.open_input(spec.path)
                else:
                    self._geoparquet_schema(spec)

    def _require_exists(self, spec: InputSpec, kind: str) -> None:
        if not self._files.exists(spec.path):
            raise InputDataError(
                spec.asset,
                spec.path,
                f"does not exist; expected {kind} (write the sample with `ocr sample-data`, "
                "point OCR_INPUT_ROOT at the published inputs, or override this input in "
                "OCR_INPUT_OVERRIDES)",
            )

    def icechunk_session(self, spec: InputSpec) -> icechunk.Session | None:
        """A read-only session of the input's Icechunk repository at its branch, tag or
        snapshot; None when its container is plain Zarr (``auto``: no repository there)."""
        if spec.container == "zarr":
            return None
        # nothing there is no repository (and Icechunk's local storage would create the folder)
        storage = self._files.icechunk_storage(spec.path) if self._files.exists(spec.path) else None
        if storage is None or not icechunk.Repository.exists(storage):
            if spec.container == "icechunk":
                raise InputDataError(
                    spec.asset, spec.path, "expected an Icechunk repository, got none there"
                )
            return None
        kind, value = spec.reference
        repo = icechunk.Repository.open(storage)  # an I/O error here stays retryable
        try:
            if kind == "branch":
                return repo.readonly_session(branch=value)
            if kind == "tag":
                return repo.readonly_session(tag=value)
            return repo.readonly_session(snapshot_id=value)
        except icechunk.IcechunkError as exc:  # no such branch, tag or snapshot
            raise InputDataError(
                spec.asset,
                spec.path,
                # Icechunk's message ends with the cause under a trace of its own frames
                f"expected an Icechunk repository with {kind} {value!r}, got "
                f"{str(exc).strip().splitlines()[-1].strip(' `->')}",
            ) from None

    def open_input(self, path: str, variables: tuple[str, ...] = ()) -> xr.Dataset:
        """A raster input opened lazily (dask, chunked as stored) from its Icechunk repository
        (read-only session) or plain Zarr store, as the published reader opens it, and checked
        against its catalog entry (variables, dims, dtype, CRS, latitude direction, wind
        labels), so a broken input fails here, by name, before any step computes or writes; a
        stored chunk that does not decode when it is read is an ``InputDataError`` naming it
        (:class:`CheckedChunks`). Variables come in the catalog's dim order, the wind's
        directions in the published order N … NW."""
        spec = self._layout.input_spec(path)
        session = self.icechunk_session(spec)
        if session is None:
            self._require_exists(spec, "an Icechunk repository or a Zarr store")
        try:
            # lazy but not chunked: each data variable is chunked below, read through
            # CheckedChunks
            ds = xr.open_dataset(
                session.store if session is not None else path,
                engine="zarr",
                consolidated=False,
                chunks=None,
                cache=False,
                decode_coords="all",
                storage_options=None
                if session is not None
                else self._files.options_for(path) or None,
            )
        except (ValueError, KeyError, TypeError, FileNotFoundError) as exc:
            raise InputDataError(
                spec.asset, path, f"expected a Zarr store, got one that cannot be opened ({exc})"
            ) from exc
        order = self._check_raster(spec, ds, variables)
        ds = ds.assign(
            {
                name: CheckedChunks(
                    ds[name].variable, spec, self._stored_array(spec, session, name)
                ).chunked()
                for name in ds.data_vars
                if set(ds[name].dims) == set(spec.dims)
            }
        )
        ds = ds.transpose(*spec.dims, ...)
        if order is not None:  # the wind: directions in the published order, labelled
            if order != sorted(order):
                ds = ds.isel(wind_direction=order)
            ds = ds.assign_coords(wind_direction=list(DIRECTIONS))
        return ds

    def _stored_array(
        self, spec: InputSpec, session: icechunk.Session | None, name: str
    ) -> StoredArray:
        """Array ``name`` of a raster input as the objects it is stored in."""
        if session is not None:
            return StoredArray(None, "", name, session.store)
        return StoredArray(self._files.fs_for(spec.path), self._files.fs_path(spec.path), name)

    def require_chunks(
        self, path: str, names: tuple[str, ...], window: dict[str, slice], where: str
    ) -> None:
        """Refuse a raster input whose arrays ``names`` lack a stored chunk under ``window``
        (slices by dim name; ``where`` says what it is): read, a missing chunk is the fill
        value, NaN, which the model would take for "no data here" and write a region without
        its buildings."""
        spec = self._layout.input_spec(path)
        session = self.icechunk_session(spec)
        for name in names:
            absent = self._stored_array(spec, session, name).absent(window)
            if absent:
                keys = ", ".join(repr(k) for k in absent)
                raise InputDataError(
                    spec.asset,
                    path,
                    f"expected every stored chunk under {where} ({_window(window)}) to exist, "
                    f"got {len(absent)} missing: {keys}",
                )

    def input_snapshot(self, spec: InputSpec) -> str | None:
        """The snapshot id an Icechunk input is read at (its data version); None for Zarr."""
        session = self.icechunk_session(spec)
        return None if session is None else str(session.snapshot_id)

    @staticmethod
    def _check_raster(
        spec: InputSpec, ds: xr.Dataset, requested: tuple[str, ...]
    ) -> list[int] | None:
        """Variables, their dims and dtype, the CRS, the latitude/longitude direction and the
        wind labels of one raster input; returns the wind's direction order (positions of
        N … NW), None for other inputs."""

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
            if sorted(map(str, da.dims)) != sorted(spec.dims):
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
        documented = spec.crs[0]
        if not wkt:
            if spec.dims[:2] != LATLON:  # a projected store says which projection it is in
                refuse(
                    f"expected CRS {documented} in the crs_wkt of a 'spatial_ref' coordinate, "
                    "got none"
                )
        else:
            try:
                crs = CRS.from_wkt(wkt)
            except CRSError:
                refuse(f"expected CRS {documented}, got a crs_wkt that is not a CRS: {wkt[:80]!r}")
            if not any(
                crs.equals(CRS.from_user_input(c), ignore_axis_order=True) for c in spec.crs
            ):
                refuse(f"expected CRS {documented}, got {_crs_name(crs)}")
        if spec.dims[:2] == LATLON:
            for axis in LATLON:
                values = ds[axis].values if axis in ds.coords else None
                if values is None or values.ndim != 1 or values.size < 2:
                    refuse(f"expected a 1-D {axis} coordinate of at least 2 cells, got none")
                steps = np.diff(values)
                if not (steps > 0).all():
                    direction = "descending" if (steps < 0).all() else "not monotonic"
                    refuse(
                        f"expected {axis} ascending (as the published 30 m stores are), got "
                        f"{direction} {axis} ({values[0]:.6f} … {values[-1]:.6f}); "
                        "sort the store along it (the region grid is read from it)"
                    )
        if "wind_direction" not in spec.dims:
            return None
        if ds.sizes.get("wind_direction") != len(DIRECTIONS):
            refuse(
                f"expected a wind_direction dimension of {len(DIRECTIONS)} (N … NW), got "
                f"{ds.sizes.get('wind_direction')}"
            )
        if "wind_direction" not in ds.coords:
            # as published: no coordinate, the slices are N, NE, E, SE, S, SW, W, NW by index
            return list(range(len(DIRECTIONS)))
        labels = [str(v) for v in ds["wind_direction"].values]
        if sorted(labels) != sorted(DIRECTIONS):
            refuse(
                f"expected wind_direction labels {_names(DIRECTIONS)} (or no coordinate, "
                f"as published), got {_names(labels)}"
            )
        return [labels.index(d) for d in DIRECTIONS]

    def _geoparquet_schema(self, spec: InputSpec) -> pa.Schema:
        """The Parquet schema of a vector input, checked: GeoParquet metadata, CRS, columns."""

        def refuse(problem: str) -> NoReturn:
            raise InputDataError(spec.asset, spec.path, problem)

        self._require_exists(spec, "a GeoParquet file")
        try:
            with self._files.fs_for(spec.path).open(spec.path, "rb") as f:
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
        expected = " or ".join(spec.crs)
        if crs_json is None:
            refuse(f"expected CRS {expected}, got an undefined CRS (crs: null)")
        crs = CRS.from_user_input(crs_json)
        if not any(crs.equals(CRS.from_user_input(c), ignore_axis_order=True) for c in spec.crs):
            refuse(f"expected CRS {expected}, got {_crs_name(crs)}")
        stored = stored_columns(spec, schema.names)
        missing = [
            " or ".join(repr(n) for n in BUILDING_COLUMNS.get(c, (c,)))
            for c in spec.columns
            if c not in stored
        ]
        if missing:
            refuse(f"expected column(s) {', '.join(missing)}, got {_names(schema.names)}")
        geoid = schema.field(stored["GEOID"]).type
        if not (pa.types.is_string(geoid) or pa.types.is_large_string(geoid)):
            refuse(f"expected column {stored['GEOID']!r} as text, got {geoid}")
        return schema

    def _read_geoparquet(self, spec: InputSpec) -> gpd.GeoDataFrame:
        """A checked vector input, read whole; GEOIDs of the documented form only."""
        self._geoparquet_schema(spec)
        try:
            gdf = gpd.read_parquet(spec.path, filesystem=self._files.fs_for(spec.path))
        except pa.ArrowInvalid as exc:
            raise InputDataError(
                spec.asset, spec.path, f"expected a readable Parquet file, got an error ({exc})"
            ) from exc
        gdf = gdf.rename(columns={v: k for k, v in stored_columns(spec, gdf.columns).items()})
        self._check_geoids(spec, gdf["GEOID"])
        return gdf

    @staticmethod
    def _check_geoids(spec: InputSpec, geoids: pd.Series) -> None:
        wrong, examples = _wrong_geoids(spec, pa.array(geoids.astype("string")))
        _refuse_geoids(spec, wrong, examples)

    def read_geoparquet_within(self, spec: InputSpec, window: Extent) -> gpd.GeoDataFrame:
        """The rows of a checked vector input whose geometry's bounding box meets ``window``
        (edges included), read a row group at a time; GEOIDs of the documented length only.

        The covering bbox only picks row groups (by their footer statistics); rows are picked
        by their decoded geometry (rows without one are counted: ``ROWS_WITHOUT_GEOMETRY``),
        and in every row group read, each row's bbox is checked
        against its geometry and the group's statistics against all of them. A filter on the
        bbox column would silently drop a row whose corrupt bbox no longer meets the window,
        before its geometry is ever read; here a disagreement is an ``InputDataError``. Memory
        holds one batch plus the rows kept, never the file."""
        schema = self._geoparquet_schema(spec)
        geo = json.loads(schema.metadata[b"geo"])
        geometry = geo["primary_column"]
        bbox = covering_column(schema, geo)
        eps = _bbox_eps(schema, bbox) if bbox else 0.0
        stored = stored_columns(spec, schema.names)
        columns = [*dict.fromkeys([geometry, *filter(None, [bbox]), *stored.values()])]
        meta = self._vector.parquet_metadata(spec.path)
        extents = covering_extents(meta, bbox) if bbox else [None] * meta.num_row_groups
        starts = np.cumsum([0] + [meta.row_group(g).num_rows for g in range(meta.num_row_groups)])
        kept: list[pa.RecordBatch] = []
        shapes: list[np.ndarray] = []
        no_location = 0  # rows read without a geometry (null or empty): never in any window
        for group, extent in enumerate(extents):
            if extent is not None and not meets(np.array(extent), window):
                continue
            reading = _GroupRead(group, extent, int(starts[group]), columns, geometry, bbox, eps)
            for batch, shape, bounds in self._checked_group(spec, reading):
                no_location += int(np.isnan(bounds).any(axis=1).sum())
                inside = meets(bounds, window)
                kept.append(batch.filter(pa.array(inside)))
                shapes.append(shape[inside])
        read = pa.schema([schema.field(c) for c in columns], metadata=schema.metadata)
        gdf = self._geodataframe(read, kept, shapes, geometry, bbox)
        gdf = gdf.rename(columns={v: k for k, v in stored.items()})
        documented = CRS.from_user_input(spec.crs[0])
        if documented.equals(gdf.crs, ignore_axis_order=True):
            # e.g. OGC:CRS84 (a GeoParquet without a CRS, as DuckDB writes the published
            # buildings) is EPSG:4326 in lon/lat order: outputs say EPSG:4326, as OCR's do
            gdf = gdf.set_crs(documented, allow_override=True)
        self._check_geoids(spec, gdf["GEOID"])
        gdf.attrs[ROWS_WITHOUT_GEOMETRY] = no_location
        return gdf

    def _checked_group(
        self, spec: InputSpec, reading: _GroupRead
    ) -> Iterator[tuple[pa.RecordBatch, np.ndarray, np.ndarray]]:
        """One row group's batches, each with its decoded geometries and their bounds: every
        row's covering bbox checked against its geometry, the group's footer statistics
        against all of them once it is read; bytes that do not decode are an
        ``InputDataError`` naming the group (an I/O error on the way stays as it came)."""
        group, row = reading.group, reading.first_row
        spanned = np.array([np.inf, np.inf, -np.inf, -np.inf])
        try:
            for batch in self._vector.iter_batches(spec.path, reading.columns, row_groups=[group]):
                shape = self._decode_geometry(spec, group, batch.column(reading.geometry))
                bounds = shapely.bounds(shape)
                if reading.bbox:
                    covering = batch.column(reading.bbox)
                    self._check_covering(spec, group, row, covering, bounds, reading.eps)
                if not np.isnan(bounds).all():
                    spanned[:2] = np.fmin(spanned[:2], np.nanmin(bounds[:, :2], axis=0))
                    spanned[2:] = np.fmax(spanned[2:], np.nanmax(bounds[:, 2:], axis=0))
                yield batch, shape, bounds
                row += batch.num_rows
        except pa.ArrowInvalid as exc:
            raise InputDataError(
                spec.asset,
                spec.path,
                f"expected a readable Parquet file, got an error in row group {group} ({exc})",
            ) from exc
        except OSError:  # a page that does not decompress, or an I/O error on the way
            problem = self._vector.undecodable_row_group(spec.path, group)
            if problem is None:
                raise  # as it came: retryable
            raise InputDataError(
                spec.asset,
                spec.path,
                f"expected row groups that decode, got row group {group} that does not ({problem})",
            ) from None
        if reading.extent is not None and np.isfinite(spanned).all():
            self._check_statistics(spec, group, np.array(reading.extent), spanned, reading.eps)

    def check_row_groups_outside(self, spec: InputSpec, windows: np.ndarray) -> int:
        """Check, once, the row groups of a vector input that no window reads by their footer
        statistics (``windows``: one ``(west, south, east, north)`` row per region), which a
        windowed read never looks into: a covering bbox moved off its geometry there would
        lose the buildings without a word. Raises ``InputDataError`` as a windowed read does;
        returns the rows of those groups (buildings that lie, checked, outside every window)."""
        schema = self._geoparquet_schema(spec)
        geo = json.loads(schema.metadata[b"geo"])
        bbox = covering_column(schema, geo)
        if bbox is None:
            return 0  # no statistics: every window reads every group
        meta = self._vector.parquet_metadata(spec.path)
        starts = np.cumsum([0] + [meta.row_group(g).num_rows for g in range(meta.num_row_groups)])
        columns = [geo["primary_column"], bbox]
        outside = 0
        for group, extent in enumerate(covering_extents(meta, bbox)):
            if extent is None or meets(windows, extent).any():
                continue
            reading = _GroupRead(
                group,
                extent,
                int(starts[group]),
                columns,
                columns[0],
                bbox,
                _bbox_eps(schema, bbox),
            )
            for _ in self._checked_group(spec, reading):
                pass
            outside += meta.row_group(group).num_rows
        return outside

    @staticmethod
    def _decode_geometry(spec: InputSpec, group: int, wkb: pa.Array) -> np.ndarray:
        try:
            return shapely.from_wkb(wkb.to_numpy(zero_copy_only=False))
        except shapely.errors.GEOSException as exc:
            raise InputDataError(
                spec.asset,
                spec.path,
                f"expected WKB geometries, got one in row group {group} that cannot be "
                f"decoded ({exc})",
            ) from None

    @staticmethod
    def _check_covering(
        spec: InputSpec,
        group: int,
        first_row: int,
        bbox: pa.StructArray,
        bounds: np.ndarray,
        eps: float,
    ) -> None:
        """Each row's covering bbox contains its geometry's bounds (a row without a geometry
        has nothing to cover); vectorised over the batch."""
        box = _bbox_values(bbox)
        wrong = np.flatnonzero(~_covers(box, bounds, eps) & ~np.isnan(bounds).any(axis=1))
        if wrong.size:
            rows = ", ".join(str(first_row + i) for i in wrong[:5])
            more = ", …" if wrong.size > 5 else ""
            first = wrong[0]
            raise InputDataError(
                spec.asset,
                spec.path,
                f"expected a covering bbox that contains each row's geometry, got "
                f"{wrong.size} row(s) in row group {group} whose bbox does not (rows "
                f"{rows}{more}); row {first_row + first}: bbox {_box(box[first])}, geometry "
                f"bounds {_box(bounds[first])}",
            )

    @staticmethod
    def _check_statistics(
        spec: InputSpec, group: int, extent: np.ndarray, spanned: np.ndarray, eps: float
    ) -> None:
        """The row group's footer statistics contain the geometries read from it: readers
        skip row groups by them, so statistics that are too small lose rows elsewhere."""
        if not _covers(extent[None], spanned[None], eps)[0]:
            raise InputDataError(
                spec.asset,
                spec.path,
                f"expected the bbox statistics of row group {group} to contain its rows' "
                f"geometries, got statistics {_box(extent)} for geometries spanning "
                f"{_box(spanned)}",
            )

    @staticmethod
    def _geodataframe(
        schema: pa.Schema,
        batches: list[pa.RecordBatch],
        shapes: list[np.ndarray],
        geometry: str,
        bbox: str | None,
    ) -> gpd.GeoDataFrame:
        """The kept rows as GeoPandas reads GeoParquet: the columns in their stored order
        without the covering bbox, the geometry with the file's CRS."""
        table = pa.Table.from_batches(batches) if batches else schema.empty_table()
        frame = table.drop_columns([c for c in (geometry, bbox) if c]).to_pandas()
        names = [n for n in schema.names if n != bbox]
        series = gpd.GeoSeries(
            np.concatenate(shapes) if shapes else np.array([], dtype=object),
            index=frame.index,
            crs=geoparquet_crs(schema),
        )
        frame.insert(names.index(geometry), geometry, series)
        return gpd.GeoDataFrame(frame, geometry=geometry)

    def read_census(self, level: str) -> gpd.GeoDataFrame:
        return self._read_geoparquet(self._layout.input_spec(self._layout.census(level)))

    def census_dataset(self, level: str) -> ds.Dataset:
        """A census level as a pyarrow dataset, checked first (GeoParquet metadata, CRS,
        columns, GEOID lengths) by a scan of its GEOID column a batch at a time."""
        spec = self._layout.input_spec(self._layout.census(level))
        self._geoparquet_schema(spec)
        wrong, examples = 0, []
        try:
            for batch in self._vector.iter_batches(spec.path, ["GEOID"]):
                count, found = _wrong_geoids(spec, batch.column(0))
                wrong, examples = wrong + count, [*examples, *found][:3]
        except pa.ArrowInvalid as exc:
            raise InputDataError(
                spec.asset, spec.path, f"expected a readable Parquet file, got an error ({exc})"
            ) from exc
        _refuse_geoids(spec, wrong, examples)
        return self._vector.parquet_dataset(spec.path)
