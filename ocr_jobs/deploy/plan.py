"""What a deployment will do, decided without I/O: the refusals, the region selection, the
optional assets the flags ask for, and the plan ``--dry-run`` prints."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from ocr_assets.constants import OPTIONAL_ASSETS
from ocr_assets.tiles import TILESETS
from ocr_resources.layout import StorageLayout
from ocr_resources.region_catalog import load_valid_region_ids
from ocr_resources.settings import OcrSettings
from ocr_science.model_version import model_code_version
from ocr_science.regions import RegionSelection, select_regions
from ocr_science.statistics import CENSUS_LEVELS

RISK_TYPES = ("fire",)
STALE_LISTED = 20  # stale regions the report names one by one


class DeployError(RuntimeError):
    """A deployment that must not start or did not finish; the message says why."""


class DeployRefused(DeployError):
    """A deployment refused before it touched anything (no instance, lock or write)."""


@dataclass(frozen=True)
class DeployOptions:
    """The ``ocr deploy`` flags that shape a deployment."""

    region_ids: list[str] = field(default_factory=list)
    all_region_ids: bool = False
    risk_type: str = "fire"
    # the keys of the optional assets asked for (one flag each, ``OPTIONAL_ASSETS``)
    optional_assets: tuple[str, ...] = ()
    wipe: bool = False
    allow_all_processed: bool = False
    regions_only: bool = False
    redeploy_stale: bool = False  # also redo regions whose inputs or model changed
    # regions to compute again even though materialized (e.g. a region file found corrupt)
    recompute: list[str] = field(default_factory=list)
    # the Parquet outputs' pages read and their checksums verified (else sizes, footers)
    verify: bool = False
    verbose: bool = False  # the runs' Dagster events on the console too (always in the log file)


def check_options(settings: OcrSettings, options: DeployOptions) -> None:
    """Refusals that need no I/O."""
    if options.risk_type not in RISK_TYPES:
        raise DeployRefused(
            f"risk type {options.risk_type!r} is not supported; expected one of {RISK_TYPES}"
        )
    named = bool(options.region_ids or options.recompute)
    if (options.all_region_ids and options.region_ids) or not (options.all_region_ids or named):
        raise DeployRefused(
            "give --region-id or --recompute (one or more), or --all-region-ids, but not "
            "--region-id with --all-region-ids"
        )
    if options.regions_only and options.optional_assets:
        raise DeployRefused(
            "--regions-only runs no downstream asset; drop the optional-asset flags"
        )
    if options.wipe and settings.environment == "production":
        raise DeployRefused(
            "--wipe is refused for production: earlier versions are kept for rollback"
        )


@dataclass(frozen=True)
class DeployPlan:
    """A deployment that passed every check made without I/O."""

    settings: OcrSettings
    options: DeployOptions
    selection: RegionSelection
    recompute: tuple[str, ...] = ()  # the valid ids --recompute names (ranges expanded)

    @property
    def target(self) -> str:
        return deploy_target(self.settings)


def deploy_target(settings: OcrSettings) -> str:
    """The environment, with its version in production: ``qa``, ``production v1.2.0``."""
    version = settings.version
    return settings.environment + (f" v{version}" if version else "")


def plan_deploy(settings: OcrSettings, options: DeployOptions) -> DeployPlan:
    """Check the options and select the regions; raises DeployRefused or RegionIdError."""
    check_options(settings, options)
    valid = load_valid_region_ids(settings.region_catalog)
    specs = ["all"] if options.all_region_ids else [*options.region_ids, *options.recompute]
    selection = select_regions(specs, valid)
    selection.raise_for_invalid()
    recompute = select_regions(options.recompute, valid) if options.recompute else None
    return DeployPlan(settings, options, selection, tuple(recompute.valid if recompute else ()))


@dataclass(frozen=True)
class DryRun:
    """What ``--dry-run`` reports: where the deployment would write, and what it would do."""

    target: str
    location: str
    selection_report: str
    regions: list[str]
    wipe: list[str] | None  # the prefixes a wipe deletes; None: no wipe
    optional_assets: tuple[str, ...]
    # the state of each selected region as the deploy would find it; None: it could not be
    # read (``unknown`` says why)
    report: RegionReport | None = None
    unknown: str = ""


def dry_run(
    plan: DeployPlan, layout: StorageLayout, report: RegionReport | None, unknown: str = ""
) -> DryRun:
    return DryRun(
        target=plan.target,
        location=layout.vector_prefix,
        selection_report=plan.selection.report(),
        regions=list(plan.selection.valid),
        wipe=list(layout.environment_prefixes()) if plan.options.wipe else None,
        optional_assets=plan.options.optional_assets,
        report=report,
        unknown=unknown,
    )


@dataclass
class RegionReport:
    """The selected regions split into those this environment has and those still to run."""

    selection: RegionSelection
    materialized: list[str]
    remaining: list[str]
    # materialized regions whose inputs or model changed since, with why
    stale: dict[str, list[str]] = field(default_factory=dict)
    # recorded as materialized, but without their commit in the raster store: redone
    uncommitted: list[str] = field(default_factory=list)

    def state(self, region: str) -> str:
        """One selected region as the deploy finds it: materialized, stale (with why) or to
        do, and whether this deploy runs it."""
        why = ", ".join(self.stale.get(region, []))
        if region not in self.remaining:
            return f"stale: {why} (kept; --redeploy-stale redoes it)" if why else "materialized"
        if why:
            return f"stale: {why} (to do: --redeploy-stale)"
        if region in self.uncommitted:
            return "to do (recorded, but its commit is missing from the raster store)"
        return "to do (--recompute)" if region in self.materialized else "to do"

    def state_counts(self) -> str:
        """``N materialized, N stale, N to do``: each selected region counted once (a stale
        region as stale, whether this deploy redoes it or not)."""
        valid = self.selection.valid
        todo = [r for r in valid if r in self.remaining and r not in self.stale]
        kept = [r for r in valid if r not in self.remaining and r not in self.stale]
        return f"{len(kept)} materialized, {len(self.stale)} stale, {len(todo)} to do"

    def lines(self) -> list[str]:
        stale = [f"  {r}: {', '.join(why)}" for r, why in self.stale.items()]
        if len(stale) > STALE_LISTED:  # a model change makes every region stale: say so once
            stale = [*stale[:STALE_LISTED], f"  … and {len(stale) - STALE_LISTED} more"]
        return [
            f"provided: {len(self.selection.provided)}",
            f"valid: {len(self.selection.valid)}",
            f"invalid: {len(self.selection.invalid)}"
            + (f" ({', '.join(self.selection.invalid)})" if self.selection.invalid else ""),
            f"already materialized in this environment: {len(self.materialized)}",
            f"recorded but not committed in the raster store (redone): {len(self.uncommitted)}"
            + (f" ({', '.join(self.uncommitted)})" if self.uncommitted else ""),
            f"stale (inputs or model changed since): {len(self.stale)}",
            *stale,
            f"remaining: {len(self.remaining)}",
        ]


def region_report(
    plan: DeployPlan,
    done: dict[str, dict[str, Any]],
    uncommitted: list[str],
    current: dict[str, dict[str, str]],
) -> RegionReport:
    """The selected regions split by what the instance and the raster store hold (``done``:
    recorded and committed, with their metadata; ``uncommitted``: recorded only) and by the
    inputs' versions now (``current``: input -> region -> version): materialized, stale, and
    remaining (not done, stale with --redeploy-stale, or named by --recompute)."""
    valid = plan.selection.valid
    stale = stale_regions(
        {r: done[r] for r in valid if r in done},
        current,
        model_code_version(plan.settings.model_variant),
    )
    redo = {
        **(stale if plan.options.redeploy_stale else {}),
        **{r: ["--recompute"] for r in plan.recompute},
    }
    return RegionReport(
        plan.selection,
        materialized=[r for r in valid if r in done],
        remaining=[r for r in valid if r not in done or r in redo],
        stale=stale,
        uncommitted=[r for r in uncommitted if r in valid],
    )


def stale_regions(
    recorded: dict[str, dict[str, Any]], current: dict[str, dict[str, str]], code_version: str
) -> dict[str, list[str]]:
    """Regions whose recorded provenance (their latest materialization's ``model_code_version``
    and ``input_data_versions``) differs from now (``current``: input -> region -> version),
    each with the changes that make it stale, in ``recorded``'s order."""
    stale: dict[str, list[str]] = {}
    for region, meta in recorded.items():
        why = []
        if meta.get("model_code_version") != code_version:
            why.append(f"model {meta.get('model_code_version')} -> {code_version}")
        versions = meta.get("input_data_versions") or {}
        why += [
            f"{key} changed"
            for key, by_region in current.items()
            if versions.get(key) != by_region.get(region)
        ]
        if why:
            stale[region] = why
    return stale


def output_locations(
    layout: StorageLayout, optional_assets: tuple[str, ...], regions_only: bool = False
) -> list[tuple[str, str]]:
    """(label, path) of each output a deployment writes, for the closing summary: with
    ``regions_only``, only the region outputs (nothing downstream was built)."""
    rows = [
        ("raster store", layout.raster_store),
        ("region buildings", layout.region_buildings_dir),
    ]
    if regions_only:
        return rows
    levels = "{" + ",".join(CENSUS_LEVELS) + "}"
    rows += [
        ("consolidated buildings", layout.consolidated_buildings),
        ("partitioned buildings", layout.partitioned_buildings),
        ("summary statistics", layout.region_summary_stats(levels)),
        *((f"{t.archive}.pmtiles", layout.pmtiles(t.archive)) for t in TILESETS),
    ]
    for optional in OPTIONAL_ASSETS:
        if optional.key in optional_assets:
            rows += optional.outputs(layout)
    return rows
