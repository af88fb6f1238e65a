"""The one way a phase 02/03 asset is declared (its profile, pool and group), runs its step and
reports it."""

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import dagster as dg

from ocr_assets.code_version import source_code_version
from ocr_assets.constants import CLUSTER_POOL, OPTIONAL_KEYS, OPTIONAL_TAG
from ocr_resources.compute import ComputeProfile, OcrCompute
from ocr_resources.storage import OcrStorage

# the materialization metadata that holds each output's manifest, by path
OUTPUTS_KEY = "outputs"


@dataclass
class StepRun:
    """A step's result and what its materialization reports about where and how long it ran."""

    storage: OcrStorage
    result: Any
    compute_metadata: dict[str, Any]
    started: float = field(default_factory=time.perf_counter)

    def materialize(self, outputs: list[str], **metadata: Any) -> dg.MaterializeResult:
        """The step's materialization, with the manifest of each of its ``outputs`` (paths):
        what a later deploy finds there or rebuilds (``OutputManifests``)."""
        return dg.MaterializeResult(
            metadata={
                **metadata,
                OUTPUTS_KEY: dg.MetadataValue.json(
                    {path: self.storage.manifests.output_manifest(path) for path in outputs}
                ),
                "seconds": round(time.perf_counter() - self.started, 3),
                **self.compute_metadata,
                "model_variant": self.storage.model_variant,
            }
        )


def run_step(
    context: dg.AssetExecutionContext,
    storage: OcrStorage,
    compute: OcrCompute,
    fn: Callable[..., Any],
    *args: Any,
    graph: bool = False,
) -> StepRun:
    """``fn(storage, *args)`` on the step's compute (its profile's cluster, or in process);
    ``graph``: ``fn`` builds a dask graph, computed on every worker of the cluster."""
    started = time.perf_counter()
    run = compute.run_graph if graph else compute.run
    result, compute_metadata = run(context, fn, storage, *args)
    return StepRun(storage, result, compute_metadata, started)


def step_asset(
    name: str,
    group: str,
    deps: list[Any],
    description: str,
    kinds: set[str],
    code: tuple[str, ...],
    profile: ComputeProfile,
) -> Callable[[Callable[..., Any]], dg.AssetsDefinition]:
    """``@dg.asset`` for a heavy step: its compute ``profile`` as op tags, the cluster pool,
    its kinds (the badges in the graph), the optional tag when ``OPTIONAL_ASSETS`` lists it
    (a deployment may leave it out), and a code version from the source of ``code``, the
    modules that compute it (a change there makes it stale)."""
    return dg.asset(
        name=name,
        group_name=group,
        deps=deps,
        description=description,
        kinds=kinds,
        code_version=source_code_version(*code),
        tags=dict([OPTIONAL_TAG]) if name in OPTIONAL_KEYS else None,
        op_tags=profile.tags(name),
        pool=CLUSTER_POOL,
    )
