"""Code versions of the downstream assets (issue 28 item 4): derived from the source of the
modules that compute each one, the same in every process, different when that source changes,
so Dagster marks the asset stale when it does."""

import json
import subprocess
import sys
from pathlib import Path

import dagster as dg
import pytest

from ocr_assets.code_version import (
    module_source,
    source_code_version,
    sources_version,
    with_science_imports,
)
from ocr_jobs.definitions import build_definitions

DOWNSTREAM = (
    "buildings_geoparquet",
    "region_risk_summary_stats",
    "regional_analysis_files",
    "risk_pyramid",
    "regional_pmtiles",
    "building_centroid_pmtiles",
    "building_pmtiles",
)
REPO = Path(__file__).resolve().parents[2]


def _versions(defs: dg.Definitions) -> dict[str, str | None]:
    graph = defs.resolve_asset_graph()
    return {key: graph.get(dg.AssetKey(key)).code_version for key in DOWNSTREAM}


def test_every_downstream_asset_has_a_source_version_the_same_in_another_process(
    local_settings,
):
    versions = _versions(build_definitions(local_settings))
    assert all(v and v.startswith("src-") and len(v) == 16 for v in versions.values()), versions
    # a fresh interpreter (another import of every module) computes the same versions
    script = (
        "import json, sys; from ocr_jobs.definitions import build_definitions; "
        "from ocr_resources.settings import OcrSettings; "
        "g = build_definitions(OcrSettings(storage_root=sys.argv[1], environment='qa'))"
        ".resolve_asset_graph(); import dagster as dg; "
        f"print(json.dumps({{k: g.get(dg.AssetKey(k)).code_version for k in {DOWNSTREAM!r}}}))"
    )
    done = subprocess.run(
        [sys.executable, "-c", script, local_settings.storage_root],
        capture_output=True,
        text=True,
        check=True,
        cwd=REPO,
    )
    assert json.loads(done.stdout.strip().splitlines()[-1]) == versions


def test_a_changed_module_source_changes_the_version_and_only_where_it_is_used():
    modules = ("ocr_assets.statistics", "ocr_resources.storage.vector")
    read = {name: module_source(name).read_bytes() for name in [*modules]}
    found = with_science_imports(
        modules, lambda name: read.get(name) or module_source(name).read_bytes()
    )
    # the science modules imported on the way (statistics → science.statistics → scoring)
    assert {"ocr_science.statistics", "ocr_science.scoring"} <= set(found)
    assert sources_version(found.items()) == source_code_version(*modules)
    # a patched copy of a science module reached only through an import: a new version
    patched = dict(found)
    patched["ocr_science.scoring"] += b"\n# an edit\n"
    assert sources_version(patched.items()) != sources_version(found.items())
    # the same bytes under the same names: the same version (no path, no time in it)
    assert sources_version(dict(found).items()) == sources_version(found.items())
    with pytest.raises(ValueError, match="no Python source"):
        module_source("sys")
