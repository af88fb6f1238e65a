"""``ocr``: the command line (heavy imports inside commands so ``--help`` is instant)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console
from rich.markup import escape

app = typer.Typer(help="Open Climate Risk on Dagster.", no_args_is_help=True, add_completion=False)
regions_app = typer.Typer(help="Region grid and selection.", no_args_is_help=True)
app.add_typer(regions_app, name="regions")
console = Console()

EnvFile = Annotated[
    Path | None,
    typer.Option("--env-file", help="Environment file (default: $OCR_ENV_FILE or envs/local.env)."),
]


def _settings(env_file: Path | None, **overrides: Any):
    """The environment's settings (``overrides`` win over the file and the environment); a
    bad env file or variable is a clear error naming the file and the variable, exit 2."""
    from pydantic import ValidationError

    from ocr_resources.settings import load_settings, resolve_env_file

    try:
        path = resolve_env_file(env_file)
        return load_settings(path, **overrides)
    except FileNotFoundError as exc:
        console.print(f"[red]error in the environment's settings:[/] {escape(str(exc))}")
        raise typer.Exit(2) from exc
    except ValidationError as exc:
        text = "; ".join(_setting_error(e) for e in exc.errors())
        console.print(f"[red]error in the environment's settings[/] ({path}): {escape(text)}")
        raise typer.Exit(2) from exc


def _setting_error(error: Any) -> str:
    """One validation error as ``OCR_<NAME>='value': why``, the way a user sets it."""
    message = str(error["msg"]).removeprefix("Value error, ")
    if not error["loc"]:
        return message
    value = error.get("input")
    shown = f"={value!r}" if isinstance(value, str | int) and error["type"] != "missing" else ""
    return f"OCR_{str(error['loc'][0]).upper()}{shown}: {message}"


def _storage(settings):
    from ocr_jobs.definitions import build_resources

    return build_resources(settings)["storage"]


@app.command("sample-data")
def sample_data(
    env_file: EnvFile = None,
    seed: Annotated[
        int | None, typer.Option(help="Random seed (default: OCR_SAMPLE_SEED).")
    ] = None,
) -> None:
    """Write the embedded sample inputs under the environment's storage root."""
    from ocr_resources.sample_data import SampleSpec, write_sample_data

    settings = _settings(env_file)
    paths = write_sample_data(_storage(settings), SampleSpec(seed=seed or settings.sample_seed))
    console.print(f"[green]wrote {len(paths)} sample inputs[/] under {settings.storage_root}")


@regions_app.command("refresh")
def regions_refresh(
    env_file: EnvFile = None,
    check: Annotated[bool, typer.Option(help="Only verify the shipped list matches.")] = False,
) -> None:
    """Compute the valid region ids from the input and write them as package data."""
    from ocr_resources.region_catalog import (
        catalog_path,
        load_valid_region_ids,
        write_valid_region_ids,
    )

    settings = _settings(env_file)
    ids = _storage(settings).valid_region_ids()
    grid = _storage(settings).region_grid()
    console.print(
        f"{len(ids)} valid of {len(grid.all_region_ids())} regions "
        f"({grid.n_chunks[0]} × {grid.n_chunks[1]} chunks of {grid.chunk_lat} × {grid.chunk_lon})"
    )
    if check:
        shipped = load_valid_region_ids(settings.region_catalog)
        if shipped != ids:
            console.print(f"[red]{catalog_path(settings.region_catalog)} is out of date[/]")
            raise typer.Exit(1)
        console.print("[green]shipped list matches the input[/]")
        return
    console.print(f"wrote {write_valid_region_ids(settings.region_catalog, ids)}")


@regions_app.command("select")
def regions_select(
    specs: Annotated[list[str], typer.Argument(help="Ids, ranges (y1_x2-x4) or 'all'.")],
    env_file: EnvFile = None,
) -> None:
    """Report which of the given regions are valid."""
    from ocr_assets.science.regions import RegionIdError, select_regions
    from ocr_resources.region_catalog import load_valid_region_ids

    settings = _settings(env_file)
    try:
        selection = select_regions(specs, load_valid_region_ids(settings.region_catalog))
        console.print(selection.report())
        selection.raise_for_invalid()
    except RegionIdError as exc:
        console.print(f"[red]error:[/] {exc}")
        raise typer.Exit(2) from exc
    console.print(" ".join(selection.valid))


@app.command("deploy")
def deploy(
    env_file: EnvFile = None,
    region_id: Annotated[
        list[str] | None,
        typer.Option("--region-id", help="Id or range (y1_x2-x4); repeatable."),
    ] = None,
    all_region_ids: Annotated[bool, typer.Option("--all-region-ids")] = False,
    risk_type: Annotated[str, typer.Option(help="Only 'fire' exists.")] = "fire",
    create_pyramid: Annotated[bool, typer.Option("--create-pyramid")] = False,
    write_regional_stats: Annotated[bool, typer.Option("--write-regional-stats")] = False,
    wipe: Annotated[
        bool, typer.Option("--wipe", help="Delete this environment's outputs first.")
    ] = False,
    process_retries: Annotated[
        int | None, typer.Option(help="Retries per region (default 2).")
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
) -> None:
    """Deploy one environment: remaining region partitions, then phases 02/03, as Dagster runs."""
    from ocr_assets.science.regions import RegionIdError
    from ocr_assets.tiles import ToolMissingError
    from ocr_jobs import deploy as d
    from ocr_resources.storage import InputDataError, StorageRootError

    overrides = {} if process_retries is None else {"process_retries": process_retries}
    settings = _settings(env_file, **overrides)
    options = d.DeployOptions(
        region_ids=region_id or [],
        all_region_ids=all_region_ids,
        risk_type=risk_type,
        create_pyramid=create_pyramid,
        write_regional_stats=write_regional_stats,
        wipe=wipe,
        allow_all_processed=allow_all_processed,
        regions_only=regions_only,
    )
    failures = (d.DeployError, InputDataError, StorageRootError, ToolMissingError, PermissionError)
    progress = _DeployProgress()
    try:
        plan = d.plan_deploy(settings, options)
        storage = _storage(settings)
        if dry_run:
            _print_dry_run(d.dry_run(plan, storage.layout))
            return
        result = d.run_deploy(plan, storage, progress)
    except (d.DeployRefused, RegionIdError) as exc:  # refused before anything was touched
        console.print(f"[red]error:[/] {escape(str(exc))}")
        raise typer.Exit(2) from exc
    except failures as exc:
        console.print(f"[red]error:[/] {escape(str(exc))}")
        raise typer.Exit(1) from exc
    finally:
        progress.stop()
    if result.stopped:
        console.print(f"[yellow]{result.stopped}[/]")
        return
    if result.region_failures:
        console.print(f"[red]{len(result.region_failures)} region(s) failed:[/]")
        for line in result.region_failures:
            console.print(f"  {line}")
        raise typer.Exit(1)
    if result.downstream_error:
        console.print(f"[red]downstream failed:[/] {result.downstream_error}")
        raise typer.Exit(1)
    if result.pointer:
        console.print(f"published: current → v{result.pointer['version']}")
    for label, path in d.output_locations(storage.layout, options.optional_assets):
        console.print(f"  {label}: {path}", soft_wrap=True)


def _print_dry_run(plan: Any) -> None:
    """``ocr deploy --dry-run``: the checked plan, nothing touched."""
    console.print(f"[bold]dry run[/] for {plan.target} at {plan.location}")
    console.print(f"  {plan.selection_report}")
    console.print(f"  regions selected: {', '.join(plan.regions) or '-'}")
    console.print(f"  wipe: {'no' if plan.wipe is None else ', '.join(plan.wipe)}")
    console.print(f"  optional assets: {', '.join(plan.optional_assets) or 'none'}")


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


@app.command("rollback")
def rollback(
    to: Annotated[str, typer.Option("--to", help="The version to publish again, e.g. 1.0.0.")],
    env_file: EnvFile = None,
) -> None:
    """Point production's "current" at an earlier version's outputs, without recomputing."""
    from ocr_jobs.deploy import DeployError, publish_pointer

    settings = _settings(env_file, version=to)  # validated as a semantic version
    if settings.environment != "production":
        console.print(f"[red]error:[/] rollback is for production, not {settings.environment!r}")
        raise typer.Exit(2)
    try:
        pointer = publish_pointer(_storage(settings))
    except DeployError as exc:
        console.print(f"[red]error:[/] {exc}")
        raise typer.Exit(1) from exc
    console.print(f"current → v{pointer['version']} ({pointer['vector']})")


@app.command("serve")
def serve(
    env_file: EnvFile = None,
    port: Annotated[int, typer.Option(help="Port on 127.0.0.1 (0: any free port).")] = 8765,
    open_browser: Annotated[
        bool, typer.Option("--open", help="Open the page in the default browser.")
    ] = False,
    check: Annotated[
        bool, typer.Option("--check", help="Only check the page and archives exist (exit 1).")
    ] = False,
) -> None:
    """The map page of the environment's PMTiles on http://127.0.0.1 (Ctrl-C stops it)."""
    import webbrowser

    from ocr_jobs.serve import MapServer, ServeError, map_site

    settings = _settings(env_file)
    try:
        site = map_site(_storage(settings))
        if check:
            console.print(f"ready: {', '.join(site.archives)} of {settings.environment}")
            return
        server = MapServer(site, port, log=lambda line: console.print(f"[dim]{line}[/]"))
    except ServeError as exc:
        console.print(f"[red]error:[/] {exc}")
        raise typer.Exit(1) from exc
    except OSError as exc:
        console.print(f"[red]error:[/] cannot listen on 127.0.0.1:{port}: {exc.strerror}")
        raise typer.Exit(1) from exc
    for name in site.missing:
        console.print(f"[yellow]{name}.pmtiles is not materialized yet[/]; the map omits it")
    console.print(f"serving {', '.join(site.archives)} of {settings.environment} at {server.url}")
    if open_browser:
        webbrowser.open(server.url)
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        console.print("stopped")
    finally:
        server.server_close()


@app.command("compare-variants")
def compare_variants(
    specs: Annotated[
        list[str] | None, typer.Argument(help="Region ids, ranges (y1_x2-x4) or 'all'.")
    ] = None,
    env_file: EnvFile = None,
    json_path: Annotated[
        Path | None, typer.Option("--json", help="Also write the figures as JSON here.")
    ] = None,
) -> None:
    """Compute the published and the corrected model on the same regions (in process,
    nothing written) and report what the correction changes: pixels differing by more
    than 1e-4 relative, the largest differences, buildings whose risk score changes."""
    import json

    from rich.table import Table

    from ocr_assets.science.regions import RegionIdError, select_regions
    from ocr_jobs.compare import compare_variants as run_comparison
    from ocr_resources.region_catalog import load_valid_region_ids
    from ocr_resources.storage import InputDataError

    settings = _settings(env_file, model_variant="published")
    try:
        selection = select_regions(specs or ["all"], load_valid_region_ids(settings.region_catalog))
        selection.raise_for_invalid()
    except RegionIdError as exc:
        console.print(f"[red]error:[/] {exc}")
        raise typer.Exit(2) from exc
    regions = selection.valid
    with console.status(f"computing both variants on {len(regions)} region(s)") as status:
        done: list[str] = []

        def progress(region_id: str) -> None:
            done.append(region_id)
            status.update(f"computed {len(done)} of {len(regions)} region(s) ({region_id})")

        try:
            result = run_comparison(_storage(settings), regions, progress).as_dict()
        except InputDataError as exc:
            console.print(f"[red]error:[/] {escape(str(exc))}")
            raise typer.Exit(2) from exc
    table = Table(
        "variable",
        "pixels",
        "changed > 1e-4",
        "share",
        "NaN in one",
        "max |Δ|",
        "max rel Δ",
        title=f"published vs corrected on {len(regions)} region(s)",
    )
    for name, d in result["variables"].items():
        table.add_row(
            name,
            f"{d['pixels']:,}",
            f"{d['changed']:,}",
            f"{100 * d['changed_share']:.2f} %",
            f"{d['missing_in_one']:,}",
            f"{d['max_abs_difference']:.3g}",
            f"{d['max_relative_difference']:.3g}",
        )
    console.print(table)
    b = result["buildings"]
    for year, changed in b["score_changed"].items():
        console.print(
            f"{year}: risk score changed for {changed:,} of {b['scored_in_both']:,} buildings "
            f"scored by both ({b['missing_in_one'][year]:,} scored by one variant only)"
        )
    if json_path:
        json_path.write_text(json.dumps(result, indent=1) + "\n")
        console.print(f"wrote {json_path}")


@app.command("lineage")
def lineage(env_file: EnvFile = None) -> None:
    """The asset graph: each asset's group, upstreams, partitioning and compute profile."""
    from rich.console import Console
    from rich.table import Table

    from ocr_assets.constants import OPTIONAL_TAG
    from ocr_jobs.definitions import build_definitions
    from ocr_resources.compute import ComputeProfile

    graph = build_definitions(_settings(env_file)).resolve_asset_graph()
    table = Table("asset", "group", "upstream", "partitions", "profile")
    for key in graph.toposorted_asset_keys:
        node = graph.get(key)
        parts = node.partitions_def
        partitions = f"{len(parts.get_partition_keys())} region_id" if parts else "–"
        profile = "–"
        if node.is_executable:
            profile = ComputeProfile.from_tags(dict(node.assets_def.op.tags))[1].describe()
        upstream = ", ".join(sorted(k.to_user_string() for k in node.parent_keys)) or "external"
        key_tag, value = OPTIONAL_TAG
        optional = " (optional)" if node.tags.get(key_tag) == value else ""
        table.add_row(
            key.to_user_string() + optional, node.group_name, upstream, partitions, profile
        )
    Console(width=160).print(table)


if __name__ == "__main__":
    app()
