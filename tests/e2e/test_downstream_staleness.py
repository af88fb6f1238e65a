"""Downstream staleness (issue 28 item 4): a region recomputed without its downstream leaves
the pyramid and the tiles older than the regions — Dagster's resolver marks the downstream
stale only when a region's data version moved (not for an identical recompute), ``ocr serve``
says so by the records' times (page config and a log line), and ``ocr deploy`` rebuilds them."""

from pathlib import Path

import dagster as dg
import pytest

from ocr_jobs.deploy import instance_home, open_instance
from ocr_jobs.serve import VENDOR_FILES, map_site, missing_vendor_files
from ocr_resources.settings import load_settings
from ocr_resources.storage import OcrStorage
from tests.e2e.test_deploy import _local_env, ocr
from tests.stale_status import StaleStatus, stale_status

pytestmark = pytest.mark.slow

SERVED = ["regions.pmtiles", "building_centroids.pmtiles", "buildings.pmtiles", "pyramid"]
DOWNSTREAM = ["buildings_geoparquet", "risk_pyramid", "regional_pmtiles", "building_pmtiles"]


def _latest(instance: dg.DagsterInstance, key: str) -> float:
    return instance.fetch_materializations(dg.AssetKey(key), limit=1).records[0].timestamp


def _stale(env: Path, web: Path, ui: StaleStatus) -> tuple[dict | None, set[str]]:
    """What the served config says is stale, and the downstream assets Dagster (the UI,
    through GraphQL) calls stale."""
    settings = load_settings(env)
    with open_instance(instance_home(settings)) as instance:
        site = map_site(OcrStorage.from_settings(settings), web, instance=instance)
    return site.config["stale"], ui.stale_assets(DOWNSTREAM)


def test_a_region_recomputed_alone_makes_the_served_outputs_stale_until_deployed(
    tmp_path, sample_root
):
    env, root = _local_env(tmp_path, sample_root)
    web = tmp_path / "web"  # the page's folder with stand-in libraries
    (web / "vendor").mkdir(parents=True)
    for name in VENDOR_FILES:
        (web / "vendor" / name).write_text(f"/* {name} */")
    # the UI's questions, to a webserver on the environment's instance all along
    with stale_status(load_settings(env), tmp_path / "ui.log") as ui:
        storage = OcrStorage(root=str(root), environment="local")
        first = ocr("deploy", "--region-id", "y1_x1-x2", "--create-pyramid", env_file=env)
        assert first.returncode == 0, first.stdout + first.stderr
        assert _stale(env, web, ui) == (None, set())
        tiles = Path(storage.layout.pmtiles("regions"))
        pyramid = Path(storage.layout.pyramid) / "zarr.json"
        written = {p: p.stat().st_mtime_ns for p in (tiles, pyramid)}

        # one region again, nothing downstream: everything served is older than the regions
        again = ocr("deploy", "--recompute", "y1_x1", "--regions-only", env_file=env)
        assert again.returncode == 0, again.stdout + again.stderr
        served, resolved = _stale(env, web, ui)
        assert served is not None and sorted(served["outputs"]) == sorted(SERVED)
        # Dagster's resolver compares data versions: the region recomputed from the same inputs
        # with the same code has the same data version, so it calls nothing stale; the times do
        assert resolved == set()
        served_page = not missing_vendor_files()  # the command serves the real page (make web)
        if served_page:
            check = ocr("serve", "--check", env_file=env)
            assert check.returncode == 0, check.stdout + check.stderr
            line = " ".join(check.stdout.split())
            assert (
                f"warning: stale outputs: {', '.join(served['outputs'])} are older than the regions"
                in line
            )

        # a deploy of the same region with its downstream: rebuilt, newer, nothing stale
        settings = load_settings(env)
        with open_instance(instance_home(settings)) as instance:
            before = {k: _latest(instance, k) for k in DOWNSTREAM}
        rebuilt = ocr("deploy", "--recompute", "y1_x1", "--create-pyramid", env_file=env)
        assert rebuilt.returncode == 0, rebuilt.stdout + rebuilt.stderr
        with open_instance(instance_home(settings)) as instance:
            assert all(_latest(instance, k) > before[k] for k in DOWNSTREAM)
        assert all(p.stat().st_mtime_ns > written[p] for p in written)
        assert _stale(env, web, ui) == (None, set())
        if served_page:
            check = ocr("serve", "--check", env_file=env)
            assert check.returncode == 0 and "stale outputs" not in check.stdout, check.stdout
