"""The code location: everything assembled in one place, from one settings object."""

from __future__ import annotations

from typing import Any

import dagster as dg

from ocr_assets.graph import asset_checks, asset_definitions
from ocr_jobs.executor import in_process_when_one_step_executor
from ocr_jobs.jobs import build_jobs
from ocr_jobs.run_log import LOGGERS
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
        "storage": OcrStorage.from_settings(settings),
        "compute": OcrCompute.from_settings(settings),
    }


def step_concurrency(settings: OcrSettings) -> int | None:
    """How many steps of a run may run at once: with the work on clusters, as many as may
    hold a cluster (the one limit, ``OCR_CLUSTER_LIMIT``, which the ``ocr_clusters`` pool
    enforces across runs); with local compute, the CPU count (None: Dagster's default)."""
    return settings.cluster_limit if settings.compute_backend != "local" else None


def build_definitions(settings: OcrSettings) -> dg.Definitions:
    partitions = region_partitions(settings)
    return dg.Definitions(
        assets=asset_definitions(
            partitions,
            settings.process_retries,
            settings.regions_per_run,
            settings.model_variant,
        ),
        asset_checks=asset_checks(),
        jobs=build_jobs(partitions),
        # every job, incl. the UI's ad-hoc asset runs: one-step runs (regions) in process
        executor=dg.in_process_executor
        if settings.dagster_executor == "in_process"
        else in_process_when_one_step_executor(step_concurrency(settings)),
        resources=build_resources(settings),
        loggers=LOGGERS,
    )


def build_job(job_name: str, **settings: Any) -> dg.JobDefinition:
    """One job, built from settings given as plain values: how a run's worker and its step
    subprocesses rebuild the job that ``ocr deploy`` launched, with the same settings."""
    return build_definitions(OcrSettings(**settings)).resolve_job_def(job_name)


@dg.definitions
def defs() -> dg.Definitions:
    """Loaded by ``dagster dev`` / ``dagster definitions validate`` (env file: $OCR_ENV_FILE,
    else ``envs/local.env`` in the current folder, else the packaged one)."""
    return build_definitions(load_settings())
