"""``ocr deploy``: one environment's deployment as real Dagster runs in its own instance."""

from __future__ import annotations

import getpass
import json
import os
import socket
import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from ocr_assets.science.regions import RegionSelection, select_regions
from ocr_resources.region_catalog import load_valid_region_ids
from ocr_resources.settings import OcrSettings
from ocr_resources.storage import OcrStorage

RISK_TYPES = ("fire",)


class DeployError(RuntimeError):
    """A deployment that must not start or did not finish; the message says why."""


@dataclass
class DeployOptions:
    region_ids: list[str] = field(default_factory=list)
    all_region_ids: bool = False
    risk_type: str = "fire"
    create_pyramid: bool = False
    write_regional_stats: bool = False
    wipe: bool = False
    process_retries: int | None = None
    dry_run: bool = False
    allow_all_processed: bool = False
    regions_only: bool = False


@dataclass
class RegionReport:
    selection: RegionSelection
    materialized: list[str]
    remaining: list[str]

    def lines(self) -> list[str]:
        return [
            f"provided: {len(self.selection.provided)}",
            f"valid: {len(self.selection.valid)}",
            f"invalid: {len(self.selection.invalid)}"
            + (f" ({', '.join(self.selection.invalid)})" if self.selection.invalid else ""),
            f"already materialized in this environment: {len(self.materialized)}",
            f"remaining: {len(self.remaining)}",
        ]


def check_options(settings: OcrSettings, options: DeployOptions) -> None:
    """Refusals that need no I/O."""
    if options.risk_type not in RISK_TYPES:
        raise DeployError(
            f"risk type {options.risk_type!r} is not supported; expected one of {RISK_TYPES}"
        )
    if options.all_region_ids == bool(options.region_ids):
        raise DeployError(
            "give either --region-id (one or more) or --all-region-ids, not both or neither"
        )
    if options.regions_only and (options.create_pyramid or options.write_regional_stats):
        raise DeployError("--regions-only runs no downstream asset; drop the optional-asset flags")
    if options.wipe and settings.environment == "production":
        raise DeployError(
            "--wipe is refused for production: earlier versions are kept for rollback"
        )


def check_storage(settings: OcrSettings, options: DeployOptions, storage: OcrStorage) -> None:
    """Refusals that need I/O, made before the lock, a wipe or any run (and not by --dry-run,
    which stays offline): the root exists and is writable, the inputs the deploy reads match
    DESIGN §3, and tippecanoe is installed when tiles are built on this machine."""
    from ocr_assets.regions import REGION_INPUTS
    from ocr_resources.publishing import tippecanoe_binary

    storage.check_root()
    storage.check_inputs(REGION_INPUTS if options.regions_only else None)
    if not options.regions_only and settings.compute_backend == "local":
        tippecanoe_binary()


def select(settings: OcrSettings, options: DeployOptions) -> RegionSelection:
    specs = ["all"] if options.all_region_ids else options.region_ids
    return select_regions(specs, load_valid_region_ids(settings.region_catalog))


# lock ------------------------------------------------------------------------------------------
def lock_path(storage: OcrStorage) -> str:
    """Outside every environment prefix, so a wipe never deletes a running deploy's lock."""
    return f"{storage.root.rstrip('/')}/_deployments/locks/{storage.environment}.json"


class DeploymentLock:
    """One deployment per environment: an exclusively created object in storage, refreshed by a
    heartbeat; a lock whose heartbeat is older than ``stale_seconds`` (a crashed deploy) is
    taken over."""

    def __init__(self, storage: OcrStorage, stale_seconds: int, description: str) -> None:
        self.storage = storage
        self.path = lock_path(storage)
        self.stale_seconds = stale_seconds
        self.owner = {
            "id": uuid.uuid4().hex,
            "description": description,
            "host": socket.gethostname(),
            "pid": os.getpid(),
            "user": getpass.getuser(),
            "started": datetime.now(UTC).isoformat(timespec="seconds"),
        }
        self._stop = threading.Event()
        self._beat: threading.Thread | None = None

    def _payload(self) -> bytes:
        return json.dumps({**self.owner, "heartbeat": time.time()}).encode()

    def holder(self) -> dict[str, Any] | None:
        try:
            return self.storage.read_json(self.path)
        except FileNotFoundError:
            return None

    def acquire(self) -> None:
        for _ in range(3):
            if self.storage.create_exclusive(self.path, self._payload()):
                self._beat = threading.Thread(target=self._heartbeat, daemon=True)
                self._beat.start()
                return
            holder = self.holder()
            if holder is None:
                continue  # released between our attempt and the read
            age = time.time() - float(holder.get("heartbeat", 0))
            if age <= self.stale_seconds:
                raise DeployError(
                    f"another deployment to {self.storage.environment!r} is running: "
                    f"{holder.get('description')} by {holder.get('user')}@{holder.get('host')} "
                    f"(pid {holder.get('pid')}, started {holder.get('started')}, "
                    f"heartbeat {age:.0f} s ago); lock {self.path}"
                )
            self.storage.delete(self.path)  # stale: its owner crashed
        raise DeployError(f"could not take the deployment lock {self.path}")

    def _heartbeat(self) -> None:
        interval = max(5.0, self.stale_seconds / 5)
        while not self._stop.wait(interval):
            holder = self.holder()
            if holder and holder.get("id") == self.owner["id"]:
                self.storage.write_bytes(self.path, self._payload())

    def release(self) -> None:
        self._stop.set()
        if self._beat:
            self._beat.join(timeout=5)
        holder = self.holder()
        if holder and holder.get("id") == self.owner["id"]:
            self.storage.delete(self.path)


# production pointer -----------------------------------------------------------------------------
def pointer_path(storage: OcrStorage) -> str:
    variant = storage.layout.variant_segment
    name = "-".join([storage.environment, *([variant] if variant else []), "current"])
    return f"{storage.root.rstrip('/')}/output/fire-risk/{name}.json"


def publish_pointer(storage: OcrStorage) -> dict[str, Any]:
    """Point "current" at this storage's version (its outputs must exist)."""
    lay = storage.layout
    required = [lay.consolidated_buildings, *(lay.pmtiles(n) for n in ("buildings", "regions"))]
    missing = [p for p in required if not storage.exists(p)]
    if missing:
        raise DeployError(f"version {storage.version} has no complete outputs; missing {missing}")
    pointer = {
        "version": storage.version,
        "updated": datetime.now(UTC).isoformat(timespec="seconds"),
        "vector": lay.vector_prefix,
        "raster": lay.raster_prefix,
        "pyramid": lay.pyramid_prefix,
    }
    storage.write_json(pointer_path(storage), pointer)
    return pointer


# the deployment ---------------------------------------------------------------------------------
def materialized_regions(storage: OcrStorage) -> set[str]:
    """Regions whose latest ``region_buildings`` materialization in this environment's
    instance wrote this storage's path (so another production version's runs don't count)."""
    import dagster as dg

    latest: dict[str, str] = {}
    with dg.DagsterInstance.get() as instance:
        cursor = None
        while True:
            page = instance.fetch_materializations(
                dg.AssetKey("region_buildings"), limit=10_000, cursor=cursor, ascending=False
            )
            for record in page.records:
                materialization = record.asset_materialization
                if materialization.partition and materialization.partition not in latest:
                    latest[materialization.partition] = str(materialization.metadata["path"].value)
            if not page.has_more:
                break
            cursor = page.cursor
    return {
        region for region, path in latest.items() if path == storage.layout.region_buildings(region)
    }


def wipe_records() -> None:
    """Forget this environment's materializations (its instance only)."""
    import dagster as dg

    from ocr_jobs.jobs import materializable_asset_keys

    with dg.DagsterInstance.get() as instance:
        instance.wipe_assets(materializable_asset_keys())


@dataclass
class DeployResult:
    report: RegionReport
    region_failures: list[str] = field(default_factory=list)
    downstream_error: str = ""
    wiped: list[str] = field(default_factory=list)
    pointer: dict[str, Any] | None = None
    stopped: str = ""

    @property
    def ok(self) -> bool:
        return not self.region_failures and not self.downstream_error


def run_deploy(
    settings: OcrSettings,
    options: DeployOptions,
    storage: OcrStorage,
    say: Callable[[str], None],
    on_region: Callable[[Any], None] | None = None,
    before_regions: Callable[[int], None] | None = None,
) -> DeployResult:
    """Lock, (wipe), regions that remain, downstream, (pointer), unlock."""
    from ocr_jobs.jobs import DOWNSTREAM_CORE_JOB, DOWNSTREAM_JOB, REGION_JOB, downstream_run
    from ocr_jobs.runner import execute, failed_run_to_resume, run_partitions

    selection = select(settings, options)
    selection.raise_for_invalid()
    check_storage(settings, options, storage)
    lock = DeploymentLock(
        storage, settings.lock_stale_seconds, f"ocr deploy ({settings.environment})"
    )
    lock.acquire()
    try:
        wiped = []
        if options.wipe:
            wiped = storage.wipe_environment()
            wipe_records()
            say(f"wiped {len(wiped)} prefix(es) of {settings.environment} and its asset records")
        done = materialized_regions(storage)
        report = RegionReport(
            selection,
            materialized=[r for r in selection.valid if r in done],
            remaining=[r for r in selection.valid if r not in done],
        )
        result = DeployResult(report, wiped=wiped)
        for line in report.lines():
            say(line)
        optional = {"risk_pyramid"} if options.create_pyramid else set()
        optional |= {"regional_analysis_files"} if options.write_regional_stats else set()
        job, keys = downstream_run(optional)
        # nothing new upstream and the last downstream run failed: redo only its failed steps
        resume = (
            failed_run_to_resume((DOWNSTREAM_JOB, DOWNSTREAM_CORE_JOB), job, keys)
            if not report.remaining and not options.regions_only
            else None
        )
        if not report.remaining and not options.allow_all_processed and not resume:
            result.stopped = (
                "every selected region is already materialized in this environment; nothing to "
                "do (pass --allow-all-processed to rebuild the downstream assets anyway)"
            )
            return result
        if before_regions:
            before_regions(len(report.remaining))
        outcomes = run_partitions(REGION_JOB, report.remaining, settings.deploy_parallel, on_region)
        result.region_failures = [f"{o.partition}: {o.error}" for o in outcomes if not o.success]
        if result.region_failures or options.regions_only:
            return result
        if resume:
            say(f"resuming the failed {job} run {resume} from its failed steps")
        outcome = execute(job, asset_keys=keys, resume_run_id=resume)
        if not outcome.success:
            result.downstream_error = f"{job}: {outcome.error}"
            return result
        if settings.environment == "production":
            result.pointer = publish_pointer(storage)
        return result
    finally:
        lock.release()
