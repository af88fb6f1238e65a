"""The CONUS raster store (one Zarr v3 store, a shard per region and variable) and other Zarr
outputs: templates, region windows, whole stores and the pyramid's tree."""

from __future__ import annotations

import asyncio
import itertools
import warnings
from dataclasses import dataclass

import dask.array
import fsspec
import icechunk
import numpy as np
import xarray as xr
import zarr
from zarr.abc.buffer import Buffer
from zarr.abc.store import Store
from zarr.buffer import default_buffer_prototype

from ocr_assets.science.regions import Region, RegionGrid
from ocr_assets.science.sampling import RISK_VARIABLES
from ocr_resources.storage.files import FileStore

# Region windows are written as whole shards (one object per region and variable), so two
# regions never write the same object and each object appears atomically.
INNER_CHUNKS_PER_SHARD_SIDE = 4
# How every Zarr output is written: v3, no consolidated metadata (objects appear one by one)
ZARR_FORMAT = {"consolidated": False, "zarr_format": 3}

# an array's metadata documents: Zarr v3, else v2
_ARRAY_METADATA = ("zarr.json", ".zarray")


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

    def undecodable(self, selection: tuple[slice, ...]) -> list[tuple[str, str]]:
        """The objects under ``selection`` (explicit start/stop slices of the array) whose
        bytes are fetched whole but do not decode, as (key in the store, decoder's error).

        Each object is fetched, then decoded from memory with the array's own metadata, so
        only its bytes can fail there. A fetch that fails raises (an I/O error says nothing
        about the data); an absent object is the fill value, which always decodes."""
        objects = {d: b for d in _ARRAY_METADATA if (b := self._fetch(d)) is not None}
        array = zarr.open_array(zarr.storage.MemoryStore(store_dict=objects), mode="r")
        size = array.shards or array.chunks
        spans = [
            range(s.start // n, (s.stop - 1) // n + 1) for s, n in zip(selection, size, strict=True)
        ]
        bad = []
        for index in itertools.product(*spans):
            key = array.metadata.encode_chunk_key(index)
            data = self._fetch(key)
            if data is None:
                continue
            objects[key] = data
            whole = tuple(slice(i * n, (i + 1) * n) for i, n in zip(index, size, strict=True))
            try:
                array[whole]
            except Exception as exc:  # whatever the codec raises: the bytes do not decode
                bad.append((f"{self.name}/{key}", f"{type(exc).__name__}: {exc}"))
            del objects[key]
        return bad

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


class RasterStore(FileStore):
    """Zarr operations of :class:`OcrStorage`."""

    def write_zarr(self, ds: xr.Dataset, path: str, encoding: dict | None = None) -> None:
        """A whole Zarr v3 store, swapped into place when complete."""
        with self.atomic_path(path) as tmp:
            ds.to_zarr(
                tmp,
                mode="w-",
                encoding=encoding,
                storage_options=self.storage_options or None,
                **ZARR_FORMAT,
            )

    def write_icechunk(self, ds: xr.Dataset, path: str, encoding: dict | None, message: str) -> str:
        """A whole dataset as one commit on ``main`` of an Icechunk repository at ``path``
        (created if missing; an existing one gets a new snapshot replacing its content), as
        the published inputs are written; returns the snapshot id."""
        repo = icechunk.Repository.open_or_create(self.icechunk_storage(path))
        session = repo.writable_session("main")
        ds.to_zarr(session.store, mode="w", encoding=encoding, consolidated=False, zarr_format=3)
        return str(session.commit(message))

    def ensure_raster_store(self, grid: RegionGrid, crs_wkt: str) -> None:
        """Write the CONUS template (metadata and coordinates) if any part is missing.

        The template's bytes are deterministic, so concurrent writers write identical objects;
        nothing that exists is ever deleted, so no region's data can be lost here.
        """
        path = self.layout.raster_store
        if all(self.exists(f"{path}/{key}/zarr.json") for key in ("", *RISK_VARIABLES)):
            return
        items: dict = {}  # the template's objects by key, filled by zarr's public MemoryStore
        memory = zarr.storage.MemoryStore(store_dict=items)
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
        template.to_zarr(memory, compute=False, encoding=encoding, **ZARR_FORMAT)
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
            storage_options=self.storage_options or None,
            **ZARR_FORMAT,
        )

    def open_raster_store(self) -> xr.Dataset:
        return xr.open_zarr(
            self.layout.raster_store,
            consolidated=False,
            decode_coords="all",
            storage_options=self.storage_options or None,
        )

    def write_consolidated_tree(self, tree: xr.DataTree, path: str, encoding: dict) -> None:
        """A whole tree as Zarr v3 with the root's consolidated metadata, as OCR writes its
        pyramid (``to_zarr`` then ``zarr.consolidate_metadata``); swapped into place at
        ``path`` only when complete, so a failed write leaves the previous tree."""
        options = self.storage_options or None
        with self.atomic_path(path) as tmp:
            tree.to_zarr(tmp, mode="w", zarr_format=3, encoding=encoding, storage_options=options)
            store = (
                zarr.storage.FsspecStore.from_url(tmp, storage_options=options)
                if self.is_s3
                else zarr.storage.LocalStore(tmp)
            )
            with warnings.catch_warnings():  # "not part of the v3 spec": OCR's map reads it
                warnings.filterwarnings("ignore", "Consolidated metadata", UserWarning)
                zarr.consolidate_metadata(store)

    def open_datatree(self, path: str) -> xr.DataTree:
        """Lazily, dask-backed with the stored chunks: a reduction reads a chunk at a time."""
        return xr.open_datatree(
            path,
            engine="zarr",
            consolidated=False,
            chunks={},
            storage_options=self.storage_options or None,
        )
