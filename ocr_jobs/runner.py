"""Run region partitions as real Dagster runs in the environment's own instance."""

from __future__ import annotations

import multiprocessing
import os
from collections.abc import Callable
from concurrent.futures import ProcessPoolExecutor, as_completed
from dataclasses import dataclass
from pathlib import Path

from ocr_resources.settings import PROJECT_ROOT, OcrSettings

INSTANCE_TEMPLATE = PROJECT_ROOT / "dagster.yaml"


@dataclass(frozen=True)
class RunOutcome:
    partition: str
    success: bool
    run_id: str
    error: str = ""


PG_URL_ENV = "OCR_DAGSTER_PG_URL"
POSTGRES_STORAGE = f"""
# shared environment: run history and asset status in PostgreSQL; ${PG_URL_ENV} holds
# postgresql+psycopg2://user:password@host:5432/dagster (a secret: never written here)
storage:
  postgres:
    postgres_url:
      env: {PG_URL_ENV}
"""


def instance_home(settings: OcrSettings) -> Path:
    """``.dagster/<env>``: each environment keeps its own run history and asset status.

    Its ``dagster.yaml`` is the repository's, plus PostgreSQL storage for shared environments
    (the URL, a secret, stays in the environment and is never written here)."""
    base = (
        Path(settings.dagster_home_root)
        if settings.dagster_home_root
        else PROJECT_ROOT / ".dagster"
    )
    home = base / settings.environment
    home.mkdir(parents=True, exist_ok=True)
    text = INSTANCE_TEMPLATE.read_text()
    if settings.dagster_storage == "postgres":
        text += POSTGRES_STORAGE
    target = home / "dagster.yaml"
    if not target.exists() or target.read_text() != text:
        target.write_text(text)
    return home


def use_environment(settings: OcrSettings) -> Path:
    """Point this process (and the runs it starts) at the environment's env file and instance."""
    home = instance_home(settings)
    os.environ["DAGSTER_HOME"] = str(home)
    if settings.env_file:
        os.environ["OCR_ENV_FILE"] = settings.env_file
    return home


def execute(
    job_name: str, partition: str | None = None, asset_keys: list[str] | None = None
) -> RunOutcome:
    """One Dagster run of a job (one partition, or a subset of its assets) in this process's
    instance ($DAGSTER_HOME)."""
    import dagster as dg

    from ocr_jobs import jobs

    with dg.DagsterInstance.get() as instance:
        result = dg.execute_job(
            dg.reconstructable(getattr(jobs, job_name)),
            instance=instance,
            tags={"dagster/partition": partition} if partition else None,
            asset_selection=[dg.AssetKey(k) for k in asset_keys] if asset_keys else None,
            run_config={"loggers": {"console": {"config": {"log_level": "INFO"}}}},
            raise_on_error=False,
        )
        error = "" if result.success else "; ".join(_failures(result.all_events)) or "run failed"
        return RunOutcome(partition or job_name, result.success, result.run_id, error)


def _failures(events) -> list[str]:
    """Failed steps with their error, and failed asset checks, by name."""
    import dagster as dg

    found = []
    for e in events:
        if e.is_step_failure and e.step_failure_data and e.step_failure_data.error:
            error = e.step_failure_data.error
            message = (error.cause or error).message.strip().splitlines()[0]
            found.append(f"{e.step_key}: {message}")
        elif e.event_type == dg.DagsterEventType.ASSET_CHECK_EVALUATION:
            check = e.event_specific_data
            if not check.passed:
                found.append(f"check {check.asset_key.to_user_string()}.{check.check_name} failed")
    return found


def run_partitions(
    job_name: str,
    partitions: list[str],
    max_parallel: int,
    on_done: Callable[[RunOutcome], None] | None = None,
) -> list[RunOutcome]:
    """Run each partition as its own Dagster run, at most ``max_parallel`` at a time."""
    import dagster as dg

    # create the instance's storage once, before workers race to create its tables
    with dg.DagsterInstance.get():
        pass
    outcomes: list[RunOutcome] = []
    context = multiprocessing.get_context("spawn")
    with ProcessPoolExecutor(max_workers=max(1, max_parallel), mp_context=context) as pool:
        futures = [pool.submit(execute, job_name, p) for p in partitions]
        for future in as_completed(futures):
            outcome = future.result()
            outcomes.append(outcome)
            if on_done:
                on_done(outcome)
    return sorted(outcomes, key=lambda o: partitions.index(o.partition))
