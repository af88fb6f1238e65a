"""The storage resource: all reads and writes of the pipeline, atomic, under one root."""

from __future__ import annotations

import json
import os
import posixpath
import re
import tempfile
import uuid
from collections.abc import Collection, Iterator
from contextlib import contextmanager
from typing import IO, Any, NoReturn, get_args

import dask.array
import fsspec
import geopandas as gpd
import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.dataset as ds
import pyarrow.parquet as pq
import xarray as xr
import zarr
from dagster import ConfigurableResource
from fsspec.implementations.local import LocalFileSystem
from pyproj import CRS
from pyproj.exceptions import CRSError

from ocr_assets.science.composite import NegativeWindWeights
from ocr_assets.science.fire_model import WIND_DIMS, YEARS, RegionInputs
from ocr_assets.science.kernels import DIRECTIONS
from ocr_assets.science.regions import (
    HALO_DEG,
    Region,
    RegionGrid,
    sort_region_ids,
    valid_region_ids_from_mask,
)
from ocr_assets.science.sampling import RISK_VARIABLES
from ocr_resources.geoparquet import GeoParquetWriter
from ocr_resources.layout import InputSpec, StorageLayout
from ocr_resources.settings import DEFAULT_MODEL_VARIANT, ModelVariantName

# Region windows are written as whole shards (one object per region and variable), so two
# regions never write the same object and each object appears atomically.
INNER_CHUNKS_PER_SHARD_SIDE = 4
REGION_FILE = re.compile(r"^y\d+_x\d+\.parquet$")
# Rows per record batch where a table is streamed (buildings, census units): memory is set by
# this, never by the number of rows (~100 B per building and column group in flight).
BATCH_ROWS = 65_536
GEOPARQUET_OPTIONS: dict[str, Any] = {
    "compression": "zstd",
    "write_covering_bbox": True,
    "schema_version": "1.1.0",
    "index": False,
    # row groups of a batch: a reader decodes one row group at a time, so a streamed read of
    # a region file holds a batch, not the whole region (~1 M buildings in a dense one)
    "row_group_size": BATCH_ROWS,
}


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


class StorageRootError(RuntimeError):
    """The storage root is missing or not writable (checked when a deploy starts, never when
    settings are built, so configuration stays free of I/O)."""


def _names(names: Collection[Any]) -> str:
    return ", ".join(repr(str(n)) for n in names) or "none"


def _crs_name(crs: CRS) -> str:
    return crs.to_string() if crs.to_epsg() else crs.name


def _normalised(path: str) -> str:
    """``path`` with "..", "." and doubled "/" resolved (after the URL scheme, if any)."""
    scheme, sep, rest = path.rpartition("://")
    return f"{scheme}{sep}{posixpath.normpath(rest or '/')}"


class OcrStorage(ConfigurableResource):
    """Storage root, environment and version; resolves paths and owns every read and write."""

    root: str
    environment: str = "local"
    version: str | None = None
    endpoint_url: str | None = None  # an S3-compatible endpoint (e.g. a test server)
    # the fire model's numerics; a non-default variant's outputs live under their own prefix
    model_variant: str = DEFAULT_MODEL_VARIANT

    @property
    def layout(self) -> StorageLayout:
        return StorageLayout(self.root, self.environment, self.version, self.model_variant)

    @property
    def is_s3(self) -> bool:
        return self.root.startswith("s3://")

    @property
    def storage_options(self) -> dict[str, Any]:
        """fsspec options for URLs under the root (credentials come from the environment)."""
        return {"endpoint_url": self.endpoint_url} if self.is_s3 and self.endpoint_url else {}

    @property
    def fs(self) -> fsspec.AbstractFileSystem:
        return fsspec.core.url_to_fs(self.root, **self.storage_options)[0]

    def s3_client(self):
        """boto3 S3 client through dagster-aws, for what fsspec cannot do (conditional puts)."""
        from dagster_aws.s3 import S3Resource

        return S3Resource(endpoint_url=self.endpoint_url).get_client()

    def create_exclusive(self, path: str, data: bytes) -> bool:
        """Create ``path`` only if it does not exist (atomically); False if it does."""
        if self.is_s3:
            bucket, _, key = path.removeprefix("s3://").partition("/")
            try:
                self.s3_client().put_object(Bucket=bucket, Key=key, Body=data, IfNoneMatch="*")
            except Exception as exc:  # botocore ClientError: PreconditionFailed
                if "PreconditionFailed" in str(exc) or "412" in str(exc):
                    return False
                raise
            return True
        self.fs.makedirs(posixpath.dirname(path), exist_ok=True)
        try:
            fd = os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
        except FileExistsError:
            return False
        with os.fdopen(fd, "wb") as f:
            f.write(data)
        return True

    def read_json(self, path: str) -> Any:
        with self.fs.open(path, "rb") as f:
            return json.load(f)

    def delete(self, path: str) -> None:
        if self.fs.exists(path):
            self.fs.rm(path, recursive=True)

    def wipe_environment(self) -> list[str]:
        """Delete exactly this environment's output prefixes; returns those that existed."""
        if self.environment == "production":
            raise PermissionError("wipe is refused for production: versions are kept for rollback")
        root = _normalised(self.root).rstrip("/") + "/"
        scope = "/".join([self.environment, *filter(None, [self.layout.variant_segment])])
        # the default variant's prefix holds the other variants' prefixes: they are kept
        others = (
            set()
            if self.layout.variant_segment
            else set(get_args(ModelVariantName)) - {DEFAULT_MODEL_VARIANT}
        )
        deleted = []
        for prefix in self.layout.environment_prefixes():
            # compared normalised, so "..", "." or doubled "/" in a crafted root cannot widen
            # the scope: a prefix must be exactly what it says, under the root, for this env
            exact = _normalised(prefix) == prefix and prefix.startswith(root)
            if not exact or not prefix.endswith(f"/{scope}"):
                raise PermissionError(f"refusing to wipe {prefix}: not this environment's prefix")
            if not self.fs.exists(prefix):
                continue
            children = self.fs.ls(prefix, detail=False)
            doomed = [c for c in children if posixpath.basename(c.rstrip("/")) not in others]
            if len(doomed) == len(children):
                self.fs.rm(prefix, recursive=True)
            elif doomed:
                self.fs.rm(doomed, recursive=True)
            deleted.append(prefix)
        return deleted

    # generic atomic writes ---------------------------------------------------------------
    def exists(self, path: str) -> bool:
        return self.fs.exists(path)

    @contextmanager
    def atomic_path(self, path: str) -> Iterator[str]:
        """A temporary sibling to write to; moved onto ``path`` only if the block succeeds."""
        parent, name = posixpath.split(path)
        self.fs.makedirs(parent, exist_ok=True)
        tmp = f"{parent}/.tmp-{uuid.uuid4().hex}-{name}"
        try:
            yield tmp
            if not self.fs.isdir(tmp):
                self.fs.mv(tmp, path)  # a rename, or one object copy on S3
            elif isinstance(self.fs, LocalFileSystem):
                self._replace_local_dir(tmp, path)
            else:
                self._replace_object_dir(tmp, path)
        finally:
            if self.fs.exists(tmp):
                self.fs.rm(tmp, recursive=True)

    def _replace_local_dir(self, tmp: str, path: str) -> None:
        """Swap a finished directory into place; the old one is removed only afterwards."""
        old = f"{tmp}.old"
        if self.fs.exists(path):
            self.fs.mv(path, old, recursive=True)
        self.fs.mv(tmp, path, recursive=True)
        if self.fs.exists(old):
            self.fs.rm(old, recursive=True)

    def _replace_object_dir(self, tmp: str, path: str) -> None:
        """Object stores have no directories to rename: copy each finished object into place,
        then delete the old objects the new set does not have."""
        fresh = {f[len(self.fs._strip_protocol(tmp)) :] for f in self.fs.find(tmp)}
        base = self.fs._strip_protocol(tmp)
        for rel in sorted(fresh):
            self.fs.copy(base + rel, f"{self.fs._strip_protocol(path)}{rel}")
        if self.fs.exists(path):
            dest = self.fs._strip_protocol(path)
            stale = [f for f in self.fs.find(path) if f[len(dest) :] not in fresh]
            if stale:
                self.fs.rm(stale)

    def write_bytes(self, path: str, data: bytes) -> None:
        with self.atomic_path(path) as tmp:
            self.fs.pipe_file(tmp, data)

    def write_geoparquet(self, gdf: gpd.GeoDataFrame, path: str) -> int:
        """GeoParquet 1.1 (zstd, covering bbox); returns the byte size written."""
        with self.atomic_path(path) as tmp:
            gdf.to_parquet(tmp, filesystem=self.fs, **GEOPARQUET_OPTIONS)
            size = self.fs.size(tmp)
        return int(size)

    def write_zarr(self, ds: xr.Dataset, path: str, encoding: dict | None = None) -> None:
        """A whole Zarr v3 store, swapped into place when complete."""
        with self.atomic_path(path) as tmp:
            ds.to_zarr(
                tmp,
                mode="w-",
                consolidated=False,
                zarr_format=3,
                encoding=encoding,
                storage_options=self.storage_options or None,
            )

    # root --------------------------------------------------------------------------------
    def check_root(self) -> None:
        """The root exists and can be written: a local folder gets a probe file (created and
        removed); an S3 root needs its bucket (the deploy's lock is its first write)."""
        if self.is_s3:
            bucket = self.root.removeprefix("s3://").split("/", 1)[0]
            if not self.fs.exists(bucket):
                raise StorageRootError(
                    f"storage root {self.root} does not exist: expected an existing bucket "
                    f"{bucket!r} (fix OCR_STORAGE_ROOT or create the bucket)"
                )
            return
        if not os.path.exists(self.root):
            raise StorageRootError(
                f"storage root {self.root} does not exist: expected an existing folder "
                "(create it, or fix OCR_STORAGE_ROOT)"
            )
        if not os.path.isdir(self.root):
            raise StorageRootError(f"storage root {self.root} is not a folder: expected a folder")
        try:
            tempfile.TemporaryFile(dir=self.root, prefix=".ocr-write-check-").close()
        except OSError as exc:
            raise StorageRootError(
                f"storage root {self.root} is not writable ({exc.strerror}): expected a folder "
                "this user can create files in"
            ) from exc

    # inputs ------------------------------------------------------------------------------
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
        no_wind = xr.DataArray(np.empty((0, 0, 8), np.float32), dims=WIND_DIMS)
        inputs = RegionInputs(
            latitude=grid.latitude[lat_w],
            longitude=grid.longitude[lon_w],
            rows=slice(region.lat_slice.start - lat_w.start, region.lat_slice.stop - lat_w.start),
            cols=slice(region.lon_slice.start - lon_w.start, region.lon_slice.stop - lon_w.start),
            bounds=region.bounds(halo_deg),
            bp_270m={y: self.open_input(self.layout.bp_270m(y), ("BP",))["BP"] for y in fields},
            wind=self._read_wind(grid, window) if fields else no_wind,
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

    # raster store ------------------------------------------------------------------------
    def ensure_raster_store(self, grid: RegionGrid, crs_wkt: str) -> None:
        """Write the CONUS template (metadata and coordinates) if any part is missing.

        The template's bytes are deterministic, so concurrent writers write identical objects;
        nothing that exists is ever deleted, so no region's data can be lost here.
        """
        path = self.layout.raster_store
        if all(self.exists(f"{path}/{key}/zarr.json") for key in ("", *RISK_VARIABLES)):
            return
        memory = zarr.storage.MemoryStore()
        shape = (grid.latitude.size, grid.longitude.size)
        shard = (grid.chunk_lat, grid.chunk_lon)
        inner = tuple(
            s // INNER_CHUNKS_PER_SHARD_SIDE if s % INNER_CHUNKS_PER_SHARD_SIDE == 0 else s
            for s in shard
        )
        template = xr.Dataset(
            {
                name: (
                    ("latitude", "longitude"),
                    dask.array.full(shape, np.nan, dtype=np.float32, chunks=shard),
                    {"grid_mapping": "spatial_ref"},
                )
                for name in RISK_VARIABLES
            },
            coords={
                "latitude": grid.latitude,
                "longitude": grid.longitude,
                "spatial_ref": ((), 0, {"crs_wkt": crs_wkt}),
            },
            attrs={
                "title": "Open Climate Risk: wind-adjusted wildfire risk",
                "license": "CC-BY-4.0",
                "model_variant": self.model_variant,
            },
        )
        encoding = {
            name: {"chunks": inner, "shards": shard, "fill_value": np.nan}
            for name in RISK_VARIABLES
        }
        template.to_zarr(
            memory, compute=False, consolidated=False, zarr_format=3, encoding=encoding
        )
        items = dict(memory._store_dict)
        # root metadata last: a reader that sees it sees the whole template
        for key in sorted(items, key=lambda k: (k == "zarr.json", k)):
            self.write_bytes(f"{path}/{key}", items[key].to_bytes())

    def write_region_window(self, region: Region, rasters: dict[str, np.ndarray]) -> None:
        """Write one region's window of every variable into the raster store (whole shards)."""
        ds = xr.Dataset(
            {name: (("latitude", "longitude"), rasters[name]) for name in RISK_VARIABLES}
        )
        ds.to_zarr(
            self.layout.raster_store,
            region={"latitude": region.lat_slice, "longitude": region.lon_slice},
            mode="r+",
            consolidated=False,
            zarr_format=3,
            storage_options=self.storage_options or None,
        )

    def open_raster_store(self) -> xr.Dataset:
        return xr.open_zarr(
            self.layout.raster_store,
            consolidated=False,
            decode_coords="all",
            storage_options=self.storage_options or None,
        )

    # metadata sidecars -------------------------------------------------------------------
    def write_json(self, path: str, payload: Any) -> None:
        self.write_bytes(path, json.dumps(payload, indent=1, sort_keys=True).encode())

    def spec(self) -> dict[str, str | None]:
        """Plain values to rebuild this resource in a Dask worker (resources do not pickle)."""
        return {
            "root": self.root,
            "environment": self.environment,
            "version": self.version,
            "endpoint_url": self.endpoint_url,
            "model_variant": self.model_variant,
        }

    def crs_wkt_4326(self) -> str:
        """The CRS of the conditional-risk grid, from its ``spatial_ref`` coordinate."""
        ds = self.open_input(self.layout.crps_rps, ("CRPS",))
        return str(ds["spatial_ref"].attrs["crs_wkt"])

    # vector outputs ------------------------------------------------------------------------
    def list_region_buildings(self) -> list[str]:
        """Region ids with a buildings file in this environment (others' files are ignored)."""
        folder = self.layout.region_buildings_dir
        if not self.exists(folder):
            return []
        names = [posixpath.basename(p) for p in self.fs.ls(folder, detail=False)]
        ids = [n.removesuffix(".parquet") for n in names if REGION_FILE.match(n)]
        return sort_region_ids(ids)

    def parquet_dataset(self, paths: str | list[str]) -> ds.Dataset:
        """A pyarrow dataset over files or a folder (paths without their URL scheme, as
        pyarrow's fsspec bridge expects)."""
        strip = self.fs._strip_protocol
        paths = strip(paths) if isinstance(paths, str) else [strip(p) for p in paths]
        return ds.dataset(paths, format="parquet", filesystem=self.fs)

    def put_file(self, local_path: str, path: str) -> int:
        """Copy a finished local file (e.g. from a scratch folder) into place atomically."""
        with self.atomic_path(path) as tmp:
            self.fs.put_file(local_path, tmp)
            size = self.fs.size(tmp)
        return int(size)

    def write_text(self, path: str, text: str) -> None:
        self.write_bytes(path, text.encode())

    @contextmanager
    def atomic_open(self, path: str, mode: str = "wb") -> Iterator[IO]:
        """A file on a temporary sibling, written as a stream and moved onto ``path`` only
        when the block succeeds (closed first)."""
        with self.atomic_path(path) as tmp, self.fs.open(tmp, mode) as f:
            yield f

    @contextmanager
    def geoparquet_writer(self, path: str, schema: pa.Schema, crs: Any) -> Iterator[Any]:
        """A :class:`GeoParquetWriter` on ``path``: batches in, one atomic GeoParquet out."""
        with self.atomic_open(path) as f:
            writer = GeoParquetWriter(f, schema, crs)
            yield writer
            writer.close()

    def iter_batches(
        self, path: str, columns: list[str] | None = None, batch_rows: int = BATCH_ROWS
    ) -> Iterator[pa.RecordBatch]:
        """A Parquet file's rows as record batches of at most ``batch_rows`` (one row group
        in memory at a time)."""
        with self.fs.open(path, "rb") as f:
            source = pq.ParquetFile(f)
            # a reader per row group: one reader over all of them keeps memory for each group
            # it has read (~60 B per building of the tile layers' columns, bench/scale)
            for group in range(source.num_row_groups):
                yield from source.iter_batches(
                    batch_size=batch_rows, row_groups=[group], columns=columns
                )

    def parquet_stream(
        self, path: str, columns: list[str], batch_rows: int = BATCH_ROWS
    ) -> pa.RecordBatchReader:
        """``columns`` of a Parquet file as a one-pass stream for DuckDB, a row group at a time
        (DuckDB's scan of a pyarrow dataset reads millions of rows ahead)."""
        stored = self.parquet_schema(path)
        schema = pa.schema([stored.field(c).remove_metadata() for c in columns])
        return pa.RecordBatchReader.from_batches(
            schema,
            (b.select(columns) for b in self.iter_batches(path, columns, batch_rows)),
        )

    def parquet_schema(self, path: str) -> pa.Schema:
        with self.fs.open(path, "rb") as f:
            return pq.read_schema(f)

    def parquet_rows(self, path: str) -> int:
        with self.fs.open(path, "rb") as f:
            return pq.ParquetFile(f).metadata.num_rows

    @contextmanager
    def local_copy(self, path: str) -> Iterator[str]:
        """A local path to read ``path`` with tools that need one (GDAL): the file itself on
        a local root, else a streamed download into a scratch file."""
        if isinstance(self.fs, LocalFileSystem):
            yield path
            return
        with tempfile.TemporaryDirectory(prefix="ocr-copy-") as scratch:
            local = os.path.join(scratch, posixpath.basename(path))
            self.fs.get_file(path, local)
            yield local

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

    @contextmanager
    def datatree_writer(self, tree: xr.DataTree, path: str) -> Iterator[zarr.Group]:
        """The tree's groups, coordinates, attributes and array metadata written from its lazy
        variables (never computed), then its Zarr group to fill window by window; in place at
        ``path`` only when the block succeeds."""
        options = self.storage_options or None
        with self.atomic_path(path) as tmp:
            tree.to_zarr(
                tmp,
                mode="w-",
                consolidated=False,
                zarr_format=3,
                storage_options=options,
                compute=False,
            )
            yield zarr.open_group(tmp, mode="r+", storage_options=options)

    def open_datatree(self, path: str) -> xr.DataTree:
        """Lazily, dask-backed with the stored chunks: a reduction reads a chunk at a time."""
        return xr.open_datatree(
            path,
            engine="zarr",
            consolidated=False,
            chunks={},
            storage_options=self.storage_options or None,
        )
