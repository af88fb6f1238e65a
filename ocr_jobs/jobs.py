"""Jobs and asset selections: what each job runs, stated once (no built Definitions here)."""

from __future__ import annotations

from collections.abc import Collection

import dagster as dg

from ocr_assets.constants import (
    OPTIONAL_KEYS,
    OPTIONAL_TAG,
    PHASE01_GROUP,
    PHASE02_GROUP,
    PHASE03_GROUP,
)
from ocr_assets.inputs import INPUT_KEYS

OBSERVE_JOB = "observe_inputs"
REGION_JOB = "region_job"
DOWNSTREAM_JOB = "aggregate_and_tile"
DOWNSTREAM_CORE_JOB = "aggregate_and_tile_core"

DOWNSTREAM = dg.AssetSelection.groups(PHASE02_GROUP, PHASE03_GROUP)
OPTIONAL = dg.AssetSelection.tag(*OPTIONAL_TAG)


def build_jobs(partitions: dg.PartitionsDefinition) -> list[dg.UnresolvedAssetJobDefinition]:
    """The region job (one partition per run) and the downstream jobs with / without the
    optional assets."""
    return [
        dg.define_asset_job(
            OBSERVE_JOB,
            selection=dg.AssetSelection.assets(*INPUT_KEYS),
            description="Record the five inputs' data versions (metadata fingerprints, per "
            "region for the region inputs): what the UI's staleness follows.",
            # five small steps: subprocesses would cost more than the steps
            executor_def=dg.in_process_executor,
        ),
        dg.define_asset_job(
            REGION_JOB,
            selection=dg.AssetSelection.groups(PHASE01_GROUP),
            partitions_def=partitions,
            description="Phase 01: one region, or a range of up to OCR_REGIONS_PER_RUN regions "
            "on one cluster, per run (each region retried on its own, 5 s × attempt).",
        ),
        dg.define_asset_job(
            DOWNSTREAM_JOB,
            selection=DOWNSTREAM,
            description="Phases 02 and 03 over whatever regions exist, optional assets included.",
        ),
        dg.define_asset_job(
            DOWNSTREAM_CORE_JOB,
            selection=DOWNSTREAM - OPTIONAL,
            description="Phases 02 and 03 without the optional pyramid and analysis files.",
        ),
    ]


def downstream_assets(optional: Collection[str], defs: dg.Definitions) -> list[str]:
    """The phase 02/03 assets a deploy builds with the chosen optional assets."""
    unknown = set(optional) - set(OPTIONAL_KEYS)
    if unknown:
        raise ValueError(f"not optional assets: {sorted(unknown)}; expected {OPTIONAL_KEYS}")
    skipped = dg.AssetSelection.assets(*(set(OPTIONAL_KEYS) - set(optional)))
    return sorted(
        k.to_user_string() for k in (DOWNSTREAM - skipped).resolve(defs.resolve_asset_graph())
    )


def with_downstream(
    keys: Collection[str], within: Collection[str], defs: dg.Definitions
) -> list[str]:
    """``keys`` and every asset built from them, among ``within``: what must be rebuilt when
    ``keys``' outputs are (a damaged statistics file: the tiles drawn from it too)."""
    closure = dg.AssetSelection.assets(*keys).downstream().resolve(defs.resolve_asset_graph())
    return sorted(k.to_user_string() for k in closure if k.to_user_string() in set(within))


def downstream_run(optional: Collection[str], defs: dg.Definitions) -> tuple[str, list[str] | None]:
    """(job, asset subset) for phases 02/03 with the chosen optional assets: the core job when
    none is chosen, the full job when all are, else the full job narrowed to a subset of the
    assets of ``defs`` (the built code location)."""
    keys = downstream_assets(optional, defs)
    if not optional:
        return DOWNSTREAM_CORE_JOB, None
    if set(optional) == set(OPTIONAL_KEYS):
        return DOWNSTREAM_JOB, None
    return DOWNSTREAM_JOB, keys


def materializable_asset_keys(defs: dg.Definitions) -> list[dg.AssetKey]:
    """Every asset of ``defs`` a run can write (the inputs are external: never materialized)."""
    return sorted(dg.AssetSelection.all().materializable().resolve(defs.resolve_asset_graph()))


def region_runs(all_regions: list[str], regions: Collection[str], per_run: int) -> list[list[str]]:
    """The runs a backfill of ``regions`` makes under the region asset's ``BackfillPolicy``:
    each stretch of consecutive partitions (in the order of ``all_regions``, the partition
    keys) cut into runs of at most ``per_run``; ``ocr deploy`` makes the very same runs."""
    chosen = set(regions)
    stretches: list[list[str]] = [[]]
    for region in all_regions:
        if region in chosen:
            stretches[-1].append(region)
        elif stretches[-1]:
            stretches.append([])
    return [s[i : i + per_run] for s in stretches for i in range(0, len(s), per_run)]
