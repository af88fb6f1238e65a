"""The storage resource: every read and write of the pipeline, atomic, under one root.

``OcrStorage`` is one Dagster resource assembled from the modules beside it, each one kind of
I/O: ``files`` (atomic writes, exclusive create, wipe), ``vector`` (GeoParquet, streamed
Parquet), ``raster_store`` (Zarr), ``inputs`` (the inputs' checks), ``regions`` (a region's
inputs), ``fingerprints`` (the inputs' data versions per region), ``manifests`` (what each
output held when written, compared with storage now).
"""

from __future__ import annotations

from typing import Any

from dagster import ConfigurableResource, InitResourceContext
from pydantic import Field

from ocr_resources.deployment_lock import refuse_beside_deployment
from ocr_resources.layout import StorageLayout
from ocr_resources.settings import DEFAULT_MODEL_VARIANT, OcrSettings
from ocr_resources.storage.files import StorageRootError
from ocr_resources.storage.fingerprints import InputFingerprints
from ocr_resources.storage.geoparquet import PARQUET_WRITE_OPTIONS
from ocr_resources.storage.inputs import InputDataError
from ocr_resources.storage.manifests import OutputManifests
from ocr_resources.storage.raster_store import RasterStore
from ocr_resources.storage.regions import wind_tiles
from ocr_resources.storage.vector import BATCH_ROWS, GEOPARQUET_OPTIONS, even_batches

__all__ = [
    "BATCH_ROWS",
    "GEOPARQUET_OPTIONS",
    "PARQUET_WRITE_OPTIONS",
    "InputDataError",
    "OcrStorage",
    "StorageRootError",
    "even_batches",
    "wind_tiles",
]


class OcrStorage(InputFingerprints, RasterStore, OutputManifests, ConfigurableResource):
    """Storage root, environment and version; resolves paths and owns every read and write."""

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
