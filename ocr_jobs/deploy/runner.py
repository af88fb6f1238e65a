"""A deployment's Dagster runs, in its environment's own instance, through Dagster's own run
machinery: submitted to the run coordinator over the webserver's API
(:mod:`ocr_jobs.deploy.services`), launched by the daemon, followed here through the
instance's records until they end (a run that Dagster's run retries redo is followed into its
retry).

Settings reach the runs as a file: the deployment writes its settings as an env file into the
instance home, and the code location of the runs it starts loads them from there.
"""

from __future__ import annotations

import json
import os
import re
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import dagster as dg
import yaml

from ocr_jobs.deploy.plan import DeployRefused
from ocr_jobs.deploy.services import (
    DagsterServices,
    launch_run,
    reexecute_from_failure,
    terminate_runs,
)
from ocr_jobs.process_env import child_environment
from ocr_jobs.run_log import RunLogging
from ocr_resources.instance_storage import POSTGRES_URL_VARIABLE, STORAGE_DIR_VARIABLE
from ocr_resources.settings import (
    DEFAULT_MODEL_VARIANT,
    OcrSettings,
    load_settings,
    packaged_file,
)

DEFAULT_LOGGING = RunLogging()  # the console at INFO, no file
POLL_SECONDS = 0.5
# Dagster's run retries: the tag a failed run gets when it will be retried, and its retry's id
WILL_RETRY_TAG = "dagster/will_retry"
RETRY_RUN_TAG = "dagster/auto_retry_run_id"
RETRY_WAIT_SECONDS = 120  # for the daemon to create the retry it promised
# A failed run's status is written before its will-retry tag (two writes, in
# ``instance.handle_new_event``): a run seen failed without the tag is not yet decided
RETRY_DECISION_SECONDS = 30
STOP_GRACE_SECONDS = 30  # for interrupted runs to end before they are marked canceled


@dataclass(frozen=True)
class RunOutcome:
    partition: str
    success: bool
    run_id: str
    error: str = ""


RANGE_TAGS = ("dagster/asset_partition_range_start", "dagster/asset_partition_range_end")


def partition_tags(regions: list[str]) -> dict[str, str]:
    """The tags of a run of these regions (consecutive partitions), as a UI backfill under the
    region asset's ``BackfillPolicy`` tags it: a range, also for one region."""
    return dict(zip(RANGE_TAGS, (regions[0], regions[-1]), strict=True))


def instance_home_path(settings: OcrSettings) -> Path:
    """``<root>/<env>[-<variant>]`` with ``<root>`` = ``OCR_DAGSTER_HOME_ROOT`` or ``.dagster``
    in the current folder: each environment (and each non-default model variant) keeps its own
    run history and asset status. Nothing is created (``--dry-run`` only reads)."""
    base = Path(settings.dagster_home_root or Path.cwd() / ".dagster")
    # a non-default model variant keeps its own history: its outputs live under other paths
    suffix = "" if settings.model_variant == DEFAULT_MODEL_VARIANT else f"-{settings.model_variant}"
    return (base / f"{settings.environment}{suffix}").absolute()


def instance_variables(settings: OcrSettings, home: Path | None = None) -> dict[str, str]:
    """The variables the top-level ``dagster.yaml`` reads for this environment: its folder
    (``home``, by default :func:`instance_home_path`) and, for a local environment, an empty
    PostgreSQL URL (SQLite). A shared environment's URL, a secret, is left to the process
    environment (``$OCR_DAGSTER_PG_URL``) and never written."""
    folder = {STORAGE_DIR_VARIABLE: str(home or instance_home_path(settings))}
    if settings.dagster_storage == "postgres":
        return folder
    return {**folder, POSTGRES_URL_VARIABLE: ""}


def instance_config(settings: OcrSettings, home: Path | None = None) -> str:
    """The top-level ``dagster.yaml`` (the packaged one) with this environment's folder
    (``home``, by default :func:`instance_home_path`) and, for a local environment, its empty
    PostgreSQL URL written in, for the folder's own ``dagster.yaml``: ``ocr deploy``'s run
    workers and step subprocesses open the instance from there whatever their variables say
    (a shared environment's URL, a secret, stays an ``env:`` reference: unset, an error)."""
    config = yaml.safe_load(packaged_file("dagster.yaml").read_text())
    folder = {"base_dir": str(home or instance_home_path(settings))}
    config["local_artifact_storage"]["config"] = folder
    config["compute_logs"]["config"] = dict(folder)  # no YAML anchors in the copy
    local = settings.dagster_storage != "postgres"
    # local: no PostgreSQL whatever the variables say; shared: the secret read where it is used
    url = "" if local else {"env": POSTGRES_URL_VARIABLE}
    config["storage"]["custom"]["config"] = {**folder, "postgres_url": url}
    return "# generated from the top-level dagster.yaml for this environment: edit that one\n" + (
        yaml.safe_dump(config, sort_keys=False)
    )


def instance_home(settings: OcrSettings) -> Path:
    """The environment's instance home (:func:`instance_home_path`), created with its
    ``dagster.yaml`` (:func:`instance_config`); DeployRefused naming it if it cannot be."""
    home = instance_home_path(settings)
    text = instance_config(settings)
    target = home / "dagster.yaml"
    try:
        home.mkdir(parents=True, exist_ok=True)
        if not target.exists() or target.read_text() != text:
            target.write_text(text)
    except OSError as exc:  # a file in the way, no permission, a read-only disk
        why = exc.strerror or str(exc)
        raise DeployRefused(
            f"the Dagster instance home {home} cannot be used ({why}): expected a folder this "
            "user can write (fix OCR_DAGSTER_HOME_ROOT, or run from a writable folder)"
        ) from None
    return home


def open_instance(home: Path) -> dg.DagsterInstance:
    """The persistent instance configured by ``home/dagster.yaml``, opened from that folder
    rather than from ``$DAGSTER_HOME`` (``local_temp`` given a folder keeps everything there;
    nothing is temporary)."""
    return dg.DagsterInstance.local_temp(tempdir=str(home))


def _region_error(error: str, region: str) -> str:
    """The part of a run's error about one region (the step names each failed region as
    ``region <id> failed …``), else the whole error (the run failed for all its regions)."""
    own = re.search(rf"region {re.escape(region)} failed.*?(?=; region \S+ failed|$)", error)
    return own.group(0) if own else error


def run_to_resume(
    instance: dg.DagsterInstance,
    job_names: tuple[str, ...],
    job_name: str,
    asset_keys: list[str] | None,
) -> dg.DagsterRun | None:
    """The latest run of any of ``job_names`` if it failed or was canceled and ran
    ``job_name`` on the same assets: resuming it redoes exactly the steps that did not
    succeed (Dagster's re-execution from failure takes both)."""
    records = [
        record
        for name in job_names
        for record in instance.get_run_records(dg.RunsFilter(job_name=name), limit=1)
    ]
    if not records:
        return None
    latest = max(records, key=lambda r: r.create_timestamp).dagster_run
    same_assets = set(latest.asset_selection or ()) == {dg.AssetKey(k) for k in asset_keys or ()}
    ended_short = latest.status in (dg.DagsterRunStatus.FAILURE, dg.DagsterRunStatus.CANCELED)
    return latest if ended_short and latest.job_name == job_name and same_assets else None


def resume_log(run: dg.DagsterRun) -> str:
    """Where a re-execution of ``run`` logs: Dagster gives it the run config of the run it
    resumes, so its events go on in that run's deploy log (else only the instance has them)."""
    file_logger = (run.run_config or {}).get("loggers", {}).get("file", {})
    return file_logger.get("config", {}).get("path") or "the instance's event log"


def refuse_settings_the_ui_runs_without(settings: OcrSettings) -> None:
    """A running ``ocr dev`` launches the deployment's runs: they load the environment's file
    as its code location does, so a setting this deployment changed on its command line
    (``--process-retries``) would not reach them. Refused before anything is touched."""
    theirs = load_settings(settings.env_file).model_dump()
    differ = [
        f"{name} {value!r} (the file: {theirs[name]!r})"
        for name, value in settings.model_dump().items()
        if value != theirs[name]
    ]
    if differ:
        raise DeployRefused(
            "an ocr dev serves this environment and its daemon launches the deployment's runs, "
            f"which load {settings.env_file} as its code location does; this deployment's "
            f"{', '.join(differ)} would not reach them: set it in that file, or stop ocr dev"
        )


def _failures(events: list[Any]) -> list[str]:
    """Failed steps with their error, and failed asset checks, by name."""
    found = []
    for e in events:
        if e.is_step_failure and e.step_failure_data and e.step_failure_data.error:
            failure = e.step_failure_data
            # a dg.Failure's description names every failed region; else the root error
            described = failure.user_failure_data and failure.user_failure_data.description
            error = failure.error.cause or failure.error
            message = (described or error.message).strip().splitlines()[0]
            found.append(f"{e.step_key}: {message}")
        elif e.event_type == dg.DagsterEventType.ASSET_CHECK_EVALUATION:
            check = e.event_specific_data
            if not check.passed:
                found.append(f"check {check.asset_key.to_user_string()}.{check.check_name} failed")
    return found


SETTINGS_FILE = "deploy-settings.env"


def write_settings_file(settings: OcrSettings, home: Path) -> Path:
    """The deployment's settings as an env file in the instance home (written whole, then
    moved into place): what the code location of its runs loads, whatever the process
    environment or the command line said."""
    lines = ["# written by ocr deploy: the settings of its runs (edit the environment's file)"]
    for name, value in settings.model_dump(mode="json", exclude={"env_file"}).items():
        if value is None:
            continue
        text = value if isinstance(value, str) else json.dumps(value)
        lines.append(f"OCR_{name.upper()}={text}")
    path = home / SETTINGS_FILE
    temporary = path.with_suffix(f".{os.getpid()}.tmp")
    temporary.write_text("\n".join(lines) + "\n")
    temporary.replace(path)
    return path


def run_environment(settings: OcrSettings, home: Path) -> dict[str, str]:
    """The environment of the Dagster processes a deployment starts: the instance home's
    ``dagster.yaml``, the settings file (no ``OCR_`` setting of this process's environment
    overrides it), telemetry off."""
    settings_variables = {f"OCR_{name.upper()}" for name in OcrSettings.model_fields}
    ours = {
        "DAGSTER_HOME": str(home),
        **instance_variables(settings, home),
        "OCR_ENV_FILE": str(write_settings_file(settings, home)),
    }
    inherited = child_environment()
    kept = {k: v for k, v in inherited.items() if k not in settings_variables}
    return {**kept, **ours}


@dataclass
class _Followed:
    """A submitted run, followed into its retries until one ends for good."""

    label: str
    regions: list[str]
    run_id: str
    retry_promised: float | None = None  # when it ended saying it will be retried
    failure_seen: float | None = None  # when it was first seen failed, before the decision


class DeploymentRuns:
    """Submits one deployment's runs and follows them to their end. Every run carries the
    deployment's tags (``ocr/environment``, ``ocr/deployment``) and its logging config."""

    def __init__(
        self,
        services: DagsterServices,
        instance: dg.DagsterInstance,
        tags: dict[str, str],
        logging: RunLogging = DEFAULT_LOGGING,
    ) -> None:
        self.services = services
        self.instance = instance
        self.tags = tags
        self.logging = logging
        self.live: set[str] = set()  # submitted and not yet ended

    def run(
        self,
        job_name: str,
        asset_keys: list[str] | None = None,
        resume_run_id: str | None = None,
    ) -> RunOutcome:
        """One run of a job (or of some of its assets), or a re-execution of a failed run's
        failed and not-yet-run steps, to its end."""
        if resume_run_id:
            run_id = reexecute_from_failure(self.services, resume_run_id, self.tags)
        else:
            config = self.logging.run_config()
            run_id = launch_run(self.services, job_name, self.tags, config, asset_keys)
        self.live.add(run_id)
        (outcome,) = self._follow([_Followed(job_name, [], run_id)])
        return outcome

    def run_regions(
        self,
        job_name: str,
        runs: list[list[str]],
        on_done: Callable[[RunOutcome], None] | None = None,
    ) -> list[RunOutcome]:
        """Each list of consecutive regions as one run (the runs a UI backfill of them makes),
        all submitted at once: the pool's limit decides how many run together. An outcome per
        region: it succeeded when its run materialized it, whatever its siblings did."""
        followed = []
        for regions in runs:
            tags = {**self.tags, **partition_tags(regions)}
            run_id = launch_run(self.services, job_name, tags, self.logging.run_config())
            self.live.add(run_id)
            label = regions[0] if len(regions) == 1 else f"{regions[0]}…{regions[-1]}"
            followed.append(_Followed(label, regions, run_id))
        partitions = [r for regions in runs for r in regions]
        outcomes = self._follow(followed, on_done)
        return sorted(outcomes, key=lambda o: partitions.index(o.partition))

    def terminate(self, run_ids: list[str], mark_canceled: bool = False) -> None:
        """Ask Dagster to terminate runs (their launcher interrupts their processes); with
        ``mark_canceled``, record them canceled whether or not a process could be reached."""
        terminate_runs(self.services, run_ids, mark_canceled)

    def stop(self, grace_seconds: float = STOP_GRACE_SECONDS) -> None:
        """Terminate this deployment's live runs and wait, a bounded time, for them to end
        (an interrupted deployment leaves nothing running behind it)."""
        live = sorted(self.live)
        if not live:
            return
        self.terminate(live)
        deadline = time.monotonic() + grace_seconds
        while time.monotonic() < deadline:
            runs = self.instance.get_runs(dg.RunsFilter(run_ids=live))
            if all(r.is_finished for r in runs):
                return
            time.sleep(POLL_SECONDS)
        self.terminate(live, mark_canceled=True)

    def _follow(
        self,
        followed: list[_Followed],
        on_done: Callable[[RunOutcome], None] | None = None,
    ) -> list[RunOutcome]:
        """Poll the instance until every run has ended for good; the outcomes, as they come."""
        outcomes: list[RunOutcome] = []
        waiting = list(followed)
        while waiting:
            time.sleep(POLL_SECONDS)
            ids = [f.run_id for f in waiting]
            runs = {r.run_id: r for r in self.instance.get_runs(dg.RunsFilter(run_ids=ids))}
            for item in list(waiting):
                run = runs.get(item.run_id)
                if run is None or not run.is_finished or self._retried(run, item):
                    continue
                waiting.remove(item)
                self.live.discard(item.run_id)
                for outcome in self._outcomes(run, item):
                    outcomes.append(outcome)
                    if on_done:
                        on_done(outcome)
        return outcomes

    def _retried(self, run: dg.DagsterRun, item: _Followed) -> bool:
        """Whether Dagster's run retries take over this ended run: then ``item`` follows the
        retry (or waits, a bounded time, for the daemon to create the one it promised)."""
        if run.status != dg.DagsterRunStatus.FAILURE:
            return False
        will_retry = run.tags.get(WILL_RETRY_TAG)
        if will_retry is None and self.instance.run_retries_enabled:
            item.failure_seen = item.failure_seen or time.monotonic()
            return time.monotonic() - item.failure_seen < RETRY_DECISION_SECONDS
        if will_retry != "true":
            return False
        retry = run.tags.get(RETRY_RUN_TAG)
        if retry:
            self.live.discard(item.run_id)
            self.live.add(retry)
            item.run_id, item.retry_promised, item.failure_seen = retry, None, None
            return True
        item.retry_promised = item.retry_promised or time.monotonic()
        return time.monotonic() - item.retry_promised < RETRY_WAIT_SECONDS

    def _outcomes(self, run: dg.DagsterRun, item: _Followed) -> list[RunOutcome]:
        success = run.status == dg.DagsterRunStatus.SUCCESS
        error = "" if success else self._error(run)
        if not item.regions:
            return [RunOutcome(item.label, success, run.run_id, error)]
        records = self.instance.get_records_for_run(
            run.run_id, of_type=dg.DagsterEventType.ASSET_MATERIALIZATION
        ).records
        done = {r.event_log_entry.dagster_event.partition for r in records}
        return [
            RunOutcome(region, region in done, run.run_id, _region_error(error, region))
            for region in item.regions
        ]

    def _error(self, run: dg.DagsterRun) -> str:
        """What failed in a run, by step and check; else why Dagster ended it."""
        entries = self.instance.all_logs(run.run_id)
        events = [e.dagster_event for e in entries if e.dagster_event is not None]
        found = _failures(events)
        if found:
            return "; ".join(found)
        # a run ended from outside (its process died, a termination): the engine's last word
        said = [
            e.message.strip()
            for e in entries
            if e.dagster_event is not None
            and e.dagster_event.event_type == dg.DagsterEventType.ENGINE_EVENT
            and e.message
        ]
        return said[-1].splitlines()[0] if said else f"run {run.status.value.lower()}"
