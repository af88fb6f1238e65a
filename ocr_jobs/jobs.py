"""Jobs and selections, in one module."""

from __future__ import annotations

import dagster as dg

from ocr_assets.regions import PHASE01_GROUP

REGION_JOB = "region_job"


def build_jobs(partitions: dg.PartitionsDefinition) -> list[dg.UnresolvedAssetJobDefinition]:
    return [
        dg.define_asset_job(
            REGION_JOB,
            selection=dg.AssetSelection.groups(PHASE01_GROUP),
            partitions_def=partitions,
            description="Phase 01: one region partition per run (retries 5 s × attempt).",
            # one step per run: a step subprocess would only add start-up time
            executor_def=dg.in_process_executor,
        ),
    ]


def region_job() -> dg.JobDefinition:
    """The region job rebuilt from settings; module level so Dagster can reconstruct it."""
    from ocr_jobs.definitions import build_definitions
    from ocr_resources.settings import load_settings

    return build_definitions(load_settings()).resolve_job_def(REGION_JOB)
