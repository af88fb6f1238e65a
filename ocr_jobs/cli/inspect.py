"""``ocr dev``, ``ocr serve``, ``ocr compare-variants`` and ``ocr lineage``: looking at an
environment."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer
from rich.markup import escape

from ocr_jobs.cli.app import EnvFile, _settings, _storage, app, console, interruptible

if TYPE_CHECKING:
    from ocr_jobs.serve import MapSite


@app.command("dev")
def dev(
    env_file: EnvFile = None,
    port: Annotated[
        int, typer.Option(help="Port of the UI on 127.0.0.1.", min=1, max=65535)
    ] = 3000,
) -> None:
    """The Dagster UI (``dg dev``) on the environment's own instance, where ``ocr deploy`` runs,
    at http://127.0.0.1:PORT/ (Ctrl-C stops it)."""
    import os
    import subprocess
    import sys

    from ocr_assets.constants import CLUSTER_POOL
    from ocr_jobs.deploy import DeployRefused, instance_home, instance_variables
    from ocr_jobs.deploy.services import ServicesError, ui_running
    from ocr_jobs.process_env import child_environment
    from ocr_resources.instance_storage import POSTGRES_URL_VARIABLE

    settings = _settings(env_file)
    project = Path.cwd()
    if not (project / "dagster.yaml").is_file():
        console.print(
            f"[red]error:[/] no dagster.yaml in {project}: run `ocr dev` from the project folder "
            "(its dagster.yaml is the instance configuration)"
        )
        raise typer.Exit(2)
    if settings.dagster_storage == "postgres" and not os.environ.get(POSTGRES_URL_VARIABLE):
        console.print(
            f"[red]error:[/] {POSTGRES_URL_VARIABLE} is not set: the instance of "
            f"{settings.environment} is in PostgreSQL"
        )
        raise typer.Exit(2)
    try:  # the environment's folder, with its generated dagster.yaml
        home = instance_home(settings)
    except DeployRefused as exc:
        console.print(f"[red]error:[/] {escape(str(exc))}")
        raise typer.Exit(2) from None
    # the child's environment only: the top-level dagster.yaml (DAGSTER_HOME = the project
    # folder, so dg dev does not warn it is unused) with this environment's storage variables,
    # the env file the code location loads and the venv dg runs in (no warning of another one)
    env = child_environment(
        DAGSTER_HOME=str(project),
        **instance_variables(settings),
        OCR_ENV_FILE=str(settings.env_file),
        VIRTUAL_ENV=sys.prefix,
    )
    bin_dir = Path(sys.executable).parent
    # the one limit on clusters at once, the environment's, in the instance every door reads
    limit = [str(bin_dir / "dagster"), "instance", "concurrency", "set", CLUSTER_POOL]
    subprocess.run([*limit, str(settings.cluster_limit)], env=env, check=True, capture_output=True)
    dg = str(bin_dir / "dg")
    console.print(f"Dagster UI: http://127.0.0.1:{port}/ (instance {home})")
    argv = [dg, "dev", "--host", "127.0.0.1", "--port", str(port)]
    try:
        with ui_running(home):  # a deploy meanwhile hands its runs to this UI's daemon
            code = subprocess.run(argv, env=env, check=False).returncode
        raise typer.Exit(code)
    except ServicesError as exc:
        console.print(f"[red]error:[/] {exc}")
        raise typer.Exit(2) from None
    except KeyboardInterrupt:
        raise typer.Exit(0) from None


@app.command("serve")
def serve(
    env_file: EnvFile = None,
    port: Annotated[
        int, typer.Option(help="Port on 127.0.0.1 (0: any free port).", min=0, max=65535)
    ] = 8765,
    open_browser: Annotated[
        bool, typer.Option("--open", help="Open the page in the default browser.")
    ] = False,
    check: Annotated[
        bool, typer.Option("--check", help="Only check the page and archives exist (exit 1).")
    ] = False,
) -> None:
    """The map page of the environment's PMTiles on http://127.0.0.1 (Ctrl-C stops it)."""
    import webbrowser

    from ocr_jobs.deploy import DeployRefused, instance_home, open_instance
    from ocr_jobs.serve import MapServer, ServeError, map_site

    settings = _settings(env_file)
    try:
        # the environment's instance: what it records of the regions dates the outputs
        with open_instance(instance_home(settings)) as instance:
            site = map_site(_storage(settings), instance=instance)
        _report_site(site, settings.environment, check)
        if not check:
            server = MapServer(
                site, port, log=lambda line: console.print(f"[dim]{escape(line)}[/]")
            )
    except ServeError as exc:
        console.print(f"[red]error:[/] {exc}")
        raise typer.Exit(1) from exc
    except DeployRefused as exc:  # the instance home cannot be used
        console.print(f"[red]error:[/] {escape(str(exc))}")
        raise typer.Exit(2) from exc
    except OSError as exc:
        console.print(f"[red]error:[/] cannot listen on 127.0.0.1:{port}: {exc.strerror}")
        raise typer.Exit(1) from exc
    if check:
        return
    console.print(f"serving {', '.join(site.archives)} of {settings.environment} at {server.url}")
    if open_browser:
        webbrowser.open(server.url)
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        console.print("stopped")
    finally:
        server.server_close()


def _report_site(site: MapSite, environment: str, check: bool) -> None:
    """What the page will lack or show out of date: archives not materialized, outputs older
    than the regions (the page shows the same in its banner)."""
    for name in site.missing:
        console.print(f"[yellow]{name}.pmtiles is not materialized yet[/]; the map omits it")
    stale = site.config["stale"]
    if stale:
        console.print(
            f"[yellow]warning: stale outputs: {', '.join(stale['outputs'])} are older than the "
            f"regions (last changed {stale['regions_updated']})[/]; `ocr deploy` for this "
            "environment rebuilds them"
        )
    if check:
        console.print(f"ready: {', '.join(site.archives)} of {environment}")


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

    from ocr_jobs.compare import compare_variants as run_comparison
    from ocr_resources.region_catalog import load_valid_region_ids
    from ocr_resources.storage import InputDataError
    from ocr_science.regions import RegionIdError, select_regions

    settings = _settings(env_file, model_variant="published")
    try:
        selection = select_regions(specs or ["all"], load_valid_region_ids(settings.region_catalog))
        selection.raise_for_invalid()
    except RegionIdError as exc:
        console.print(f"[red]error:[/] {exc}")
        raise typer.Exit(2) from exc
    regions = selection.valid
    with (
        interruptible("comparing the model variants", "nothing was written"),
        console.status(f"computing both variants on {len(regions)} region(s)") as status,
    ):
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
        # only materialized assets are computed on a profile; the inputs are executable too,
        # but their step is an observation (metadata, in process)
        profile = "observed" if node.is_observable else "–"
        if node.is_materializable:
            profile = ComputeProfile.from_tags(dict(node.assets_def.op.tags))[1].describe()
        upstream = ", ".join(sorted(k.to_user_string() for k in node.parent_keys)) or "external"
        key_tag, value = OPTIONAL_TAG
        optional = " (optional)" if node.tags.get(key_tag) == value else ""
        table.add_row(
            key.to_user_string() + optional, node.group_name, upstream, partitions, profile
        )
    Console(width=160).print(table)
