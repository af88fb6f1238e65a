"""``ocr deploy`` and ``ocr rollback``: parse the flags, plan, run (``ocr_jobs.deploy``), render."""

from __future__ import annotations

import functools
import inspect
from collections.abc import Callable
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.markup import escape

from ocr_assets.constants import OPTIONAL_ASSETS, OptionalAsset
from ocr_jobs.cli.app import EnvFile, _settings, _storage, app, checked_as, console, interruptible

RESUMES = "the next deploy resumes the remaining regions and steps"


def _flag_parameter(optional: OptionalAsset) -> str:
    return optional.flag.removeprefix("--").replace("-", "_")


def with_optional_asset_flags(command: Callable[..., None]) -> Callable[..., None]:
    """``command`` with one boolean flag per row of ``OPTIONAL_ASSETS`` (its ``--help`` lists
    them), called with the keys of those given as ``optional_assets``: a new optional asset
    needs no new parameter here."""
    signature = inspect.signature(command, eval_str=True)
    flags = [
        inspect.Parameter(
            _flag_parameter(optional),
            inspect.Parameter.KEYWORD_ONLY,
            default=False,
            annotation=Annotated[bool, typer.Option(optional.flag, help=optional.help)],
        )
        for optional in OPTIONAL_ASSETS
    ]
    kept = [
        p.replace(kind=inspect.Parameter.KEYWORD_ONLY)
        for p in signature.parameters.values()
        if p.name != "optional_assets"
    ]

    @functools.wraps(command)
    def with_flags(**params: Any) -> None:
        chosen = tuple(o.key for o in OPTIONAL_ASSETS if params.pop(_flag_parameter(o)))
        command(**params, optional_assets=chosen)

    parameters = [*kept, *flags]
    with_flags.__signature__ = signature.replace(parameters=parameters)  # type: ignore[attr-defined]
    with_flags.__annotations__ = {p.name: p.annotation for p in parameters}
    return with_flags


@app.command("deploy")
@with_optional_asset_flags
def deploy(
    env_file: EnvFile = None,
    region_id: Annotated[
        list[str] | None,
        typer.Option("--region-id", help="Id or range (y1_x2-x4); repeatable."),
    ] = None,
    all_region_ids: Annotated[bool, typer.Option("--all-region-ids")] = False,
    risk_type: Annotated[str, typer.Option(help="Only 'fire' exists.")] = "fire",
    wipe: Annotated[
        bool, typer.Option("--wipe", help="Delete this environment's outputs first.")
    ] = False,
    process_retries: Annotated[
        int | None,
        typer.Option(
            help="Retries per region (default: OCR_PROCESS_RETRIES; the same bounds).",
            callback=checked_as("process_retries"),
        ),
    ] = None,
    dry_run: Annotated[
        bool, typer.Option("--dry-run", help="Check and print the plan only.")
    ] = False,
    allow_all_processed: Annotated[
        bool, typer.Option(help="With nothing left to process, still rebuild downstream.")
    ] = False,
    regions_only: Annotated[
        bool, typer.Option(help="Stop after the regions (batches before one downstream run).")
    ] = False,
    redeploy_stale: Annotated[
        bool,
        typer.Option(
            "--redeploy-stale",
            help="Also redo the regions whose inputs or fire model changed since they were "
            "materialized (the report lists them).",
        ),
    ] = False,
    recompute: Annotated[
        list[str] | None,
        typer.Option(
            "--recompute",
            help="Recompute this region although materialized (id or range; repeatable), e.g. "
            "after its file was found missing or corrupt.",
        ),
    ] = None,
    verify: Annotated[
        bool,
        typer.Option(
            "--verify",
            help="Also read every page of the Parquet outputs, verifying its checksum, before "
            "deciding what is up to date (reads the data; sizes, listings and footers are "
            "always checked).",
        ),
    ] = False,
    verbose: Annotated[
        bool,
        typer.Option(
            "--verbose", "-v", help="Print the runs' Dagster events too (always in the log file)."
        ),
    ] = False,
    optional_assets: tuple[str, ...] = (),  # one flag each, from OPTIONAL_ASSETS
) -> None:
    """Deploy one environment: remaining region partitions, then phases 02/03, as Dagster runs."""
    from ocr_jobs import deploy as d
    from ocr_jobs.deploy.plan import deploy_target
    from ocr_science.regions import RegionIdError

    overrides = {} if process_retries is None else {"process_retries": process_retries}
    settings = _settings(env_file, **overrides)
    options = d.DeployOptions(
        region_ids=region_id or [],
        all_region_ids=all_region_ids,
        risk_type=risk_type,
        optional_assets=optional_assets,
        wipe=wipe,
        allow_all_processed=allow_all_processed,
        regions_only=regions_only,
        redeploy_stale=redeploy_stale,
        recompute=recompute or [],
        verify=verify,
        verbose=verbose,
    )
    # the input, root and tool checks are refusals (DeployRefused, exit 2); later failures are
    # DeployError (or PermissionError from a wipe), exit 1
    failures = (d.DeployError, PermissionError)
    progress = _DeployProgress()
    with interruptible(f"deploying {deploy_target(settings)}", RESUMES):
        try:
            plan = d.plan_deploy(settings, options)
            storage = _storage(settings)
            if dry_run:
                _print_dry_run(_dry_run(plan, storage))
                return
            result = d.run_deploy(plan, storage, progress)
        except (d.DeployRefused, RegionIdError) as exc:  # refused before anything was touched
            console.print(f"[red]error:[/] {escape(str(exc))}")
            raise typer.Exit(2) from exc
        except failures as exc:
            console.print(f"[red]error:[/] {escape(str(exc))}")
            raise typer.Exit(1) from exc
        finally:
            progress.stop()  # before any last line, so the bar does not redraw after it
    if result.stopped:
        console.print(f"[yellow]{result.stopped}[/]")
        return
    log = f"Dagster's event log: {result.log_file}" + ("" if verbose else " (-v prints it here)")
    if result.region_failures:
        console.print(f"[red]{len(result.region_failures)} region(s) failed:[/]")
        for line in result.region_failures:
            console.print(f"  {line}")
        console.print(log, soft_wrap=True)
        raise typer.Exit(1)
    if result.downstream_error:
        console.print(f"[red]downstream failed:[/] {result.downstream_error}")
        console.print(log, soft_wrap=True)
        raise typer.Exit(1)
    if result.pointer:
        console.print(f"published: current → v{result.pointer['version']}")
    for label, path in d.output_locations(storage.layout, options.optional_assets, regions_only):
        console.print(f"  {label}: {path}", soft_wrap=True)
    console.print(log, soft_wrap=True)


def _dry_run(plan: Any, storage: Any) -> Any:
    """The plan with each region's state read (nothing written); when the instance cannot be
    read (a shared one offline), the plan without them, saying why."""
    from ocr_jobs import deploy as d

    try:
        return d.dry_run(plan, storage.layout, d.read_region_report(plan, storage))
    except d.DeployError as exc:
        return d.dry_run(plan, storage.layout, None, str(exc))


def _print_dry_run(plan: Any) -> None:
    """``ocr deploy --dry-run``: the checked plan and each region's state, nothing touched."""
    console.print(f"[bold]dry run[/] for {plan.target} at {plan.location}")
    console.print(f"  {plan.selection_report}")
    console.print(f"  regions selected: {', '.join(plan.regions) or '-'}")
    console.print(f"  wipe: {'no' if plan.wipe is None else ', '.join(plan.wipe)}")
    console.print(f"  optional assets: {', '.join(plan.optional_assets) or 'none'}")
    if plan.report is None:
        console.print(f"  [yellow]region states not read:[/] {escape(plan.unknown)}")
        return
    console.print(f"  regions: {plan.report.state_counts()}")
    for region in plan.regions:
        console.print(f"    {region}: {escape(plan.report.state(region))}", soft_wrap=True)


class _DeployProgress:
    """Renders a deployment as it goes: its lines, and a progress bar of the region runs."""

    def __init__(self) -> None:
        self.bar: Any = None
        self.done = self.failed = 0

    def started(self, target: str, instance_home: Path) -> None:
        console.print(f"deploying [bold]{target}[/] (Dagster instance {instance_home})")

    def say(self, line: str) -> None:
        console.print(line)

    def regions_started(self, total: int) -> None:
        from rich.progress import (
            BarColumn,
            MofNCompleteColumn,
            Progress,
            TextColumn,
            TimeElapsedColumn,
        )

        self.bar = Progress(
            TextColumn("regions"),
            BarColumn(),
            MofNCompleteColumn(),
            TextColumn("{task.fields[status]}"),
            TimeElapsedColumn(),
            console=console,
            transient=False,
        )
        self.bar.start()
        self.task = self.bar.add_task("regions", total=total, status="")

    def region_finished(self, outcome: Any) -> None:
        if outcome.success:
            self.done += 1
        else:
            self.failed += 1
            self.bar.console.print(f"  [red]{outcome.partition} failed[/]: {outcome.error}")
        remaining = self.bar.tasks[0].total - self.done - self.failed
        self.bar.update(
            self.task,
            advance=1,
            status=f"done {self.done}  failed {self.failed}  remaining {remaining}",
        )

    def stop(self) -> None:
        if self.bar is not None:
            self.bar.stop()
            self.bar = None


@app.command("rollback")
def rollback(
    to: Annotated[str, typer.Option("--to", help="The version to publish again, e.g. 1.0.0.")],
    env_file: EnvFile = None,
) -> None:
    """Point production's "current" at an earlier version's outputs, without recomputing."""
    from ocr_jobs.deploy import DeployError, publish_pointer
    from ocr_resources.settings import semantic_version

    try:  # the option's own error (the settings would blame OCR_VERSION)
        semantic_version(to)
    except ValueError as exc:
        console.print(f"[red]error:[/] --to {escape(str(exc))}")
        raise typer.Exit(2) from exc
    settings = _settings(env_file, version=to)
    if settings.environment != "production":
        console.print(f"[red]error:[/] rollback is for production, not {settings.environment!r}")
        raise typer.Exit(2)
    try:
        pointer = publish_pointer(_storage(settings))
    except DeployError as exc:
        console.print(f"[red]error:[/] {exc}")
        raise typer.Exit(1) from exc
    console.print(f"current → v{pointer['version']} ({pointer['vector']})")


@app.command("coiled-software-env")
def coiled_software_env(
    name: Annotated[str, typer.Option(help="The software environment's name.")],
    requirements: Annotated[
        Path, typer.Option(help="Pinned pip requirements (e.g. pip freeze --exclude-editable).")
    ],
    workspace: Annotated[str, typer.Option(help="The Coiled workspace.")] = "carbonplan",
    dry_run: Annotated[bool, typer.Option("--dry-run", help="Print the command only.")] = False,
) -> None:
    """Build the Coiled software environment the documented VMs run: their architecture (one
    place: the compute profiles), the pinned dependencies and the project's code."""
    import shlex
    import subprocess

    from ocr_assets.graph import PROFILES
    from ocr_resources.compute import software_env_command

    argv = software_env_command(name, workspace, str(requirements), PROFILES.values())
    if dry_run:
        console.print(f"dry run: {shlex.join(argv)}", soft_wrap=True, markup=False)
        return
    if not requirements.is_file():
        console.print(f"[red]error:[/] requirements file {str(requirements)!r} does not exist")
        raise typer.Exit(2)
    console.print(shlex.join(argv), soft_wrap=True, markup=False)
    raise typer.Exit(subprocess.run(argv, check=False).returncode)
