"""``bench/conus.py``, the CONUS cost model, on the recorded figures: it prints a complete
table, every measured figure names a record in the repository, the docs show its table, and
the settings it models keep their promises (one or two region waves, memory under 75 %, the
CI jobs under GitHub's 6-hour cap with a margin, downstream steps not capped by the driver)."""

from __future__ import annotations

import re
from pathlib import Path

import yaml

from bench import conus
from ocr_assets.graph import PROFILES
from ocr_jobs.definitions import step_concurrency
from ocr_resources.settings import load_settings

ROOT = Path(__file__).resolve().parents[2]
GITHUB_CAP_MINUTES = 360
MARGIN_MINUTES = 30


def test_the_model_prints_a_complete_table_from_named_records():
    printed: list[str] = []
    conus.main([], echo=printed.append)
    text = printed[0]
    m, before, after = conus.results()
    for result in (before, after):
        assert [r.step for r in result.rows] == ["region_risk_raster", *conus.DOWNSTREAM]
        for row in result.rows:
            assert row.wall_s > 0 and row.vm_hours > 0 and row.vms >= 1, row
            assert row.step in text
        assert result.wall_s == result.regions_s + result.downstream_s
        assert result.critical_path[0] == "regions"
    assert "**deployment**" in text and "assumptions (not measured here)" in text
    for name, figure in m.figures().items():
        if figure.assumed:
            assert f"{name}: " in text.split("assumptions (not measured here)")[1], name
            continue
        record = figure.source.split()[0]
        if record.startswith("bench/"):
            assert (ROOT / record).is_file(), (name, figure.source)
        else:  # computed from the code (the pyramid's chunking)
            assert "computed" in figure.source, (name, figure.source)
    for name, figure in conus.ASSUMPTIONS.items():
        assert figure.assumed and f"{name}: " in text, name


def test_the_critical_path_and_schedule_by_hand():
    """Three steps of known length: a limit of one runs them end to end, two overlaps the
    independent ones; the critical path follows the last to finish."""
    row = conus.Row("x", "vm", 1, 0, 0, 1, 2, "")

    def rows(**walls):
        return {k: conus.Row(k, "vm", 1, walls.get(k, 10.0), 0, 1, 2, "") for k in conus.DOWNSTREAM}

    walls = dict(risk_pyramid=100.0, buildings_geoparquet=30.0, building_pmtiles=50.0)
    alone, path = conus.schedule(rows(**walls), 1)
    assert alone == sum(rows(**walls)[k].wall_s for k in conus.DOWNSTREAM)
    wide, path = conus.schedule(rows(**walls), 16)
    assert wide == 100.0 and path == ["risk_pyramid"]
    walls["building_pmtiles"] = 90.0
    wide, path = conus.schedule(rows(**walls), 16)
    assert wide == 120.0 and path == ["buildings_geoparquet", "building_pmtiles"]
    assert row.memory_share == 0.5


def test_the_docs_show_the_models_table():
    """The performance page's table is the model's own output, generated when the site is built
    (tools/docs_hooks.py), never retyped."""
    import importlib.util

    printed: list[str] = []
    conus.main(["--markdown"], echo=printed.append)
    spec = importlib.util.spec_from_file_location("docs_hooks", ROOT / "tools" / "docs_hooks.py")
    hooks = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(hooks)
    page = (ROOT / "docs" / "performance.md").read_text()
    assert "<!-- generated: conus -->" in page.splitlines()
    assert printed[0] in hooks.render(page)


def test_production_settings_keep_the_models_promises():
    settings = load_settings(ROOT / "envs" / "production.env", version="1.0.0")
    _, _, after = conus.results()
    regions = after.rows[0]
    waves = int(re.search(r"in (\d+) wave", regions.how).group(1))
    assert waves <= 2, regions.how
    for row in after.rows:
        assert row.memory_share <= conus.MEMORY_CEILING, row
    assert after.vm_hours <= 10
    # the downstream run's steps are limited by the cluster limit, not the driver's CPUs
    assert step_concurrency(settings) == settings.cluster_limit
    assert step_concurrency(load_settings(ROOT / "envs" / "local.env")) is None
    assert PROFILES["region_risk_raster"].workers * PROFILES["region_risk_raster"].vms() > 1


def test_ci_deploy_jobs_stay_under_githubs_cap_with_the_models_margin():
    """Every deploy job's timeout is under GitHub's 6-hour cap by a margin, and the jobs that
    deploy every region allow at least twice the modelled wall time."""
    _, _, after = conus.results()
    jobs = yaml.safe_load((ROOT / ".github" / "workflows" / "deploy.yaml").read_text())["jobs"]
    full = 0
    for name, job in jobs.items():
        minutes = job["timeout-minutes"]
        assert minutes <= GITHUB_CAP_MINUTES - MARGIN_MINUTES, name
        commands = " ".join(step.get("run", "") for step in job["steps"])
        if "ocr deploy" in commands and "all-region-ids" in commands:
            full += 1
            assert minutes * 60 >= 2 * after.wall_s, (name, minutes)
    assert full >= 3  # staging, manual, production (and its re-run)
