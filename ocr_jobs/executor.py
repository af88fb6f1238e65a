"""The code location's executor: a run of one step runs it in the run's own process, a run of
several steps gives each its own process (Dagster's multiprocess executor).

A region run — from a UI backfill, ``dagster asset materialize`` or ``ocr deploy`` — is one
step; a subprocess for it would import the whole scientific stack a second time (~4 s) for no
isolation the run's own process does not already give. The downstream runs keep their steps
side by side in processes.
"""

from __future__ import annotations

from typing import Any

import dagster as dg


class StepCountExecutor(dg.Executor):
    """In process for a one-step plan, multiprocess otherwise (same retry mode for both)."""

    def __init__(self, in_process: dg.Executor, multiprocess: dg.Executor) -> None:
        self._in_process = in_process
        self._multiprocess = multiprocess

    @property
    def retries(self) -> Any:
        return self._multiprocess.retries

    def execute(self, plan_context: Any, execution_plan: Any) -> Any:
        single = len(execution_plan.step_keys_to_execute) == 1
        chosen = self._in_process if single else self._multiprocess
        return chosen.execute(plan_context, execution_plan)


#: how step processes start unless the run config says otherwise: forked from a server that
#: imported the code location once per run (the scientific stack, ~3 s), not spawned and
#: importing it again for every step (Dagster's default, ``spawn``). Named: the run worker's
#: job has no module of its own to preload, so Dagster would preload only ``dagster``
DEFAULT_START_METHOD = {"forkserver": {"preload_modules": ["ocr_jobs.definitions"]}}


def in_process_when_one_step_executor(max_concurrent: int | None = None) -> dg.ExecutorDefinition:
    """Dagster's multiprocess executor (same config; step processes from a forkserver unless
    ``start_method`` is set; at most ``max_concurrent`` steps at once unless the run config
    says otherwise, None: Dagster's default, the CPU count), except for runs of a single step.

    Where the steps' work runs on clusters (Coiled, Dask), a step process only waits for its
    cluster: the driver's CPU count (2–4 on a CI runner) must not decide how many clusters
    run at once, the ``ocr_clusters`` pool does (``OCR_CLUSTER_LIMIT``)."""

    @dg.executor(
        name="in_process_when_one_step",
        config_schema=dg.multiprocess_executor.config_schema,
        requirements=dg.multiple_process_executor_requirements(),
    )
    def in_process_when_one_step(init_context: dg.InitExecutorContext) -> dg.Executor:
        config = {"start_method": DEFAULT_START_METHOD, **init_context.executor_config}
        # the schema's default is None (Dagster's CPU count): only a value the run set wins
        config["max_concurrent"] = config.get("max_concurrent") or max_concurrent
        multiprocess = dg.InitExecutorContext(
            job=init_context.job,
            executor_def=init_context.executor_def,
            executor_config=config,
            instance=init_context.instance,
        )
        return StepCountExecutor(
            dg.in_process_executor.executor_creation_fn(init_context),
            dg.multiprocess_executor.executor_creation_fn(multiprocess),
        )

    return in_process_when_one_step


in_process_when_one_step = in_process_when_one_step_executor()
