"""``ocr sample-data`` and ``ocr regions``: inputs and the region catalog."""

from __future__ import annotations

from typing import Annotated

import typer

from ocr_jobs.cli.app import (
    EnvFile,
    _settings,
    _storage,
    app,
    checked_as,
    console,
    interruptible,
    regions_app,
)


@app.command("sample-data")
def sample_data(
    env_file: EnvFile = None,
    seed: Annotated[
        int | None,
        typer.Option(
            help="Random seed (default: OCR_SAMPLE_SEED; the same bounds).",
            callback=checked_as("sample_seed"),
        ),
    ] = None,
) -> None:
    """Write the embedded sample inputs under the environment's input root, in the published
    layout (Icechunk repositories at the catalog's paths)."""
    from ocr_resources.sample_data import SampleSpec, write_sample_data

    settings = _settings(env_file)
    spec = SampleSpec(seed=settings.sample_seed if seed is None else seed)  # 0 is a seed
    with interruptible("writing the sample inputs", "run it again to write them all"):
        paths = write_sample_data(_storage(settings), spec)
    storage = _storage(settings)
    if (
        not storage.files.is_s3
    ):  # the sample's environment is ready to deploy: its output folder too
        storage.files.makedirs(storage.root)
    console.print(f"[green]wrote {len(paths)} sample inputs[/] under {storage.layout.inputs_root}")


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
    with interruptible("reading the input's regions", "nothing was written"):
        ids = _storage(settings).regions.valid_region_ids()
    grid = _storage(settings).regions.region_grid()
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
    from ocr_resources.region_catalog import load_valid_region_ids
    from ocr_science.regions import RegionIdError, select_regions

    settings = _settings(env_file)
    try:
        selection = select_regions(specs, load_valid_region_ids(settings.region_catalog))
        console.print(selection.report())
        selection.raise_for_invalid()
    except RegionIdError as exc:
        console.print(f"[red]error:[/] {exc}")
        raise typer.Exit(2) from exc
    console.print(" ".join(selection.valid))
