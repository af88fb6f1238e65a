"""The command line and settings refuse bad input at once and clearly, and stop cleanly.

- a region range is checked against the catalog's grid before it is expanded
- a region id of thousands of digits is a refusal, not int()'s ValueError
- numeric options are held to their setting's own bounds (the settings model)
- an env file that is a directory is reported as one
- a version with build metadata never names a storage path
- ``--regions-only`` lists only the outputs it built
- Ctrl-C during a deploy: one line, exit 130, no traceback, the lock released
"""

import os
import re
import resource
import signal
import subprocess
import sys
import time
from pathlib import Path

import dagster as dg
import pytest
from pydantic import ValidationError
from typer.testing import CliRunner

from ocr_jobs import cli
from ocr_jobs.deploy import output_locations
from ocr_resources.layout import StorageLayout
from ocr_resources.settings import OcrSettings, load_settings
from ocr_science.regions import RegionIdError, validate_region_id
from tests.e2e.test_deploy import _local_env, ocr
from tests.e2e.test_faults import _with_fault

pytestmark = pytest.mark.slow

HUGE_RANGE = "y0-y99999_x0-x99999"  # 10^10 ids: ~18 GB once expanded
# the sample's regions with data span rows 0-4 and columns 0-5
SAMPLE_EXTENT = "y0-y4_x0-x5"
MEMORY_CAP = 3 * 1024**3  # address space of the refused dry run: a regression dies, not the host


def _invoke(args: list[str], monkeypatch) -> tuple[int, str]:
    """``ocr`` in process: (exit code, whole output on one line per message, boxes removed)."""
    monkeypatch.setattr(cli.console, "width", 10_000)
    monkeypatch.setenv("COLUMNS", "10000")  # typer's usage-error panel
    result = CliRunner().invoke(cli.app, args)
    if result.exception is not None and not isinstance(result.exception, SystemExit):
        raise result.exception  # a crash, not a refusal
    return result.exit_code, " ".join(re.sub(r"[│╭╮╰╯─]", " ", result.output).split())


@pytest.fixture
def env(tmp_path, sample_root) -> Path:
    """A local environment on the sample (inputs linked), with its own instance home."""
    return _local_env(tmp_path, sample_root)[0]


# 1. ranges are checked before they are expanded ------------------------------------------------
def test_huge_region_range_is_refused_at_once_naming_the_grid(env):
    """Before: the dry run expanded the range first and grew to ~18 GB. Now it is refused
    before expansion: exit 2, the range and the grid's extent named, memory independent of the
    range's size (the process is capped so a regression fails here instead of eating RAM)."""

    def cap() -> None:
        resource.setrlimit(resource.RLIMIT_AS, (MEMORY_CAP, MEMORY_CAP))

    environ = {k: v for k, v in os.environ.items() if not k.startswith("OCR_")}
    argv = [sys.executable, "-m", "ocr_jobs.cli", "deploy", "--env-file", str(env)]
    run = subprocess.run(
        [*argv, "--region-id", HUGE_RANGE, "--dry-run"],
        env={**environ, "COLUMNS": "300"},
        capture_output=True,
        text=True,
        timeout=120,
        preexec_fn=cap,
    )
    assert run.returncode == 2, run.stdout + run.stderr
    assert "Traceback" not in run.stdout + run.stderr
    assert run.stdout.strip() == (
        f"error: region range '{HUGE_RANGE}' reaches beyond the region grid: the regions with "
        f"data span {SAMPLE_EXTENT}; expected a range inside it (`ocr regions select all` "
        "lists the regions)"
    )


def test_ranges_inside_the_grid_still_list_their_regions_without_data(monkeypatch, env):
    """The check is on the extent only: a range inside it is expanded and its regions without
    data are named, as before; one reaching past it is refused by `regions select` too."""
    code, out = _invoke(["regions", "select", "y4_x0-x5", "--env-file", str(env)], monkeypatch)
    assert code == 2 and "4 region id(s) have no data" in out and "y4_x5" in out
    code, out = _invoke(["regions", "select", "y4_x0-x6", "--env-file", str(env)], monkeypatch)
    assert code == 2 and "'y4_x0-x6' reaches beyond the region grid" in out
    assert SAMPLE_EXTENT in out


# 2. thousands of digits --------------------------------------------------------------------
LONG_ID = "y" + "1" * 5000 + "_x0"


def test_region_id_of_thousands_of_digits_is_a_clean_refusal(monkeypatch, env):
    """Before: int() raised ValueError (Python's 4300-digit limit), a traceback. Now a
    RegionIdError naming the id (shortened) and the expected form, exit 2."""
    code, out = _invoke(
        ["deploy", "--env-file", str(env), "--region-id", LONG_ID, "--dry-run"], monkeypatch
    )
    assert code == 2, out
    assert out == (
        "error: region selection 'y11111111111111111111111…111111111_x0' (5004 characters) "
        "has an index of 5000 digits; expected the form y{iy}_x{ix} with chunk indices of at "
        "most 6 digits, e.g. 'y2_x3'"
    )
    with pytest.raises(RegionIdError, match=r"expected the form y\{iy\}_x\{ix\}"):
        validate_region_id(LONG_ID)  # where an id becomes a path


# 3. numeric options and their settings -----------------------------------------------------
@pytest.mark.parametrize(
    ("args", "expected"),
    [
        (
            ["deploy", "--region-id", "y0_x0", "--dry-run", "--process-retries", "-1"],
            "Invalid value for '--process-retries': -1: Input should be greater than or equal "
            "to 0 (the bounds of OCR_PROCESS_RETRIES)",
        ),
        (
            ["deploy", "--region-id", "y0_x0", "--dry-run", "--process-retries", "1000000000"],
            "Invalid value for '--process-retries': 1000000000: Input should be less than or "
            "equal to 10 (the bounds of OCR_PROCESS_RETRIES)",
        ),
        (
            ["sample-data", "--seed", "-1"],
            "Invalid value for '--seed': -1: Input should be greater than or equal to 0 (the "
            "bounds of OCR_SAMPLE_SEED)",
        ),
        (
            ["serve", "--port", "70000"],
            "Invalid value for '--port': Input should be less than or equal to 65535",
        ),
        (
            ["dev", "--port", "0"],
            "Invalid value for '--port': Input should be greater than or equal to 1",
        ),
    ],
    ids=["retries_negative", "retries_huge", "seed_negative", "serve_port", "dev_port"],
)
def test_numeric_options_are_held_to_their_bounds(args, expected, monkeypatch, env, tmp_path):
    """Before: --process-retries was refused as if the env file had set OCR_PROCESS_RETRIES,
    --seed -1 was NumPy's traceback, a port out of range reached the socket. Now each is a
    usage error naming the option, exit 2, with the setting's own bounds where it has one."""

    def started(argv, *_, **__):  # `ocr dev` would start `dg dev` and never return
        raise AssertionError(f"{argv[:2]} was started")

    monkeypatch.setattr(subprocess, "run", started)
    before = sorted(p.relative_to(tmp_path) for p in tmp_path.rglob("*"))
    code, out = _invoke([*args, "--env-file", str(env)], monkeypatch)
    assert code == 2, out
    assert expected in out
    assert sorted(p.relative_to(tmp_path) for p in tmp_path.rglob("*")) == before  # nothing written


@pytest.mark.parametrize("retries", ["0", "10"])
def test_process_retries_at_its_bounds_passes(retries, monkeypatch, env):
    args = ["deploy", "--env-file", str(env), "--region-id", "y0_x0", "--dry-run"]
    code, out = _invoke([*args, "--process-retries", retries], monkeypatch)
    assert code == 0, out


# 4. env file that is a directory -----------------------------------------------------------
def test_env_file_that_is_a_directory_is_reported_as_one(tmp_path, monkeypatch):
    """Before: "does not exist" (it does). Now: it is a directory; expected a file."""
    folder = tmp_path / "envs"
    folder.mkdir()
    with pytest.raises(IsADirectoryError, match="is a directory; expected a file"):
        load_settings(folder)
    code, out = _invoke(["deploy", "--env-file", str(folder), "--all-region-ids"], monkeypatch)
    assert (code, out) == (
        2,
        f"error in the environment's settings: env file '{folder}' is a directory; expected a file",
    )


# 5. build metadata -------------------------------------------------------------------------
def test_build_metadata_never_names_a_version(tmp_path, sample_root, monkeypatch):
    """Before: 1.2.0+build.5 became the path segment v1.2.0+build.5. Now OCR_VERSION, the
    layout and rollback's --to refuse it, suggesting the release or a pre-release."""
    with pytest.raises(ValidationError) as raised:
        OcrSettings(storage_root="/x", environment="production", version="1.2.0+build.5")
    assert (
        "OCR_VERSION '1.2.0+build.5' carries build metadata '+build.5', which semver says does "
        "not identify a release, so it cannot name a version's outputs; expected 1.2.0 or a "
        "pre-release such as 1.2.0-rc.1"
    ) in str(raised.value)
    with pytest.raises(ValidationError, match=r"outputs; expected 1\.2\.0-rc\.1 \["):
        OcrSettings(storage_root="/x", environment="production", version="v1.2.0-rc.1+b7")
    with pytest.raises(ValueError, match="build metadata"):
        StorageLayout("/data", "production", "1.2.0+build.5")
    pre = OcrSettings(storage_root="/x", environment="production", version="1.2.0-rc.1")
    assert "/production/v1.2.0-rc.1/" in StorageLayout("/x", "production", pre.version).pyramid

    env, _ = _local_env(tmp_path, sample_root, "production", VERSION="1.0.0")
    code, out = _invoke(["rollback", "--to", "1.2.0+build.5", "--env-file", str(env)], monkeypatch)
    assert (code, out) == (
        2,
        "error: --to '1.2.0+build.5' carries build metadata '+build.5', which semver says does "
        "not identify a release, so it cannot name a version's outputs; expected 1.2.0 or a "
        "pre-release such as 1.2.0-rc.1",
    )
    built, _ = _local_env(tmp_path, sample_root, "production", VERSION="1.2.0+build.5")
    code, out = _invoke(
        ["deploy", "--env-file", str(built), "--region-id", "y0_x0", "--dry-run"], monkeypatch
    )
    assert code == 2 and "OCR_VERSION '1.2.0+build.5' carries build metadata" in out


# 6. --regions-only lists what it built -----------------------------------------------------
def test_regions_only_summary_lists_only_the_region_outputs():
    """Before: the closing summary of a regions-only deploy listed consolidated buildings,
    statistics and PMTiles it never built."""
    layout = StorageLayout("/data", "qa")
    assert output_locations(layout, (), regions_only=True) == [
        ("raster store", layout.raster_store),
        ("region buildings", layout.region_buildings_dir),
    ]
    everything = [label for label, _ in output_locations(layout, ())]
    assert everything[:3] == ["raster store", "region buildings", "consolidated buildings"]


# 7. Ctrl-C -----------------------------------------------------------------------------------
def _wait_for(path_glob: Path, needle: str, process: subprocess.Popen, timeout: float) -> None:
    """Until a file matching ``path_glob`` contains ``needle`` (the deploy's event log)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        assert process.poll() is None, "the deploy ended before it could be interrupted"
        if any(needle in p.read_text() for p in path_glob.parent.glob(path_glob.name)):
            return
        time.sleep(0.1)
    raise AssertionError(f"{needle!r} never appeared in {path_glob}")


@pytest.mark.parametrize(
    ("signum", "exit_code", "said"),
    [(signal.SIGINT, 130, "interrupted:"), (signal.SIGTERM, 143, "interrupted (SIGTERM):")],
)
def test_ctrl_c_during_a_deploy_is_one_line_exit_130_and_the_next_deploy_runs(
    tmp_path, sample_root, signum, exit_code, said
):
    """SIGINT to the deploy's whole process group, as a terminal's Ctrl-C sends it, or SIGTERM
    to the deploy's process, as ``kill`` or a supervisor sends it, while a region run computes.
    Before: exit 130 with no word of it, and KeyboardInterrupt tracebacks from the region
    workers; SIGTERM: exit 1 and two stack traces. Now one line, exit 128 + the signal, no
    traceback, the runs ended and the lock released: the next deploy is not blocked and does
    the regions, and its summary lists only region outputs. The region's step stalls for
    120 s (a fault): Dagster answers an interrupted step with its retry policy, so a deploy
    that let its worker go on would outlast the timeout."""
    env, root = _local_env(tmp_path, sample_root)
    args = ("deploy", "--region-id", "y1_x1-x2", "--regions-only")
    environ = {k: v for k, v in os.environ.items() if not k.startswith("OCR_")}
    deploy = subprocess.Popen(
        [sys.executable, "-m", "ocr_jobs.cli", *args, "--env-file", str(env)],
        env={**environ, **_with_fault("stall_regions"), "COLUMNS": "200"},
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,  # its own process group, the terminal's foreground one
    )
    try:
        logs = tmp_path / "dagster-homes" / "local" / "deploy-logs" / "deploy-*.log"
        _wait_for(logs, "region_risk - STEP_START", deploy, timeout=300)
        if signum == signal.SIGINT:
            os.killpg(deploy.pid, signal.SIGINT)
        else:
            deploy.send_signal(signum)
        out, err = deploy.communicate(timeout=90)
    finally:
        if deploy.poll() is None:
            os.killpg(deploy.pid, signal.SIGKILL)
    assert deploy.returncode == exit_code, out + err
    assert "Traceback" not in out + err and "KeyboardInterrupt" not in out + err
    assert " ".join(out.split()).endswith(
        f"{said} deploying local; the next deploy resumes the remaining regions and steps"
    )
    storage_lock = Path(StorageLayout(str(root), "local").deployment_lock)
    assert not storage_lock.exists()
    # the interrupted run is recorded as ended, not left running
    instance = dg.DagsterInstance.from_config(str(tmp_path / "dagster-homes" / "local"))
    live = [dg.DagsterRunStatus.STARTED, dg.DagsterRunStatus.STARTING]
    assert not instance.get_runs(filters=dg.RunsFilter(statuses=live))

    again = ocr(*args, env_file=env)
    assert again.returncode == 0, again.stdout + again.stderr
    assert "remaining: 2" in again.stdout  # interrupted mid-run (stalled): it did neither
    assert "2/2 done 2  failed 0" in again.stdout
    assert "region buildings:" in again.stdout
    for downstream in ("consolidated buildings", "summary statistics", ".pmtiles"):
        assert downstream not in again.stdout
