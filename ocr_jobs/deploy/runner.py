"""Dagster runs of the code location's jobs in one environment's own instance.

Nothing travels through the process environment: the instance is opened from its home folder,
and every run gets the settings as arguments of the function that rebuilds its job
(``ocr_jobs.definitions.build_job``), so run workers and step subprocesses build the job from
the very settings the deployment was given.
"""

from __future__ import annotations

import contextlib
import multiprocessing
import os
import re
import signal
import sys
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from logging import shutdown as shutdown_logging
from multiprocessing.connection import Connection, wait
from pathlib import Path
from typing import Any

import dagster as dg
import psutil
import yaml

from ocr_jobs.run_log import RunLogging
from ocr_resources.deployment_lock import ProcessOwner
from ocr_resources.instance_storage import POSTGRES_URL_VARIABLE, STORAGE_DIR_VARIABLE
from ocr_resources.settings import DEFAULT_MODEL_VARIANT, OcrSettings, packaged_file

DEFAULT_LOGGING = RunLogging()  # the console at INFO, no file


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


# the process that executes a deploy's run, so the next deploy can tell a run whose process is
# gone (killed, out of memory, a laptop closed) from one still running
OWNER_TAGS = ("ocr/host", "ocr/pid", "ocr/pid_started", "ocr/pid_namespace")


def owner_tags() -> dict[str, str]:
    """This process, as the owner of the runs it executes."""
    owner = ProcessOwner.current()
    values = (owner.host, str(owner.pid), f"{owner.started:.3f}", owner.namespace or "")
    return dict(zip(OWNER_TAGS, values, strict=True))


def _run_owner(tags: dict[str, str]) -> ProcessOwner | None:
    """The process a deploy's run recorded as its owner; None for runs launched elsewhere
    (e.g. from the UI: Dagster's run monitoring looks after those)."""
    host, pid, started, namespace = (tags.get(t) for t in OWNER_TAGS)
    if host is None or pid is None or started is None:
        return None
    return ProcessOwner(host, int(pid), float(started), namespace or None)


def _step_processes(instance: dg.DagsterInstance, run: dg.DagsterRun) -> list[psutil.Process]:
    """The run's step subprocesses still alive on this host (orphans once their parent died):
    the pids of its STEP_WORKER_STARTED events, started after the run was."""
    records = instance.get_records_for_run(
        run.run_id, of_type=dg.DagsterEventType.STEP_WORKER_STARTED
    ).records
    started = float(run.tags[OWNER_TAGS[2]])
    found = []
    for record in records:
        entry = record.event_log_entry.dagster_event.event_specific_data.metadata.get("pid")
        try:
            process = psutil.Process(int(entry.value))
            # a step process (multiprocessing's spawn or forkserver child) started for this
            # run, not a later process that reuses the pid of one long finished
            step_child = "multiprocessing" in " ".join(process.cmdline())
            if step_child and process.create_time() >= started and record.timestamp >= started:
                found.append(process)
        except (psutil.NoSuchProcess, psutil.AccessDenied, ValueError, AttributeError):
            continue
    return found


def recover_dead_runs(
    instance: dg.DagsterInstance, reason: str = "the deploy process that ran it is gone"
) -> list[str]:
    """Record as failed every run of a deploy on this host whose process is gone (it stays
    STARTED forever otherwise, and a failed run is what the next deploy resumes), and stop its
    orphaned step processes (they would go on writing without the lock). Runs launched by the
    UI are left to Dagster's run monitoring (the daemon's); runs of other hosts to their own.
    Returns the recovered runs' ids."""
    status = dg.DagsterRunStatus
    live = [status.NOT_STARTED, status.STARTING, status.STARTED, status.CANCELING]
    recovered = []
    for run in instance.get_runs(filters=dg.RunsFilter(statuses=live)):
        owner = _run_owner(run.tags)
        if owner is None or owner.alive() is not False:
            continue
        orphans = _step_processes(instance, run)
        for process in orphans:
            with contextlib.suppress(psutil.NoSuchProcess):
                for member in [*process.children(recursive=True), process]:
                    with contextlib.suppress(psutil.NoSuchProcess):
                        member.kill()
        psutil.wait_procs(orphans, timeout=10)
        stopped = f"; {len(orphans)} orphaned step process(es) stopped" if orphans else ""
        instance.report_run_failed(run, f"{reason} (pid {run.tags[OWNER_TAGS[1]]}){stopped}")
        recovered.append(run.run_id)
    return recovered


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
    ``dagster.yaml`` (:func:`instance_config`)."""
    home = instance_home_path(settings)
    home.mkdir(parents=True, exist_ok=True)
    text = instance_config(settings)
    target = home / "dagster.yaml"
    if not target.exists() or target.read_text() != text:
        target.write_text(text)
    return home


def open_instance(home: Path) -> dg.DagsterInstance:
    """The persistent instance configured by ``home/dagster.yaml``, opened from that folder
    rather than from ``$DAGSTER_HOME`` (``local_temp`` given a folder keeps everything there;
    nothing is temporary)."""
    return dg.DagsterInstance.local_temp(tempdir=str(home))


def reconstructable_job(settings: OcrSettings, job_name: str) -> Any:
    """The job, rebuildable in another process from the settings' plain values."""
    return dg.build_reconstructable_job(
        "ocr_jobs.definitions",
        "build_job",
        reconstructable_args=(job_name,),
        reconstructable_kwargs=settings.model_dump(mode="json"),
    )


def execute(
    instance: dg.DagsterInstance,
    settings: OcrSettings,
    job_name: str,
    regions: list[str] | None = None,
    asset_keys: list[str] | None = None,
    resume_run_id: str | None = None,
    logging: RunLogging = DEFAULT_LOGGING,
) -> RunOutcome:
    """One Dagster run of a job (consecutive region partitions, or a subset of its assets);
    with ``resume_run_id``, a re-execution of that failed run's failed and not-yet-run steps
    only. ``logging``: how loud the console is, and the file that gets every event."""
    result = dg.execute_job(
        reconstructable_job(settings, job_name),
        instance=instance,
        tags={**owner_tags(), **(partition_tags(regions) if regions else {})},
        asset_selection=[dg.AssetKey(k) for k in asset_keys] if asset_keys else None,
        run_config=logging.run_config(),
        reexecution_options=(
            dg.ReexecutionOptions.from_failure(resume_run_id, instance) if resume_run_id else None
        ),
        raise_on_error=False,
    )
    error = "" if result.success else "; ".join(_failures(result.all_events)) or "run failed"
    label = (regions[0] if len(regions) == 1 else f"{regions[0]}…{regions[-1]}") if regions else ""
    return RunOutcome(label or job_name, result.success, result.run_id, error)


def execute_regions(
    instance: dg.DagsterInstance,
    settings: OcrSettings,
    job_name: str,
    regions: list[str],
    logging: RunLogging = DEFAULT_LOGGING,
) -> list[RunOutcome]:
    """One run of consecutive regions; an outcome per region: it succeeded when the run
    materialized it, whatever happened to its siblings."""
    outcome = execute(instance, settings, job_name, regions, logging=logging)
    records = instance.get_records_for_run(
        outcome.run_id, of_type=dg.DagsterEventType.ASSET_MATERIALIZATION
    ).records
    done = {r.event_log_entry.dagster_event.partition for r in records}
    return [
        RunOutcome(region, region in done, outcome.run_id, _region_error(outcome.error, region))
        for region in regions
    ]


def _region_error(error: str, region: str) -> str:
    """The part of a run's error about one region (the step names each failed region as
    ``region <id> failed …``), else the whole error (the run failed for all its regions)."""
    own = re.search(rf"region {re.escape(region)} failed.*?(?=; region \S+ failed|$)", error)
    return own.group(0) if own else error


def failed_run_to_resume(
    instance: dg.DagsterInstance,
    job_names: tuple[str, ...],
    job_name: str,
    asset_keys: list[str] | None,
) -> str | None:
    """The latest run of any of ``job_names`` if it failed and ran ``job_name`` on the same
    assets: resuming it redoes exactly the steps that did not succeed."""
    records = [
        record
        for name in job_names
        for record in instance.get_run_records(dg.RunsFilter(job_name=name), limit=1)
    ]
    if not records:
        return None
    latest = max(records, key=lambda r: r.create_timestamp).dagster_run
    same_assets = set(latest.asset_selection or ()) == {dg.AssetKey(k) for k in asset_keys or ()}
    failed = latest.status == dg.DagsterRunStatus.FAILURE
    return latest.run_id if failed and latest.job_name == job_name and same_assets else None


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


def _serve_runs(
    conn: Connection, home: str, settings: OcrSettings, job_name: str, logging: RunLogging
) -> None:
    """Worker process body: run the region runs it is sent, one at a time, sending back their
    regions' outcomes; imports and the instance are paid once per worker, not once per run.

    Ctrl-C is the deploy's to report: a worker starts with SIGINT ignored (no traceback from
    its start-up imports), then leaves the terminal's session, so neither it nor Dagster's
    helper processes see the terminal's Ctrl-C. The deploy stops it with :data:`STOP_SIGNAL`
    instead (:class:`RegionWorkers`), which ends a worker still starting and, from here on,
    interrupts its run quietly (:func:`_interrupt_quietly`)."""
    os.setsid()
    signal.signal(signal.SIGINT, signal.default_int_handler)
    signal.signal(STOP_SIGNAL, _interrupt_quietly)
    try:
        with open_instance(Path(home)) as instance:
            while (regions := conn.recv()) is not None:
                conn.send(execute_regions(instance, settings, job_name, regions, logging))
    except (KeyboardInterrupt, EOFError):  # stopped, or the deploy is gone
        pass
    # Every run is recorded and the instance closed: the interpreter's own teardown of the
    # scientific stack (~2 s, which the deploy would wait for) has nothing left to do.
    sys.stdout.flush()
    sys.stderr.flush()
    shutdown_logging()
    os._exit(0)


# how an interrupted deploy stops its workers (its default action ends one still starting),
# and how long it waits for them before it kills them
STOP_SIGNAL = signal.SIGUSR1
STOP_GRACE_SECONDS = 3.0


def _interrupt_quietly(signum: int, frame: Any) -> None:
    """The deploy was interrupted and says so once: silence this worker's console (Dagster's
    console logger writes to whatever ``sys.stderr`` is; the events still reach the instance
    and the deploy's log file), then interrupt it as Ctrl-C would (Dagster records the run it
    interrupts as failed)."""
    quiet = open(os.devnull, "w")  # noqa: SIM115  (for the rest of this process's life)
    sys.stdout = sys.stderr = quiet
    os.dup2(quiet.fileno(), 1)
    os.dup2(quiet.fileno(), 2)
    os.kill(os.getpid(), signal.SIGINT)


@contextlib.contextmanager
def _sigint_ignored() -> Iterator[None]:
    """SIGINT ignored while a worker is spawned: a child starts with an ignored signal still
    ignored, so Python gives it no KeyboardInterrupt until :func:`_serve_runs` takes it."""
    if threading.current_thread() is not threading.main_thread():
        yield  # signal handlers belong to the main thread
        return
    previous = signal.signal(signal.SIGINT, signal.SIG_IGN)
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, previous)


@dataclass
class _Worker:
    process: Any
    conn: Connection
    regions: list[str] | None = None  # the regions of the run it is doing


class RegionWorkers:
    """Worker processes for the region runs of one deployment.

    A worker pays its imports (~4 s) before its first run; :meth:`start` lets the deploy
    start them while it still observes the inputs, so that time overlaps its own. Leaving
    the ``with`` block ends every worker: one still starting is stopped, one idle is told
    to finish."""

    def __init__(
        self,
        home: Path,
        settings: OcrSettings,
        job_name: str,
        max_parallel: int,
        logging: RunLogging = DEFAULT_LOGGING,
    ) -> None:
        self._args = (str(home), settings, job_name, logging)
        self._home = home
        self._max = max(1, max_parallel)
        self._context = multiprocessing.get_context("spawn")
        self._workers: list[_Worker] = []
        self._used = False

    def __enter__(self) -> RegionWorkers:
        return self

    def __exit__(self, kind: Any, *_: Any) -> None:
        self.close(interrupted=kind is KeyboardInterrupt)

    def close(self, interrupted: bool = False) -> None:
        """End every worker: an idle one finishes; one interrupted or never given a run is
        stopped (it left the terminal's session, so the deploy's Ctrl-C did not reach it).

        A stopped worker gets :data:`STOP_GRACE_SECONDS` to end its run, then is killed:
        Dagster answers an interrupted step with its retry policy (made for preempted
        machines), so a region run would go on after the user's Ctrl-C. The runs of a killed
        worker are recorded failed here, as any dead worker's are."""
        stop = interrupted or not self._used
        for worker in self._workers:
            if not worker.process.is_alive():
                continue
            if stop:
                os.kill(worker.process.pid, STOP_SIGNAL)
            else:
                with contextlib.suppress(BrokenPipeError):  # ending already (Ctrl-C)
                    worker.conn.send(None)
        deadline = time.monotonic() + STOP_GRACE_SECONDS
        for worker in self._workers:
            worker.process.join(max(0.0, deadline - time.monotonic()) if stop else None)
        killed = [w for w in self._workers if w.process.is_alive()]
        for worker in killed:
            worker.process.kill()
            worker.process.join()
        if killed:
            with open_instance(self._home) as instance:
                recover_dead_runs(instance, "the deployment was interrupted")
        self._workers.clear()

    def start(self, count: int) -> None:
        """Up to ``count`` workers (at most the parallel limit) starting now."""
        while len(self._workers) < min(count, self._max):
            conn, child = self._context.Pipe()
            process = self._context.Process(target=_serve_runs, args=(child, *self._args))
            with _sigint_ignored():
                process.start()
            child.close()
            self._workers.append(_Worker(process, conn))

    def run(
        self,
        runs: list[list[str]],
        on_done: Callable[[RunOutcome], None] | None = None,
    ) -> list[RunOutcome]:
        """Each list of consecutive regions as one Dagster run, at most the parallel limit at
        a time; an outcome per region. A worker that dies (killed, out of memory) fails only
        the run it was doing, which is recorded failed; a fresh worker takes its place."""
        self._used = True
        partitions = [r for run in runs for r in run]
        waiting = list(reversed(runs))
        workers = self._workers
        outcomes: list[RunOutcome] = []

        def finish(worker: _Worker, finished: list[RunOutcome]) -> None:
            worker.regions = None
            for outcome in finished:
                outcomes.append(outcome)
                if on_done:
                    on_done(outcome)

        with open_instance(self._home) as instance:
            while waiting or any(w.regions for w in workers):
                self.start(len(workers) + len(waiting) - sum(w.regions is None for w in workers))
                for worker in workers:
                    if worker.regions is None and waiting:
                        worker.regions = waiting.pop()
                        # one that died starting is found by its sentinel below, as any dead
                        with contextlib.suppress(BrokenPipeError):
                            worker.conn.send(worker.regions)
                busy = [w for w in workers if w.regions]
                ready = wait([w.conn for w in busy] + [w.process.sentinel for w in busy])
                for worker in busy:
                    if worker.conn in ready and worker.conn.poll():
                        try:
                            finish(worker, worker.conn.recv())
                            continue
                        except EOFError:
                            pass
                    if worker.conn in ready or worker.process.sentinel in ready:
                        worker.process.join()
                        regions = worker.regions
                        code = worker.process.exitcode
                        error = f"the run's process exited with code {code} before finishing"
                        recover_dead_runs(instance, error)
                        finish(worker, [RunOutcome(r, False, "", error) for r in regions])
                        workers.remove(worker)
        return sorted(outcomes, key=lambda o: partitions.index(o.partition))
