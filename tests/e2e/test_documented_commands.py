"""Every ``ocr …`` command and option the README and docs/ document is run by a test: the ones
no other module runs are run here against one small deployment (two sample regions), each
checked to exit 0 and print what the README says; and a parse of the documents makes a newly
documented command or option without a test fail. Every command the README and the how-to
pages show (``ocr``, ``make``, ``dagster``, ``dg``, ``mkdocs``, ``python -m bench.…``) exists:
its ``--help`` exits 0, its options are its own, a make target is in the Makefile."""

import os
import re
import subprocess
import sys
import time
import urllib.request
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
import typer
import zarr

from ocr_assets.graph import PROFILES
from ocr_assets.tiles import TILESET_BY_ARCHIVE
from ocr_jobs.serve import missing_vendor_files
from ocr_resources.sample_data import SampleSpec, write_sample_data
from ocr_resources.settings import load_settings
from ocr_resources.storage import OcrStorage
from tests.e2e.test_deploy import FAKE_AWS, ocr, write_env
from tests.e2e.test_map_page import _require
from tests.sample_inputs import link_inputs

pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parents[2]
# the archives `ocr serve` names, in the tilesets' order
ARCHIVES = ", ".join(TILESET_BY_ARCHIVE)
# every page on disk (the generated parts are markers in them, filled in when the site is built)
DOCUMENTS = [ROOT / "README.md", *sorted((ROOT / "docs").rglob("*.md"))]
# the pages that show commands to type: the README and the how-to pages (and the home page)
SHOWN = [
    ROOT / "README.md",
    ROOT / "docs" / "index.md",
    *sorted((ROOT / "docs" / "howto").glob("*.md")),
]
# three regions of 600 × 600 pixels in a row (as tests/e2e/test_staleness.py's): a region's window
# (halo 0.15°) reaches its neighbour's pixels but not those two regions away, so that an input
# change under one deployed region leaves the other fresh
SPEC = SampleSpec(chunk_lat=600, chunk_lon=600, n_chunks_lat=1, n_chunks_lon=3, n_buildings=800)
DEPLOYED = ["y0_x0", "y0_x2"]  # the dry run selects y0_x0-x2: these two deployed, y0_x1 not

# the test module that runs each documented command (option None) and option; test_workflows
# runs the command lines of the deploy workflow, so that file counts as its source too
HERE = "test_documented_commands.py"
WORKFLOW = "test_workflows.py+../.github/workflows/deploy.yaml"
RUN_BY = {
    ("coiled-software-env", None): WORKFLOW,
    ("coiled-software-env", "--dry-run"): WORKFLOW,
    ("coiled-software-env", "--name"): WORKFLOW,
    ("coiled-software-env", "--requirements"): WORKFLOW,
    ("compare-variants", None): "test_model_variants.py",
    ("compare-variants", "--env-file"): "test_model_variants.py",
    ("compare-variants", "--json"): "test_model_variants.py",
    ("deploy", None): HERE,
    ("deploy", "--env-file"): HERE,
    ("deploy", "--region-id"): HERE,
    ("deploy", "--dry-run"): HERE,
    ("deploy", "--redeploy-stale"): HERE,
    ("deploy", "--all-region-ids"): "test_published_layout.py",
    ("deploy", "--create-pyramid"): "test_published_layout.py",
    ("deploy", "--write-regional-stats"): "test_published_layout.py",
    ("deploy", "--allow-all-processed"): "test_recovery.py",
    ("deploy", "--recompute"): "test_recovery.py",
    ("deploy", "--verify"): "test_recovery.py",
    ("deploy", "--regions-only"): "test_deploy.py",
    ("deploy", "--wipe"): "test_deploy.py",
    ("deploy", "--process-retries"): "test_deploy.py",
    ("deploy", "-v"): "test_deploy.py",
    ("dev", None): "test_ui_conventions.py",
    ("dev", "--env-file"): "test_ui_conventions.py",
    ("dev", "--port"): "test_ui_conventions.py",
    ("lineage", None): HERE,
    ("lineage", "--env-file"): HERE,
    ("regions refresh", None): "test_cli.py",
    ("regions refresh", "--check"): "test_cli.py",
    ("regions refresh", "--env-file"): "test_cli.py",
    ("regions select", None): HERE,
    ("regions select", "--env-file"): HERE,
    ("rollback", None): HERE,
    ("rollback", "--env-file"): HERE,
    ("rollback", "--to"): HERE,
    ("sample-data", None): HERE,
    ("sample-data", "--env-file"): HERE,
    ("sample-data", "--seed"): HERE,
    ("serve", None): HERE,
    ("serve", "--check"): HERE,
    ("serve", "--env-file"): HERE,
    ("serve", "--port"): HERE,
    ("serve", "--open"): HERE,
    ("unlock", None): "test_lock.py",
    ("unlock", "--env-file"): "test_lock.py",
    ("unlock", "--force"): "test_lock.py",
}


def _cli_options() -> dict[str, set[str]]:
    """Each ``ocr`` command (``regions select`` for a subcommand) and the options it takes."""
    from ocr_jobs.cli import app

    found: dict[str, set[str]] = {}

    def walk(command, prefix: str) -> None:
        for name, sub in getattr(command, "commands", {}).items():
            walk(sub, f"{prefix} {name}".strip())
        if not hasattr(command, "commands"):
            found[prefix] = {o for p in command.params for o in p.opts if o.startswith("-")}

    walk(typer.main.get_command(app), "")
    return found


def documented() -> set[tuple[str, str | None]]:
    """(command, None) for each ``ocr <command>`` the documents show, (command, option) for
    each option shown with it, and for each backticked option some command takes (every
    command taking it: the prose names the option, not always its command)."""
    cli = _cli_options()
    commands = "|".join(sorted(map(re.escape, cli), key=len, reverse=True))
    line = re.compile(rf"(?<![\w/.-])ocr ({commands})\b([^`\n|]*)")
    found: set[tuple[str, str | None]] = set()
    for path in DOCUMENTS:
        text = path.read_text()
        for match in line.finditer(text):
            command = match.group(1)
            found.add((command, None))
            for option in re.findall(r"(?<![\w-])(--[a-z][a-z-]*|-v)\b", match.group(2)):
                found.add((command, option))
        for option in re.findall(r"`(--[a-z][a-z-]*|-v)\b[^`]*`", text):
            found |= {(command, option) for command, opts in cli.items() if option in opts}
    return found


def _test_source(name: str) -> str:
    """A test module's text by file name (in whichever folder of tests/ it is), or a file's by
    a path relative to tests/ ("../.github/…")."""
    if name.startswith("../"):
        return (ROOT / name.removeprefix("../")).read_text()
    (path,) = (ROOT / "tests").rglob(name)
    return path.read_text()


def test_every_documented_command_and_option_is_run_by_a_test():
    found = documented()
    # the parse sees what the README plainly shows (else the check below checks nothing)
    assert {("lineage", None), ("deploy", "--dry-run"), ("serve", "--open")} <= found
    missing = sorted(found - set(RUN_BY), key=str)
    assert not missing, f"documented but run by no test (add it to RUN_BY): {missing}"
    for (command, option), filename in RUN_BY.items():
        source = "".join(_test_source(f) for f in filename.split("+"))
        # the module names it as it runs it
        assert command.split()[-1] in source, f"{filename} does not run ocr {command}"
        assert option is None or option in source, f"{filename} never passes {option}"


# --- every command shown exists ----------------------------------------------------------------

TOOLS = ("ocr", "make", "dagster", "dg", "mkdocs")
# a command at the start of a code line or of a backticked span, after any VAR=value
_SHOWN = re.compile(
    r"(?:^|`)(?:[A-Z_]+=\S*\s+)*((?:" + "|".join(TOOLS) + r"|\.venv/bin/python -m)\s[^`\n]*)",
    re.MULTILINE,
)


def shown_commands() -> set[str]:
    """Each command line the README and the how-to pages show, comments and prompts removed."""
    found: set[str] = set()
    for path in SHOWN:
        for match in _SHOWN.finditer(path.read_text()):
            line = match.group(1).split("  #")[0].split(" # ")[0].rstrip(" \\")
            found.add(" ".join(line.split()))
    return found


def _click_root(tool: str):
    if tool == "ocr":
        from ocr_jobs.cli import app

        return typer.main.get_command(app)
    if tool == "dagster":
        from dagster._cli import cli

        return cli
    if tool == "dg":
        from dagster_dg_cli.cli import cli

        return cli
    from mkdocs.__main__ import cli

    return cli


def _is_group(command) -> bool:
    """A group of subcommands (typer's groups are not click's classes: duck-typed)."""
    return hasattr(command, "get_command") and hasattr(command, "list_commands")


def _resolve(tool: str, words: list[str]) -> tuple[list[str], object]:
    """The subcommand path the words name (as click resolves it) and its command."""
    command, path = _click_root(tool), []
    for word in words:
        if not _is_group(command):
            break
        # get_command, not .commands: some groups (dg's) load their commands lazily
        sub = command.get_command(command.context_class(command), word)
        if sub is None:
            break
        command, path = sub, [*path, word]
    return path, command


def _makefile_targets() -> set[str]:
    text = (ROOT / "Makefile").read_text()
    return set(re.findall(r"^([a-z][a-z-]*)\s*:(?!=)", text, re.MULTILINE))


def test_the_shown_commands_are_parsed():
    shown = shown_commands()
    # the parse sees what the README plainly shows (else the checks below check nothing)
    for line in ("make run", "make test", "make serve", "make docs", "ocr rollback"):
        assert any(c.startswith(line) for c in shown), (line, sorted(shown))


def test_every_shown_command_exists():
    """``ocr``/``dagster``/``dg``/``mkdocs`` lines: the subcommand exists, takes every option
    shown with it, and its ``--help`` exits 0; ``make`` lines: the target is in the Makefile;
    ``python -m bench.…``: the module exists."""
    import importlib.util

    targets = _makefile_targets()
    helped: set[tuple[str, ...]] = set()
    for line in sorted(shown_commands()):
        if line.startswith(".venv/bin/python -m "):
            module = line.split()[3]
            assert importlib.util.find_spec(module) is not None, line
            continue
        tool, *words = line.split()
        if tool == "make":
            target = words[0] if words and not words[0].startswith("-") else None
            assert target is None or target in targets, f"{line}: no target {target!r} in Makefile"
            continue
        path, command = _resolve(tool, [w for w in words if not w.startswith("-")])
        names = [w for w in words if re.fullmatch(r"[a-z][a-z-]*", w)]
        if _is_group(command) and names[len(path) :]:
            raise AssertionError(f"{line}: {tool} has no subcommand {names[len(path)]!r}")
        options = {o for p in command.params for o in [*p.opts, *p.secondary_opts]}
        for word in words:
            option = word.split("=")[0]
            if option.startswith("-") and option != "--help":
                assert option in options, f"{line}: {tool} {' '.join(path)} takes no {option}"
        helped.add((tool, *path))
    for tool, *path in sorted(helped):
        done = subprocess.run(
            [str(Path(sys.executable).parent / tool), *path, "--help"],
            capture_output=True,
            text=True,
            timeout=120,
            env={**os.environ, "DAGSTER_DISABLE_TELEMETRY": "1", "NO_MKDOCS_2_WARNING": "1"},
            cwd=ROOT,
        )
        assert done.returncode == 0, (tool, path, done.stdout + done.stderr)


# --- the deployment the smoke tests run against ---------------------------------------------


@pytest.fixture(scope="module")
def deployed(tmp_path_factory):
    """Two sample regions and everything downstream of them, deployed as the README shows
    (``ocr deploy --env-file F --region-id …``, production v1.0.0); plain-Zarr inputs, so
    that one can be changed."""
    tmp = tmp_path_factory.mktemp("documented")
    root = tmp / "data"
    root.mkdir()
    write_sample_data(OcrStorage(root=str(root)), SPEC, container="zarr")
    # production (a version, its pointer), so that rollback has a version to point at
    env = write_env(
        tmp / "p.env", ENVIRONMENT="production", VERSION="1.0.0", STORAGE_ROOT=str(root)
    )
    regions = [a for r in DEPLOYED for a in ("--region-id", r)]
    done = ocr("deploy", "--env-file", str(env), *regions, env_file=env)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "already materialized in this environment: 0" in done.stdout
    assert "remaining: 2" in done.stdout
    return tmp, env


def _require_page() -> None:
    _require(not missing_vendor_files(), "the map page's libraries are missing (make web)")


def _lineage_rows(out: str) -> None:
    """Each asset on its row with its profile: the documented VM for a computed asset (the
    region assets share one step), "observed" for an input; partitions for the region ones."""
    from ocr_jobs.definitions import build_definitions

    settings = load_settings(Path(os.environ.get("OCR_ENV_FILE", ROOT / "envs" / "local.env")))
    graph = build_definitions(settings).resolve_asset_graph()
    assert len(graph.get_all_asset_keys()) == 14
    for key in graph.get_all_asset_keys():
        name = key.to_user_string()
        row = next(line for line in out.splitlines() if re.match(rf"│ {name}\b", line))
        node = graph.get(key)
        if node.is_materializable:
            step = "region_risk_raster" if name == "region_buildings" else name
            assert f"│ {PROFILES[step].describe()} " in row, row
        else:
            assert "│ observed " in row and "│ inputs " in row, row
        partitioned = node.partitions_def is not None
        assert ("│ 20 region_id " in row) == partitioned, row


@dataclass(frozen=True)
class Smoke:
    """A documented command, and what the README says it prints (text, or a check)."""

    args: tuple[str, ...]
    prints: tuple[str, ...] = ()
    check: object = None
    page: bool = False  # serves the map page: its libraries (make web) must be installed


SMOKE = [
    Smoke(("lineage",), check=_lineage_rows),
    # the README's example: "reports provided / valid / invalid ids" (then the valid ones)
    Smoke(
        ("regions", "select", "y1_x0-x3", "y2-y3_x1"),
        ("provided: 6", "valid: 6", "invalid: 0", "y1_x0 y1_x1 y1_x2 y1_x3 y2_x1 y3_x1"),
    ),
    # "ready" with the three archives, no server started
    Smoke(
        ("serve", "--check"),
        (f"ready: {ARCHIVES} of production",),
        page=True,
    ),
    # "points it back at an earlier version whose outputs exist, without recomputing"
    Smoke(("rollback", "--to", "1.0.0"), ("current → v1.0.0",)),
]


@pytest.mark.parametrize("smoke", SMOKE, ids=lambda s: " ".join(s.args))
def test_documented_command_prints_what_the_readme_says(smoke, deployed):
    _, env = deployed
    if smoke.page:
        _require_page()
    done = ocr(*smoke.args, "--env-file", str(env), env_file=env)
    assert done.returncode == 0, done.stdout + done.stderr
    for text in smoke.prints:
        assert text in done.stdout, done.stdout
    if smoke.check:
        os.environ["OCR_ENV_FILE"] = str(env)
        try:
            smoke.check(done.stdout)
        finally:
            del os.environ["OCR_ENV_FILE"]


def test_sample_data_writes_the_inputs_in_the_published_layout(tmp_path):
    """``ocr sample-data``: the embedded sample, equal to the generator's own output for the
    same seed (a second write with the library, compared array by array)."""
    env = write_env(tmp_path / "s.env", ENVIRONMENT="local", STORAGE_ROOT=str(tmp_path / "a"))
    done = ocr("sample-data", "--env-file", str(env), "--seed", "7", env_file=env)
    assert done.returncode == 0, done.stdout + done.stderr
    storage = OcrStorage.from_settings(load_settings(env))
    assert f"under {storage.layout.inputs_root}" in done.stdout
    reference = OcrStorage(root=str(tmp_path / "b"))
    paths = write_sample_data(reference, SampleSpec(seed=7), container="zarr")
    assert f"wrote {len(paths)} sample inputs" in done.stdout
    rasters = [spec for spec in storage.layout.input_specs() if spec.variables]
    assert len(rasters) >= 4
    for spec in rasters:  # Icechunk (the command's) against plain Zarr (the reference's)
        ours = storage.inputs.open_input(spec.path)
        theirs = reference.inputs.open_input(reference.layout.input_spec_named(spec.name).path)
        assert set(ours.data_vars) == set(theirs.data_vars) and list(ours.data_vars)
        for var in ours.data_vars:
            np.testing.assert_array_equal(ours[var].values, theirs[var].values, spec.name)


def test_serve_open_opens_the_page_it_serves(deployed, tmp_path):
    """``ocr serve --port 0 --open``: the browser ($BROWSER, here a script that records the
    address) is sent to the page the server serves."""
    _, env = deployed
    _require_page()
    opened = tmp_path / "opened"
    browser = tmp_path / "browser"
    browser.write_text(f'#!/bin/sh\necho "$1" > {opened}\n')
    browser.chmod(0o755)
    environ = {k: v for k, v in os.environ.items() if not k.startswith("OCR_")}
    environ.update(FAKE_AWS, BROWSER=str(browser), OCR_ENV_FILE=str(env), COLUMNS="200")
    argv = [sys.executable, "-m", "ocr_jobs.cli", "serve", "--env-file", str(env)]
    server = subprocess.Popen(
        [*argv, "--port", "0", "--open"],
        env=environ,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    try:
        deadline = time.monotonic() + 120
        while not (opened.exists() and opened.read_text().strip()):
            assert server.poll() is None, server.stdout.read()
            assert time.monotonic() < deadline, "the browser was never opened"
            time.sleep(0.2)
        url = opened.read_text().strip()
        assert re.fullmatch(r"http://127\.0\.0\.1:\d+/", url), url
        with urllib.request.urlopen(url, timeout=30) as page:
            assert page.status == 200 and b"<html" in page.read().lower()
    finally:
        server.terminate()
        out, _ = server.communicate(timeout=30)
    assert f"serving {ARCHIVES} of production at {url}" in out, out


# --- ocr deploy --dry-run -------------------------------------------------------------------


def _tree(folder: Path) -> dict[str, tuple[int, int] | None]:
    """Every file under ``folder`` with its size and modification time, and every folder (its
    time left out: opening the SQLite instance to read it adds and removes a journal file)."""
    return {
        str(p.relative_to(folder)): None
        if p.is_dir()
        else (p.lstat().st_size, p.lstat().st_mtime_ns)
        for p in folder.rglob("*")
    }


def _run_count(env: Path) -> int:
    from ocr_jobs.deploy import open_instance
    from ocr_jobs.deploy.runner import instance_home_path

    with open_instance(instance_home_path(load_settings(env))) as instance:
        return len(instance.get_run_records())


def _change_wind_under(env: Path, region: str) -> set[str]:
    """New values in the stored wind chunk under ``region``'s first pixel; returns the
    deployed regions whose window (halo included) reads that chunk: those made stale."""
    storage = OcrStorage.from_settings(load_settings(env))
    grid = storage.regions.region_grid()
    wind = zarr.open_group(storage.layout.wind, mode="r+")["wind_direction_distribution"]
    ci, cj = wind.chunks[0], wind.chunks[1]
    own = grid.region(region)
    i, j = own.lat_slice.start // ci, own.lon_slice.start // cj
    block = (slice(i * ci, (i + 1) * ci), slice(j * cj, (j + 1) * cj))
    wind[block] = np.roll(wind[block], 1, axis=-1)

    def reads(r: str) -> bool:
        rows, cols = grid.window(grid.region(r))
        return (
            rows.start < block[0].stop
            and rows.stop > block[0].start
            and (cols.start < block[1].stop and cols.stop > block[1].start)
        )

    return {r for r in DEPLOYED if reads(r)}


def test_dry_run_prints_each_region_s_state_and_writes_nothing(deployed):
    tmp, env = deployed
    runs = _run_count(env)
    before = _tree(tmp)
    args = ["deploy", "--env-file", str(env), "--dry-run", "--region-id", "y0_x0-x2"]
    done = ocr(*args, env_file=env)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "regions: 2 materialized, 0 stale, 1 to do" in done.stdout
    for region in DEPLOYED:
        assert f"    {region}: materialized\n" in done.stdout
    assert "    y0_x1: to do\n" in done.stdout
    assert _tree(tmp) == before  # nothing written: no instance file, lock, log or output

    stale = _change_wind_under(env, "y0_x0")
    assert stale == {"y0_x0"}  # (computed from the windows; the other stays fresh)
    before = _tree(tmp)  # the changed input's files are new; nothing else may change
    done = ocr(*args, env_file=env)
    assert done.returncode == 0, done.stdout + done.stderr
    fresh = len(DEPLOYED) - len(stale)
    assert f"regions: {fresh} materialized, {len(stale)} stale, 1 to do" in done.stdout
    for region in stale:
        assert (
            f"    {region}: stale: wind_direction_distribution changed (kept; --redeploy-stale "
            "redoes it)"
        ) in done.stdout
    for region in set(DEPLOYED) - stale:
        assert f"    {region}: materialized\n" in done.stdout
    redo = ocr(*args, "--redeploy-stale", env_file=env)
    assert redo.returncode == 0, redo.stdout + redo.stderr
    for region in stale:
        assert (
            f"    {region}: stale: wind_direction_distribution changed (to do: --redeploy-stale)"
        ) in redo.stdout

    assert _tree(tmp) == before  # nothing written: no instance file, lock, log or output
    assert _run_count(env) == runs  # no Dagster run (no observation either)


def test_dry_run_says_why_it_cannot_read_a_shared_instance(tmp_path, sample_root):
    """A shared environment's records are in PostgreSQL: without its URL the plan is still
    printed, the region states are said to be unread and why, and no instance home appears."""
    root = tmp_path / "data"
    root.mkdir()
    link_inputs(sample_root, root)
    env = write_env(
        tmp_path / "qa.env", ENVIRONMENT="qa", STORAGE_ROOT=str(root), DAGSTER_STORAGE="postgres"
    )
    done = ocr("deploy", "--dry-run", "--region-id", "y1_x1", env_file=env)
    assert done.returncode == 0, done.stdout + done.stderr
    out = " ".join(done.stdout.split())
    assert "region states not read: cannot read the Dagster instance of qa: You have " in out
    assert '"OCR_DAGSTER_PG_URL" which is not set' in out
    assert not (tmp_path / "dagster-homes").exists()
