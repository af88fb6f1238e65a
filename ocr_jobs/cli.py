"""``ocr``: the command line (heavy imports inside commands so ``--help`` is instant)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console

app = typer.Typer(help="Open Climate Risk on Dagster.", no_args_is_help=True, add_completion=False)
regions_app = typer.Typer(help="Region grid and selection.", no_args_is_help=True)
app.add_typer(regions_app, name="regions")
console = Console()

EnvFile = Annotated[
    Path | None,
    typer.Option("--env-file", help="Environment file (default: $OCR_ENV_FILE or envs/local.env)."),
]


def _settings(env_file: Path | None):
    from ocr_resources.settings import load_settings

    return load_settings(env_file)


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


@app.command("materialize")
def materialize(
    env_file: EnvFile = None,
    region_id: Annotated[
        list[str] | None, typer.Option("--region-id", help="Id or range; repeatable.")
    ] = None,
    all_region_ids: Annotated[bool, typer.Option("--all-region-ids")] = False,
    create_pyramid: Annotated[bool, typer.Option(help="Also build risk_pyramid.")] = False,
    write_regional_stats: Annotated[
        bool, typer.Option(help="Also write regional_analysis_files.")
    ] = False,
    downstream: Annotated[bool, typer.Option(help="Run phases 02/03 after the regions.")] = True,
    max_parallel: Annotated[int, typer.Option(help="Region runs at a time.")] = 2,
) -> None:
    """Materialize region partitions (one Dagster run each), then phases 02/03, in the
    environment's instance."""
    from ocr_assets.science.regions import RegionIdError, select_regions
    from ocr_jobs.jobs import REGION_JOB, downstream_run
    from ocr_jobs.runner import execute, run_partitions, use_environment
    from ocr_resources.region_catalog import load_valid_region_ids

    settings = _settings(env_file)
    if all_region_ids == bool(region_id):
        console.print("[red]error:[/] give either --region-id (one or more) or --all-region-ids")
        raise typer.Exit(2)
    try:
        selection = select_regions(
            ["all"] if all_region_ids else region_id, load_valid_region_ids(settings.region_catalog)
        )
        console.print(selection.report())
        selection.raise_for_invalid()
    except RegionIdError as exc:
        console.print(f"[red]error:[/] {exc}")
        raise typer.Exit(2) from exc
    home = use_environment(settings)
    console.print(f"environment [bold]{settings.environment}[/], Dagster instance {home}")

    def report(outcome) -> None:
        mark = "[green]ok[/]" if outcome.success else f"[red]failed[/] {outcome.error}"
        console.print(f"  {outcome.partition}: {mark} (run {outcome.run_id[:8]})")

    outcomes = run_partitions(REGION_JOB, selection.valid, max_parallel, report)
    failed = [o.partition for o in outcomes if not o.success]
    if failed:
        console.print(f"[red]{len(failed)} region(s) failed:[/] {', '.join(failed)}")
        raise typer.Exit(1)
    console.print(f"[green]{len(outcomes)} region(s) materialized[/]")
    if downstream:
        optional = {"risk_pyramid"} if create_pyramid else set()
        optional |= {"regional_analysis_files"} if write_regional_stats else set()
        job, keys = downstream_run(optional)
        outcome = execute(job, asset_keys=keys)
        report(outcome)
        if not outcome.success:
            raise typer.Exit(1)
    _print_outputs(settings, downstream, create_pyramid, write_regional_stats)


def _print_outputs(settings, downstream: bool, pyramid: bool, analysis: bool) -> None:
    from ocr_resources.layout import CENSUS_LEVELS, PMTILES_NAMES

    lay = _storage(settings).layout
    rows = [("raster store", lay.raster_store), ("region buildings", lay.region_buildings_dir)]
    if downstream:
        rows += [
            ("consolidated buildings", lay.consolidated_buildings),
            ("partitioned buildings", lay.partitioned_buildings),
            ("summary statistics", lay.region_summary_stats("{" + ",".join(CENSUS_LEVELS) + "}")),
            *((f"{name}.pmtiles", lay.pmtiles(name)) for name in PMTILES_NAMES),
        ]
        rows += (
            [("analysis files", lay.region_analysis("<level>", "{geojson,csv}"))]
            if analysis
            else []
        )
        rows += [("pyramid", lay.pyramid)] if pyramid else []
    for label, path in rows:
        console.print(f"  {label}: {path}", soft_wrap=True)


if __name__ == "__main__":
    app()
