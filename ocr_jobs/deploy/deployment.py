"""``ocr deploy``: one environment's deployment as real Dagster runs in its own instance —
storage checks, lock, (wipe), the regions that remain, downstream, (pointer), unlock."""

from __future__ import annotations

import contextlib
import os
import re
import tempfile
import time
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Protocol

import dagster as dg

from ocr_assets.constants import CLUSTER_POOL
from ocr_assets.inputs import REGION_INPUTS
from ocr_assets.region_records import committed_materialized_regions, outputs_older_than_regions
from ocr_assets.step import OUTPUTS_KEY
from ocr_jobs.definitions import build_definitions, region_partitions
from ocr_jobs.deploy.lock import DeploymentLock
from ocr_jobs.deploy.plan import (
    DeployError,
    DeployPlan,
    DeployRefused,
    RegionReport,
    region_report,
)
from ocr_jobs.deploy.runner import (
    DeploymentRuns,
    RunOutcome,
    instance_config,
    instance_home,
    instance_home_path,
    open_instance,
    refuse_settings_the_ui_runs_without,
    resume_log,
    run_environment,
    run_to_resume,
)
from ocr_jobs.deploy.services import DagsterServices, set_pool_limit, ui_daemon_runs
from ocr_jobs.jobs import (
    DOWNSTREAM_CORE_JOB,
    DOWNSTREAM_JOB,
    OBSERVE_JOB,
    REGION_JOB,
    downstream_assets,
    downstream_run,
    materializable_asset_keys,
    region_runs,
    with_downstream,
)
from ocr_jobs.run_log import CONSOLE_QUIET, CONSOLE_VERBOSE, RunLogging
from ocr_resources.deployment_lock import DEPLOYMENT_TAG, ENVIRONMENT_TAG
from ocr_resources.region_catalog import load_valid_region_ids
from ocr_resources.settings import OcrSettings
from ocr_resources.storage import InputDataError, OcrStorage, StorageRootError
from ocr_resources.tools import ToolMissingError, tippecanoe_binary


class DeployProgress(Protocol):
    """What a deployment reports as it goes, for the command line to render (a subclass that
    overrides nothing stays silent)."""

    def started(self, target: str, instance_home: Path) -> None:
        """The checks passed: ``target`` deploys to the instance at ``instance_home``."""

    def say(self, line: str) -> None:
        """A line of the report (wipe, region counts, resumption)."""

    def regions_started(self, total: int) -> None:
        """``total`` regions are about to start."""

    def region_finished(self, outcome: RunOutcome) -> None:
        """One region ended, successfully or not (its run may hold others)."""


@dataclass
class DeployResult:
    report: RegionReport
    region_failures: list[str] = field(default_factory=list)
    downstream_error: str = ""
    pointer: dict[str, Any] | None = None
    stopped: str = ""  # why nothing ran, when nothing had to
    log_file: Path | None = None  # every run's Dagster events and logs, when any run ran


def check_storage(plan: DeployPlan, storage: OcrStorage) -> int:
    """Refusals that need I/O, made before the instance, the lock, a wipe or any run (and not
    by --dry-run, which stays offline): the root exists and is writable, the inputs the deploy
    reads match docs/design.md §3 (the buildings' row groups no region reads checked too), and
    tippecanoe is installed when tiles are built on this machine. Returns the buildings input's
    rows outside every region of the catalog."""
    regions_only = plan.options.regions_only
    try:
        storage.files.check_root()
        storage.inputs.check_inputs(REGION_INPUTS if regions_only else None)
        outside = storage.regions.check_buildings_outside(
            load_valid_region_ids(plan.settings.region_catalog)
        )
        if not regions_only and plan.settings.compute_backend == "local":
            tippecanoe_binary()
    except (InputDataError, StorageRootError, ToolMissingError) as exc:
        raise DeployRefused(str(exc)) from exc
    return outside


def publish_pointer(storage: OcrStorage) -> dict[str, Any]:
    """Point production's "current" at this storage's version (its outputs must exist)."""
    lay = storage.layout
    required = [lay.consolidated_buildings, *(lay.pmtiles(n) for n in ("buildings", "regions"))]
    missing = [p for p in required if not storage.files.exists(p)]
    if missing:
        raise DeployError(f"version {storage.version} has no complete outputs; missing {missing}")
    pointer = {
        "version": storage.version,
        "updated": datetime.now(UTC).isoformat(timespec="seconds"),
        "vector": lay.vector_prefix,
        "raster": lay.raster_prefix,
        "pyramid": lay.pyramid_prefix,
    }
    storage.files.write_json(lay.current_pointer, pointer)
    return pointer


def observe_inputs(
    runs: DeploymentRuns, settings: OcrSettings, storage: OcrStorage
) -> dict[str, dict[str, str]]:
    """Record the inputs' data versions in the instance (the UI's staleness follows them) and
    return the region inputs' versions per region (input -> region -> version)."""
    outcome = runs.run(OBSERVE_JOB)
    if not outcome.success:
        raise DeployError(f"observing the inputs failed: {outcome.error}")
    return region_input_versions(storage, region_partitions(settings).get_partition_keys())


def region_input_versions(storage: OcrStorage, regions: list[str]) -> dict[str, dict[str, str]]:
    """The region inputs' data versions now, per region (input -> region -> version)."""
    return {key: storage.fingerprints.region_input_versions(key, regions) for key in REGION_INPUTS}


def _reason(exc: Exception) -> str:
    """The last line of what Dagster says before its stack trace, without the error's class:
    a config error's message ends with the post-processing error that says what is missing."""
    messages = [getattr(e, "message", str(e)) for e in getattr(exc, "errors", [])] or [str(exc)]
    lines = [ln.strip() for m in messages for ln in m.split("Stack Trace:")[0].splitlines()]
    return re.sub(r"^[\w.]+(Error|Exception): ", "", [ln for ln in lines if ln][-1])


def read_region_report(plan: DeployPlan, storage: OcrStorage) -> RegionReport:
    """The selected regions as a deploy would find them (materialized, stale, to do), read
    from the instance records, the raster store's commits and the inputs without writing: no
    instance home created, no observation run, no lock. A local environment never deployed
    has no records; a shared one's records are read through a throwaway home."""
    settings = plan.settings
    home = instance_home_path(settings)
    if settings.dagster_storage == "sqlite" and not (home / "dagster.yaml").exists():
        return region_report(plan, {}, [], {})
    with contextlib.ExitStack() as stack:
        if settings.dagster_storage == "postgres":  # the records are remote: keep home clean
            home = Path(stack.enter_context(tempfile.TemporaryDirectory()))
            (home / "dagster.yaml").write_text(instance_config(settings, home))
        try:
            instance = stack.enter_context(open_instance(home))
        except Exception as exc:  # the URL unset (a config error), the server unreachable
            raise DeployError(
                f"cannot read the Dagster instance of {plan.target}: {_reason(exc)}"
            ) from exc
        done, uncommitted = committed_materialized_regions(instance, storage)
    current = region_input_versions(storage, [r for r in plan.selection.valid if r in done])
    return region_report(plan, done, uncommitted, current)


def damaged_outputs(
    instance: dg.DagsterInstance, storage: OcrStorage, keys: list[str], verify: bool = False
) -> dict[str, list[str]]:
    """The assets among ``keys`` whose latest materialization's outputs are no longer what it
    wrote (its manifest, :class:`OutputManifests`: sizes, listings, footers and headers; with
    ``verify``, every Parquet page's checksum too), each with what differs; a materialization
    recorded before manifests needs its path to exist."""
    damaged: dict[str, list[str]] = {}
    for key in keys:
        latest = instance.fetch_materializations(dg.AssetKey(key), limit=1).records
        if not latest:
            continue
        metadata = latest[0].asset_materialization.metadata
        if OUTPUTS_KEY in metadata:
            problems = [
                problem
                for path, manifest in metadata[OUTPUTS_KEY].value.items()
                for problem in storage.manifests.output_problems(path, manifest, verify)
            ]
        else:
            path = metadata.get("path")
            gone = path is not None and not storage.files.exists(str(path.value))
            problems = [f"{path.value} is missing"] if gone else []
        if problems:
            damaged[key] = problems
    return damaged


def outdated_outputs(instance: dg.DagsterInstance, keys: list[str]) -> list[str]:
    """The assets among ``keys`` without a materialization newer than the latest region's: a
    deploy that ended before its downstream run did (killed, a worker dead after its region's
    event) left them so."""
    older = outputs_older_than_regions(instance, keys)
    return [key for key in keys if key in older]


def wipe_records(instance: dg.DagsterInstance, defs: dg.Definitions) -> None:
    """Forget the materializations of every asset of ``defs`` (this environment's instance)."""
    instance.wipe_assets(materializable_asset_keys(defs))


# the deployments' log files, in the instance home: never its ``logs/``, Dagster's telemetry
# queue, which its webserver and daemon empty (``ocr_jobs.process_env``)
DEPLOY_LOGS = "deploy-logs"


def _run_logging(home: Path, verbose: bool) -> RunLogging:
    """This deployment's log file, in the instance home's ``deploy-logs/`` (one per
    deployment), and the console's level: errors only, or the events too with ``verbose``."""
    stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%SZ")
    path = home / DEPLOY_LOGS / f"deploy-{stamp}-{os.getpid()}.log"
    path.parent.mkdir(parents=True, exist_ok=True)
    return RunLogging(CONSOLE_VERBOSE if verbose else CONSOLE_QUIET, path)


LIVE_STATUSES = [
    dg.DagsterRunStatus.QUEUED,
    dg.DagsterRunStatus.NOT_STARTED,
    dg.DagsterRunStatus.STARTING,
    dg.DagsterRunStatus.STARTED,
    dg.DagsterRunStatus.CANCELING,
]
LEFTOVER_GRACE_SECONDS = 60  # for Dagster to end the runs of an interrupted deployment


def settle_earlier_runs(
    instance: dg.DagsterInstance, runs: DeploymentRuns, progress: DeployProgress
) -> None:
    """Runs still live when the deployment starts: those of an interrupted deployment are
    terminated through Dagster (its launcher interrupts their processes); ones whose process
    nobody can reach any more are then marked canceled; runs launched from the UI before the
    lock was taken are waited for. Only then are the regions counted."""
    live = instance.get_runs(dg.RunsFilter(statuses=LIVE_STATUSES))
    if not live:
        return
    earlier = [r.run_id for r in live if DEPLOYMENT_TAG in r.tags]
    others = [r.run_id for r in live if DEPLOYMENT_TAG not in r.tags]
    if earlier:
        progress.say(
            f"terminating {len(earlier)} run(s) of an interrupted deployment: {', '.join(earlier)}"
        )
        runs.terminate(earlier)
        deadline = time.monotonic() + LEFTOVER_GRACE_SECONDS
        while time.monotonic() < deadline and _still_live(instance, earlier):
            time.sleep(1)
        if unreachable := _still_live(instance, earlier):
            runs.terminate(unreachable, mark_canceled=True)
    if others:
        progress.say(f"waiting for {len(others)} run(s) already in progress: {', '.join(others)}")
        while _still_live(instance, others):
            time.sleep(1)


def _still_live(instance: dg.DagsterInstance, run_ids: list[str]) -> list[str]:
    runs = instance.get_runs(dg.RunsFilter(run_ids=run_ids))
    return [r.run_id for r in runs if not r.is_finished]


ENDED_SHORT = {dg.DagsterRunStatus.FAILURE: "failed", dg.DagsterRunStatus.CANCELED: "canceled"}


def run_deploy(plan: DeployPlan, storage: OcrStorage, progress: DeployProgress) -> DeployResult:
    """Check storage, lock, (wipe), run the regions that remain, then downstream, (publish the
    pointer), unlock. Raises DeployRefused before touching anything, DeployError after.

    Every run goes through the environment's Dagster instance: submitted to its run
    coordinator, launched by its daemon (:mod:`ocr_jobs.deploy.services`). Interrupted, the
    deployment asks Dagster to terminate its runs before it lets go of the lock."""
    settings, options = plan.settings, plan.options
    outside = check_storage(plan, storage)
    home = instance_home(settings)
    own_daemon = not ui_daemon_runs(home)
    if not own_daemon:
        refuse_settings_the_ui_runs_without(settings)
    progress.started(plan.target, home)
    if outside:
        progress.say(
            f"{outside} row(s) of the buildings input lie outside every region of the catalog "
            "(their covering bbox checked against their geometry): in no output"
        )
    lock = DeploymentLock(
        storage,
        settings.lock_stale_seconds,
        f"ocr deploy ({settings.environment})",
        env_file=settings.env_file,
        say=progress.say,
    )
    lock.acquire()
    try:
        with open_instance(home) as instance, contextlib.ExitStack() as stack:
            logging = _run_logging(home, options.verbose)
            # the services' own output (webserver, daemon, the runs' console) beside the log,
            # or on the terminal with --verbose
            services_log = (
                None
                if options.verbose
                else stack.enter_context(open(logging.file.with_suffix(".dagster.log"), "a"))
            )
            services = stack.enter_context(
                DagsterServices(run_environment(settings, home), own_daemon, services_log)
            )
            progress.say(
                "runs go through the instance's run coordinator; launched by "
                + ("a daemon started for this deployment" if own_daemon else "its running daemon")
            )
            set_pool_limit(services, CLUSTER_POOL, settings.cluster_limit)
            tags = {ENVIRONMENT_TAG: settings.environment, DEPLOYMENT_TAG: lock.owner["id"]}
            runs = DeploymentRuns(services, instance, tags, logging)
            try:
                return _deploy(plan, storage, progress, lock, instance, runs)
            except KeyboardInterrupt:
                runs.stop()  # Dagster terminates what is still running
                raise
    finally:
        lock.release()


def _deploy(
    plan: DeployPlan,
    storage: OcrStorage,
    progress: DeployProgress,
    lock: DeploymentLock,
    instance: dg.DagsterInstance,
    runs: DeploymentRuns,
) -> DeployResult:
    """The deployment's runs: earlier ones settled, (wipe), inputs observed, the regions that
    remain, downstream, (the production pointer)."""
    settings, options = plan.settings, plan.options
    defs = build_definitions(settings)
    valid_all = region_partitions(settings).get_partition_keys()
    settle_earlier_runs(instance, runs, progress)
    if options.wipe:
        wiped = storage.files.wipe_environment()
        wipe_records(instance, defs)
        progress.say(
            f"wiped {len(wiped)} prefix(es) of {settings.environment} and its asset records"
        )
    # the lock is held and no earlier run is live: no writer that could own a temporary is
    if swept := storage.files.remove_dead_temporaries():
        shown = ", ".join(swept[:3]) + (f" and {len(swept) - 3} more" if len(swept) > 3 else "")
        progress.say(f"removed {len(swept)} temporary file(s) that dead writers left: {shown}")
    # done: recorded by Dagster and committed in the raster store
    done, uncommitted = committed_materialized_regions(instance, storage)
    current = observe_inputs(runs, settings, storage)
    report = region_report(plan, done, uncommitted, current)
    result = DeployResult(report, log_file=runs.logging.file)
    for line in report.lines():
        progress.say(line)
    job, keys = downstream_run(options.optional_assets, defs)
    wanted = downstream_assets(options.optional_assets, defs)
    # nothing new upstream: the outputs are verified against what their materializations wrote
    verify = not report.remaining and not options.regions_only
    damaged = damaged_outputs(instance, storage, wanted, options.verify) if verify else {}
    for key, problems in damaged.items():
        progress.say(f"{key}: its outputs are not as written: {'; '.join(problems)}")
    # nothing new upstream, nothing damaged and the last downstream run failed: redo only the
    # steps that did not succeed
    resume = (
        run_to_resume(instance, (DOWNSTREAM_JOB, DOWNSTREAM_CORE_JOB), job, keys)
        if verify and not damaged
        else None
    )
    outdated = outdated_outputs(instance, wanted) if verify and not resume else []
    rebuilt: list[str] = []
    if damaged or outdated:
        # what does not match, and what is built from it; the rest is kept
        rebuilt = with_downstream([*damaged, *outdated], wanted, defs)
        if not options.allow_all_processed and rebuilt != wanted:
            keys = rebuilt
        progress.say(
            "downstream outputs damaged, missing or older than the regions they are built "
            f"from: {', '.join(sorted({*damaged, *outdated}))}; building "
            + ("them and what is built from them" if keys == rebuilt else "every one")
        )
    if not report.remaining and not options.allow_all_processed and not resume and not rebuilt:
        result.stopped = (
            "every selected region is already materialized in this environment; "
            "nothing to do (pass --allow-all-processed to rebuild the downstream "
            "assets anyway"
            + (", --redeploy-stale to redo the stale regions)" if report.stale else ")")
        )
        return result
    # the runs a UI backfill of the same regions makes (the asset's BackfillPolicy)
    region_batches = region_runs(valid_all, report.remaining, settings.regions_per_run)
    if region_batches:
        progress.say(
            f"{len(report.remaining)} region(s) in {len(region_batches)} run(s) of up to "
            f"{settings.regions_per_run} (OCR_REGIONS_PER_RUN), at most {settings.cluster_limit} "
            f"at once (pool {CLUSTER_POOL}, OCR_CLUSTER_LIMIT)"
        )
    lock.check()
    progress.regions_started(len(report.remaining))
    outcomes = runs.run_regions(REGION_JOB, region_batches, progress.region_finished)
    result.region_failures = [f"{o.partition}: {o.error}" for o in outcomes if not o.success]
    if result.region_failures or options.regions_only:
        return result
    lock.check()
    if resume:
        progress.say(
            f"resuming the {ENDED_SHORT[resume.status]} {job} run {resume.run_id} from the steps "
            f"that did not succeed (its events go on in {resume_log(resume)})"
        )
    outcome = runs.run(job, asset_keys=keys, resume_run_id=resume and resume.run_id)
    if not outcome.success:
        result.downstream_error = f"{job}: {outcome.error}"
        return result
    lock.check()
    if settings.environment == "production":
        result.pointer = publish_pointer(storage)
    return result
