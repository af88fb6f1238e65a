"""The CONUS raster store (an Icechunk repository, as published: a template commit, then a
commit per region) and other Zarr outputs: whole stores and the pyramid's tree."""

from __future__ import annotations

import asyncio
import itertools
import uuid
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import dask.array
import fsspec
import icechunk
import numpy as np
import xarray as xr
import zarr
from zarr.abc.buffer import Buffer
from zarr.abc.store import Store
from zarr.buffer import default_buffer_prototype

from ocr_resources.layout import StorageLayout
from ocr_resources.publication import raster_attributes
from ocr_resources.settings import DEFAULT_MODEL_VARIANT
from ocr_resources.storage.files import FileStore
from ocr_science.regions import Region, RegionGrid, region_id
from ocr_science.sampling import RISK_VARIABLES

# How every Zarr output is written: v3, no consolidated metadata (objects appear one by one)
ZARR_FORMAT = {"consolidated": False, "zarr_format": 3}
LATLON = ("latitude", "longitude")

# The published commit messages (ocr/config.py:1065-1075, :1211-1254 at carbonplan/ocr 0a1b285)
TEMPLATE_MESSAGE = "initialize store with template"
REGION_MESSAGE_PREFIX = "wrote region_id"
# Bounded, where the published writer retries without limit: a template commit that conflicts
# looks again for the winner's template; a region commit rebases onto each concurrent commit
# (one per region written meanwhile), then fails and the region's own retries take over
TEMPLATE_ATTEMPTS = 5
REGION_REBASE_TRIES = 256
# The variables' codec: zstd at level 1. Zarr's default (level 0, i.e. zstd's 3) compresses
# the model's values no better (0.538 vs 0.539 of their size) at 2.6× the time, and a region's
# chunk is one frame encoded on one thread: the default made the region write 1.3-2× the
# previous shard write, whose 16 inner chunks encode in parallel (bench/raster_write.py)
RASTER_COMPRESSORS = (zarr.codecs.ZstdCodec(level=1),)

# an array's metadata documents: Zarr v3, else v2
_ARRAY_METADATA = ("zarr.json", ".zarray")


def region_message(region_id: str) -> str:
    """The commit message of one region's write."""
    return f"{REGION_MESSAGE_PREFIX} ({region_id})"


def committed_region_ids(message: str) -> list[str]:
    """The regions a commit message says were written, parsed as the published reader does
    (ocr/config.py:1177-1209): split on ``,``; a part starting ``wrote region_id`` names its
    region between the parentheses."""
    return [
        part.split("(")[1].split(")")[0]
        for part in message.split(",")
        if part.startswith(REGION_MESSAGE_PREFIX) and "(" in part
    ]


def _template_snapshot(repo: icechunk.Repository) -> str | None:
    """The snapshot id of ``main``'s template commit, if it has one."""
    for snapshot in repo.ancestry(branch="main"):
        if snapshot.message == TEMPLATE_MESSAGE:
            return snapshot.id
    return None


def raster_template(
    grid: RegionGrid, version: str | None, model_variant: str
) -> tuple[xr.Dataset, dict]:
    """The published template (docs/published.md §4.1): the risk variables in template order over
    (latitude, longitude), float32, NaN-filled, one chunk per region, no ``spatial_ref``; the
    coordinates' and the dataset's published attributes. Returns (lazy dataset, encoding).

    A non-default model variant adds a ``model_variant`` attribute, so its store says which
    numbers it holds (the published variant's attributes stay exactly the published ones)."""
    shape = (grid.latitude.size, grid.longitude.size)
    chunks = (grid.chunk_lat, grid.chunk_lon)
    step_lat, step_lon = abs(grid.dlat), abs(grid.dlon)
    attrs = raster_attributes(version)
    if model_variant != DEFAULT_MODEL_VARIANT:
        attrs["model_variant"] = model_variant
    template = xr.Dataset(
        {
            name: (LATLON, dask.array.full(shape, np.nan, dtype=np.float32, chunks=chunks))
            for name in RISK_VARIABLES
        },
        coords={
            # the published store's latitude says resolution -step although its latitude
            # ascends (observed, docs/published.md §4.1): matched, so readers see the same
            # attributes
            "latitude": (
                "latitude",
                grid.latitude,
                {"units": "degrees_north", "resolution": -step_lat, "crs": "EPSG:4326"},
            ),
            "longitude": (
                "longitude",
                grid.longitude,
                {"units": "degrees_east", "resolution": step_lon, "crs": "EPSG:4326"},
            ),
        },
        attrs=attrs,
    )
    encoding = {
        name: {"chunks": chunks, "fill_value": np.nan, "compressors": RASTER_COMPRESSORS}
        for name in RISK_VARIABLES
    }
    return template, encoding


@dataclass(frozen=True)
class StoredArray:
    """One array of a Zarr store as the objects it is stored in (chunks, or shards), for
    telling a chunk that does not decode from a read that failed on the way.

    The objects are fetched through an fsspec filesystem (plain Zarr) or through a Zarr store
    (an Icechunk session's), both of which pickle, so it travels to Dask workers."""

    fs: fsspec.AbstractFileSystem | None
    store: str  # the store's path as ``fs`` names it
    name: str  # the array's path in the store
    zarr_store: Store | None = None  # fetch through this store instead of ``fs``

    def _metadata(self) -> tuple[zarr.Array, dict[str, Buffer]]:
        """The array as its metadata describes it (no chunk read), and that metadata."""
        documents = (*_ARRAY_METADATA, ".zattrs")  # v2 keeps its dims' names in attributes
        objects = {d: b for d in documents if (b := self._fetch(d)) is not None}
        return zarr.open_array(zarr.storage.MemoryStore(store_dict=objects), mode="r"), objects

    @staticmethod
    def _objects_under(
        array: zarr.Array, selection: tuple[slice, ...]
    ) -> Iterator[tuple[str, tuple[slice, ...]]]:
        """(key, the whole object's slices) of each stored object under ``selection``."""
        size = array.shards or array.chunks
        spans = [
            range(s.start // n, (s.stop - 1) // n + 1) for s, n in zip(selection, size, strict=True)
        ]
        for index in itertools.product(*spans):
            whole = tuple(slice(i * n, (i + 1) * n) for i, n in zip(index, size, strict=True))
            yield array.metadata.encode_chunk_key(index), whole

    def keys_under(self, selection: tuple[slice, ...]) -> list[str]:
        """The keys in the store of the objects under ``selection`` (explicit start/stop
        slices of the array, in its stored dims)."""
        array, _ = self._metadata()
        return [f"{self.name}/{key}" for key, _ in self._objects_under(array, selection)]

    def absent(self, window: dict[str, slice]) -> list[str]:
        """The keys of the objects under ``window`` (slices by dim name; a dim not named is
        taken whole) that the store does not have: read, they would be the fill value."""
        array, _ = self._metadata()
        # Zarr v3 names its dims in the metadata; v2 in xarray's attribute
        names = array.metadata.dimension_names if array.metadata.zarr_format == 3 else None
        names = names or array.attrs.get("_ARRAY_DIMENSIONS")
        if not names or len(names) != array.ndim:
            raise ValueError(f"array {self.name!r} names no dimensions: cannot find its chunks")
        selection = tuple(
            slice(*window.get(str(d), slice(None)).indices(n)[:2])
            for d, n in zip(names, array.shape, strict=True)
        )
        return [
            f"{self.name}/{key}"
            for key, _ in self._objects_under(array, selection)
            if not self._exists(key)
        ]

    def undecodable(self, selection: tuple[slice, ...]) -> list[tuple[str, str]]:
        """The objects under ``selection`` (explicit start/stop slices of the array) whose
        bytes are fetched whole but do not decode, as (key in the store, decoder's error).

        Each object is fetched, then decoded from memory with the array's own metadata, so
        only its bytes can fail there. A fetch that fails raises (an I/O error says nothing
        about the data); an absent object is the fill value, which always decodes."""
        array, objects = self._metadata()
        bad = []
        for key, whole in self._objects_under(array, selection):
            data = self._fetch(key)
            if data is None:
                continue
            objects[key] = data
            try:
                array[whole]
            except Exception as exc:  # whatever the codec raises: the bytes do not decode
                bad.append((f"{self.name}/{key}", f"{type(exc).__name__}: {exc}"))
            del objects[key]
        return bad

    def _exists(self, key: str) -> bool:
        if self.zarr_store is not None:
            return asyncio.run(self.zarr_store.exists(f"{self.name}/{key}"))
        return self.fs.exists(f"{self.store}/{self.name}/{key}")

    def _fetch(self, key: str) -> Buffer | None:
        """An object of the array, whole, or None when it does not exist."""
        if self.zarr_store is not None:
            prototype = default_buffer_prototype()
            return asyncio.run(self.zarr_store.get(f"{self.name}/{key}", prototype))
        try:
            data = self.fs.cat_file(f"{self.store}/{self.name}/{key}")
        except FileNotFoundError:
            return None
        return default_buffer_prototype().buffer.from_bytes(data)


class RasterStoreReadError(RuntimeError):
    """A chunk of the raster store that does not read, named by its region and variable."""


class RegionChunks:
    """A raster store variable read for dask a stored chunk at a time; a chunk is a region,
    so one that fails to read (an object lost or cut short: Icechunk says only "Requested
    range was invalid") is named by its region, which a recompute of the region rewrites."""

    def __init__(self, variable: xr.Variable, name: str, store: str) -> None:
        self._variable, self._name, self._store = variable, name, store
        self._chunks = tuple(variable.encoding["preferred_chunks"][d] for d in variable.dims)
        self.shape, self.dtype, self.ndim = variable.shape, variable.dtype, variable.ndim

    def chunked(self) -> xr.Variable:
        data = dask.array.from_array(
            self,
            chunks=self._chunks,
            name=f"raster-{self._name}-{uuid.uuid4().hex}",
            fancy=False,
            meta=np.empty((0,) * self.ndim, self.dtype),
        )
        return self._variable.copy(deep=False, data=data)

    def __getitem__(self, key: tuple[slice, ...]) -> np.ndarray:
        try:
            return np.asarray(self._variable[key].values)
        except Exception as exc:
            starts = [k.indices(n)[0] for k, n in zip(key, self.shape, strict=True)]
            region = region_id(*(s // c for s, c in zip(starts, self._chunks, strict=True)))
            said = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
            raise RasterStoreReadError(
                f"raster store {self._store}: the chunk of {self._name} in region {region} "
                f"does not read ({type(exc).__name__}: {said}); recompute the region "
                f"(ocr deploy --recompute {region}) to rewrite it"
            ) from exc


class RasterStore:
    """The CONUS raster store (an Icechunk repository) and the other Zarr outputs: whole
    stores and the pyramid's tree."""

    def __init__(self, files: FileStore, layout: StorageLayout) -> None:
        self._files, self._layout = files, layout

    def write_zarr(self, ds: xr.Dataset, path: str, encoding: dict | None = None) -> None:
        """A whole Zarr v3 store, swapped into place when complete."""
        with self._files.atomic_path(path) as tmp:
            ds.to_zarr(
                tmp,
                mode="w-",
                encoding=encoding,
                storage_options=self._files.storage_options or None,
                **ZARR_FORMAT,
            )

    def write_icechunk(self, ds: xr.Dataset, path: str, encoding: dict | None, message: str) -> str:
        """A whole dataset as one commit on ``main`` of an Icechunk repository at ``path``
        (created if missing; an existing one gets a new snapshot replacing its content), as
        the published inputs are written; returns the snapshot id."""
        repo = icechunk.Repository.open_or_create(self._files.icechunk_storage(path))
        session = repo.writable_session("main")
        ds.to_zarr(session.store, mode="w", encoding=encoding, consolidated=False, zarr_format=3)
        return str(session.commit(message))

    def raster_repository(self) -> icechunk.Repository:
        """The raster store's Icechunk repository, created if missing (a writer that loses the
        race to create it opens the winner's)."""
        storage = self._files.icechunk_storage(self._layout.raster_store)
        if not icechunk.Repository.exists(storage):
            try:
                return icechunk.Repository.create(storage)
            except icechunk.IcechunkError:
                pass  # created meanwhile by a concurrent writer
        return icechunk.Repository.open(storage)

    @contextmanager
    def _raster_commits(self) -> Iterator[None]:
        """Held around every commit to the raster store. Icechunk's local filesystem storage
        cannot update a branch conditionally (earth-mover/icechunk#804, #1494), so concurrent
        local commits could lose one another: a local root serialises them with an exclusive
        lock beside the repository. S3 updates the branch conditionally: no lock."""
        if self._files.is_s3:
            yield
            return
        with self._files.local_lock(self._layout.raster_store, "commit"):
            yield

    def ensure_raster_store(self, grid: RegionGrid) -> str:
        """The template commit of the raster store (written and committed as
        ``initialize store with template`` when ``main`` has none, as the published pipeline
        does); returns its snapshot id. Of concurrent first writers exactly one commits it:
        the others' commits conflict, and they find the winner's."""
        with self._raster_commits():
            repo = self.raster_repository()
            for _ in range(TEMPLATE_ATTEMPTS):
                found = _template_snapshot(repo)
                if found is not None:
                    return found
                session = repo.writable_session("main")
                template, encoding = raster_template(
                    grid, self._layout.version, self._layout.model_variant
                )
                template.to_zarr(
                    session.store, mode="w", compute=False, encoding=encoding, **ZARR_FORMAT
                )
                try:
                    return str(session.commit(TEMPLATE_MESSAGE))
                except icechunk.ConflictError:
                    continue  # another writer committed first: look for its template
        raise RuntimeError(
            f"the raster store {self._layout.raster_store} has no template after "
            f"{TEMPLATE_ATTEMPTS} attempts: every commit conflicted and none was a template"
        )

    def write_region_window(self, region: Region, rasters: dict[str, np.ndarray]) -> str:
        """One region's window of every variable, in its own writable session on ``main``,
        committed as ``wrote region_id (<id>)`` and rebased onto concurrent commits (regions'
        chunks are disjoint, so rebasing succeeds; at most ``REGION_REBASE_TRIES`` times).
        Returns the snapshot id. Until the commit nothing is visible: a writer killed before
        it leaves no data."""
        ds = xr.Dataset({name: (LATLON, rasters[name]) for name in RISK_VARIABLES})
        session = self.raster_repository().writable_session("main")
        ds.to_zarr(
            session.store,
            region={"latitude": region.lat_slice, "longitude": region.lon_slice},
            mode="r+",
            **ZARR_FORMAT,
        )
        with self._raster_commits():
            return str(
                session.commit(
                    region_message(region.region_id),
                    rebase_with=icechunk.ConflictDetector(),
                    rebase_tries=REGION_REBASE_TRIES,
                )
            )

    def committed_regions(self) -> dict[str, str]:
        """Regions with a ``wrote region_id (<id>)`` commit in ``main``'s ancestry, each with
        the snapshot id of its latest one (none when the repository does not exist)."""
        storage = self._files.icechunk_storage(self._layout.raster_store)
        if not icechunk.Repository.exists(storage):
            return {}
        regions: dict[str, str] = {}
        for snapshot in icechunk.Repository.open(storage).ancestry(branch="main"):
            for region in committed_region_ids(snapshot.message):
                regions.setdefault(region, snapshot.id)  # newest first
        return regions

    def open_raster_store(self) -> xr.Dataset:
        """``main`` of the raster store, lazily, in its stored chunks (one per region), as the
        published docs open it; a chunk that does not read is named by its region
        (:class:`RegionChunks`)."""
        repo = icechunk.Repository.open(self._files.icechunk_storage(self._layout.raster_store))
        session = repo.readonly_session("main")
        ds = xr.open_dataset(session.store, engine="zarr", consolidated=False, chunks=None)
        # Icechunk lists a group's arrays in its own order: ours come in template order
        ds = ds[list(RISK_VARIABLES)]
        path = self._layout.raster_store
        return ds.assign({n: RegionChunks(ds[n].variable, n, path).chunked() for n in ds})

    def write_consolidated_tree(
        self,
        tree: xr.DataTree,
        path: str,
        encoding: dict,
        reductions: dict[str, Any] | None = None,
    ) -> dict[str, Any]:
        """A whole tree as Zarr v3 with the root's consolidated metadata, as OCR writes its
        pyramid (``to_zarr`` then ``zarr.consolidate_metadata``); swapped into place at
        ``path`` only when complete, so a failed write leaves the previous tree.

        Every level's chunks are written by one dask computation on the current scheduler
        (the step's threads, or its cluster's workers), with ``reductions`` (lazy values of
        the arrays written, e.g. a maximum) computed in the same pass over the same chunks:
        their values are returned, and nothing is read back afterwards."""
        options = self._files.storage_options or None
        with self._files.atomic_path(path) as tmp, warnings.catch_warnings():
            # zarr warns that consolidated metadata is not part of the v3 spec: OCR's map reads it
            warnings.filterwarnings("ignore", "Consolidated metadata", UserWarning)
            writes = tree.to_zarr(
                tmp,
                mode="w",
                zarr_format=3,
                encoding=encoding,
                storage_options=options,
                compute=False,
            )
            _, values = dask.compute(writes, reductions or {})
            store = (
                zarr.storage.FsspecStore.from_url(tmp, storage_options=options)
                if self._files.is_s3
                else zarr.storage.LocalStore(tmp)
            )
            zarr.consolidate_metadata(store)
        return values

    def open_datatree(self, path: str) -> xr.DataTree:
        """Lazily, dask-backed with the stored chunks: a reduction reads a chunk at a time."""
        return xr.open_datatree(
            path,
            engine="zarr",
            consolidated=False,
            chunks={},
            storage_options=self._files.storage_options or None,
        )
