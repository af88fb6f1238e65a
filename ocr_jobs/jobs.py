"""Jobs and selections, in one module."""

from __future__ import annotations

import dagster as dg

from ocr_assets.aggregation import OPTIONAL_TAG, PHASE02_GROUP
from ocr_assets.regions import PHASE01_GROUP
from ocr_assets.tiles import PHASE03_GROUP

REGION_JOB = "region_job"
DOWNSTREAM_JOB = "aggregate_and_tile"
DOWNSTREAM_CORE_JOB = "aggregate_and_tile_core"

DOWNSTREAM = dg.AssetSelection.groups(PHASE02_GROUP, PHASE03_GROUP)
OPTIONAL_ASSETS = dg.AssetSelection.tag(*OPTIONAL_TAG)


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
        dg.define_asset_job(
            DOWNSTREAM_JOB,
            selection=DOWNSTREAM,
            description="Phases 02 and 03 over whatever regions exist, optional assets included.",
        ),
        dg.define_asset_job(
            DOWNSTREAM_CORE_JOB,
            selection=DOWNSTREAM - OPTIONAL_ASSETS,
            description="Phases 02 and 03 without the optional pyramid and analysis files.",
        ),
    ]


OPTIONAL_ASSET_KEYS = ("risk_pyramid", "regional_analysis_files")


def downstream_run(optional: set[str]) -> tuple[str, list[str] | None]:
    """(job, asset subset) for phases 02/03 with the chosen optional assets: the core job when
    none is chosen, the full job when all are, else the full job narrowed to a subset."""
    unknown = optional - set(OPTIONAL_ASSET_KEYS)
    if unknown:
        raise ValueError(f"not optional assets: {sorted(unknown)}; expected {OPTIONAL_ASSET_KEYS}")
    if not optional:
        return DOWNSTREAM_CORE_JOB, None
    if optional == set(OPTIONAL_ASSET_KEYS):
        return DOWNSTREAM_JOB, None
    graph = _definitions().resolve_asset_graph()
    skipped = {dg.AssetKey(k) for k in OPTIONAL_ASSET_KEYS} - {dg.AssetKey(k) for k in optional}
    keys = DOWNSTREAM.resolve(graph) - skipped
    return DOWNSTREAM_JOB, sorted(k.to_user_string() for k in keys)


def _definitions() -> dg.Definitions:
    from ocr_jobs.definitions import build_definitions
    from ocr_resources.settings import load_settings

    return build_definitions(load_settings())


def _job(name: str) -> dg.JobDefinition:
    return _definitions().resolve_job_def(name)


def materializable_asset_keys() -> list[dg.AssetKey]:
    graph = _definitions().resolve_asset_graph()
    return sorted(k for k in graph.get_all_asset_keys() if graph.get(k).is_executable)


# Module-level job factories so Dagster can reconstruct each job in another process.
def region_job() -> dg.JobDefinition:
    return _job(REGION_JOB)


def aggregate_and_tile() -> dg.JobDefinition:
    return _job(DOWNSTREAM_JOB)


def aggregate_and_tile_core() -> dg.JobDefinition:
    return _job(DOWNSTREAM_CORE_JOB)
