"""The code location: everything assembled in one place, from one settings object."""

from __future__ import annotations

import dagster as dg

from ocr_assets import aggregation
from ocr_assets.inputs import INPUT_SPECS
from ocr_assets.regions import build_region_assets
from ocr_assets.tiles import TILESET_ASSETS, TILESET_CHECKS
from ocr_jobs.jobs import build_jobs
from ocr_resources.compute import OcrCompute
from ocr_resources.region_catalog import load_valid_region_ids
from ocr_resources.settings import OcrSettings, load_settings
from ocr_resources.storage import OcrStorage


def region_partitions(settings: OcrSettings) -> dg.StaticPartitionsDefinition:
    """One partition per valid region id of the environment's input catalog."""
    return dg.StaticPartitionsDefinition(load_valid_region_ids(settings.region_catalog))


def build_resources(settings: OcrSettings) -> dict[str, dg.ConfigurableResource]:
    """Resources chosen per environment from one settings object."""
    return {
        "storage": OcrStorage(
            root=settings.storage_root,
            environment=settings.environment,
            version=settings.version,
            endpoint_url=settings.s3_endpoint_url,
            model_variant=settings.model_variant,
        ),
        "compute": OcrCompute(
            backend=settings.compute_backend,
            local_workers=settings.local_workers,
            scheduler_address=settings.dask_scheduler_address,
            dask_cluster=settings.dask_cluster,
            coiled_region=settings.coiled_region,
            coiled_workers=settings.coiled_workers,
            overrides=settings.compute_overrides,
        ),
    }


def build_definitions(settings: OcrSettings) -> dg.Definitions:
    partitions = region_partitions(settings)
    return dg.Definitions(
        assets=[
            *INPUT_SPECS,
            build_region_assets(partitions, settings.process_retries),
            *dg.load_assets_from_modules([aggregation]),
            *TILESET_ASSETS,
        ],
        asset_checks=[*dg.load_asset_checks_from_modules([aggregation]), *TILESET_CHECKS],
        jobs=build_jobs(partitions),
        # every job but the single-step region job, incl. the UI's ad-hoc asset runs
        executor=dg.in_process_executor
        if settings.dagster_executor == "in_process"
        else dg.multiprocess_executor,
        resources=build_resources(settings),
    )


@dg.definitions
def defs() -> dg.Definitions:
    """Loaded by ``dagster dev`` / ``dagster definitions validate`` (env file: $OCR_ENV_FILE)."""
    return build_definitions(load_settings())
