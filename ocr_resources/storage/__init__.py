"""The storage resource: every read and write of the pipeline, atomic, under one root.

``OcrStorage`` is the Dagster resource (configuration, the layout) and hands out one
collaborator per kind of I/O, each a plain class of the module beside it, so a caller's code
says which kind it does: ``files`` (atomic writes, exclusive create, wipe), ``vector``
(GeoParquet, streamed Parquet, PMTiles), ``raster`` (the raster store, Zarr), ``inputs`` (the
inputs, opened and checked), ``regions`` (the region grid, a region's inputs),
``fingerprints`` (the inputs' data versions per region), ``manifests`` (what each output held
when written, compared with storage now).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, TypeVar

from dagster import ConfigurableResource, InitResourceContext
from pydantic import Field, PrivateAttr

from ocr_resources.deployment_lock import refuse_beside_deployment
from ocr_resources.layout import StorageLayout
from ocr_resources.settings import DEFAULT_MODEL_VARIANT, OcrSettings
from ocr_resources.storage.files import FileStore, StorageRootError
from ocr_resources.storage.fingerprints import InputFingerprints
from ocr_resources.storage.geoparquet import PARQUET_WRITE_OPTIONS
from ocr_resources.storage.inputs import InputDataError, InputReader
from ocr_resources.storage.manifests import OutputManifests
from ocr_resources.storage.raster_store import RasterStore
from ocr_resources.storage.regions import RegionReader, wind_tiles
from ocr_resources.storage.vector import BATCH_ROWS, GEOPARQUET_OPTIONS, VectorStore, even_batches

__all__ = [
    "BATCH_ROWS",
    "GEOPARQUET_OPTIONS",
    "PARQUET_WRITE_OPTIONS",
    "FileStore",
    "InputDataError",
    "InputFingerprints",
    "InputReader",
    "OcrStorage",
    "OutputManifests",
    "RasterStore",
    "RegionReader",
    "StorageRootError",
    "VectorStore",
    "even_batches",
    "wind_tiles",
]

T = TypeVar("T")


class OcrStorage(ConfigurableResource):
    """Storage root, environment and version; resolves paths and hands out the collaborators
    that own every read and write (each built once per resource, on first use)."""

    root: str
    environment: str = "local"
    version: str | None = None
    endpoint_url: str | None = None  # an S3-compatible endpoint (e.g. a test server)
    # the fire model's numerics; a non-default variant's outputs live under their own prefix
    model_variant: str = DEFAULT_MODEL_VARIANT
    # the inputs' root (the published catalog's layout under it; None: "<root>-inputs") and
    # per-input overrides by catalog name (ocr_resources.layout.check_input_override)
    input_root: str | None = None
    input_overrides: dict[str, dict[str, str]] = Field(default_factory=dict)
    # a deployment lock whose heartbeat is older than this is no longer in force
    lock_stale_seconds: int = 900
    # the collaborators built so far, by name: private, so never part of the config (nor of
    # the copies Dagster makes of the resource, which build their own)
    _collaborators: dict[str, Any] = PrivateAttr(default_factory=dict)

    @classmethod
    def from_settings(cls, settings: OcrSettings) -> OcrStorage:
        """The environment's storage (local folder or S3 bucket, version, model variant,
        inputs), its layout checked at once: an output root over an input is refused before
        anything runs."""
        storage = cls(
            root=settings.storage_root,
            environment=settings.environment,
            version=settings.version,
            endpoint_url=settings.s3_endpoint_url,
            model_variant=settings.model_variant,
            input_root=settings.input_root,
            input_overrides=settings.input_overrides,
            lock_stale_seconds=settings.lock_stale_seconds,
        )
        storage.layout  # noqa: B018 (building the layout checks the roots)
        return storage

    def setup_for_execution(self, context: InitResourceContext) -> None:
        """Every run, from any door (the UI, ``dagster asset materialize``, ``ocr deploy``),
        starts here: it is refused (LockHeldError naming the holder) while another deployment
        holds the environment's lock, so nothing writes beside a running deploy. Outside a
        run (the command line, a resource built directly) there is nothing to check."""
        if context.dagster_run is not None:
            refuse_beside_deployment(self, self.lock_stale_seconds, context.dagster_run.tags)

    @property
    def layout(self) -> StorageLayout:
        return StorageLayout(
            self.root,
            self.environment,
            self.version,
            self.model_variant,
            self.input_root,
            self.input_overrides,
        )

    def spec(self) -> dict[str, Any]:
        """Plain values to rebuild this resource in a Dask worker (resources do not pickle)."""
        return {
            "root": self.root,
            "environment": self.environment,
            "version": self.version,
            "endpoint_url": self.endpoint_url,
            "model_variant": self.model_variant,
            "input_root": self.input_root,
            "input_overrides": self.input_overrides,
            "lock_stale_seconds": self.lock_stale_seconds,
        }

    def _collaborator(self, name: str, build: Callable[[], T]) -> T:
        """The collaborator ``name``, built on first use (from the layout, checked then)."""
        if name not in self._collaborators:
            self._collaborators[name] = build()
        return self._collaborators[name]

    @property
    def files(self) -> FileStore:
        return self._collaborator("files", lambda: FileStore(self.layout, self.endpoint_url))

    @property
    def vector(self) -> VectorStore:
        return self._collaborator("vector", lambda: VectorStore(self.files, self.layout))

    @property
    def manifests(self) -> OutputManifests:
        return self._collaborator("manifests", lambda: OutputManifests(self.files, self.vector))

    @property
    def raster(self) -> RasterStore:
        return self._collaborator("raster", lambda: RasterStore(self.files, self.layout))

    @property
    def inputs(self) -> InputReader:
        return self._collaborator(
            "inputs", lambda: InputReader(self.files, self.vector, self.layout)
        )

    @property
    def regions(self) -> RegionReader:
        return self._collaborator("regions", lambda: RegionReader(self.inputs, self.layout))

    @property
    def fingerprints(self) -> InputFingerprints:
        return self._collaborator(
            "fingerprints",
            lambda: InputFingerprints(
                self.files, self.vector, self.inputs, self.regions, self.layout
            ),
        )
