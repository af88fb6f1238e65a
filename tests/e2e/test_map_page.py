"""The map page in a real browser (Debian's chromium, headless) on outputs of the sample graph.

The outputs come from `ocr deploy` on sample regions, the command a user runs, so the same run
also shows the progress people follow: the deploy's progress bar, per-stage timings logged by
each region, and a PNG preview in the materializations' metadata.
"""

from __future__ import annotations

import base64
import io
import json
import os
import re
import subprocess
import sys
import time
from pathlib import Path

import dagster as dg
import geopandas as gpd
import numpy as np
import pytest
import zarr

from ocr_jobs.serve import map_site, missing_vendor_files, serve_in_thread
from ocr_resources.storage import OcrStorage
from ocr_science.scoring import RISK_COLORS, risk_score
from tests.sample_inputs import link_inputs

pytestmark = pytest.mark.slow

REGIONS = "y0-y1_x0-x3"  # 8 sample regions: every census level, a few hundred buildings
N_REGIONS = 8
ARTIFACTS = Path(__file__).resolve().parents[2] / "test-artifacts"
CHROMIUM = os.environ.get("OCR_CHROMIUM", "/usr/bin/chromium")
# Headless without a GPU (WebGL on SwiftShader) and without anything that calls out to the
# internet: background services, updates, sync, pings, safe-browsing, DNS (only loopback).
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--use-angle=swiftshader",
    "--enable-unsafe-swiftshader",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--disable-default-apps",
    "--disable-domain-reliability",
    "--disable-client-side-phishing-detection",
    "--disable-breakpad",
    "--no-first-run",
    "--no-default-browser-check",
    "--no-pings",
    "--metrics-recording-only",
    "--disable-features=Translate,OptimizationHints,MediaRouter,AutofillServerCommunication,"
    "CertificateTransparencyComponentUpdater,InterestFeedContentSuggestions",
    "--host-resolver-rules=MAP * ~NOTFOUND , EXCLUDE 127.0.0.1",
]
VIEWPORT = {"width": 1200, "height": 800}
OCR = [sys.executable, "-m", "ocr_jobs.cli"]


def _require(ok: bool, reason: str) -> None:
    """Skip when a tool is missing, except in CI (`.ci/run` sets OCR_REQUIRE_BROWSER=1)."""
    if not ok:
        if os.environ.get("OCR_REQUIRE_BROWSER") == "1":
            pytest.fail(reason)
        pytest.skip(reason)


@pytest.fixture(scope="module")
def deployed(tmp_path_factory, sample_root):
    """`ocr deploy` of REGIONS and the downstream assets into a fresh local environment."""
    base = tmp_path_factory.mktemp("map")
    root = base / "data"
    root.mkdir()
    link_inputs(sample_root, root)
    env_file = base / "local.env"
    env_file.write_text(
        "OCR_ENVIRONMENT=local\n"
        f"OCR_STORAGE_ROOT={root}\n"
        "OCR_REGION_CATALOG=sample\n"
        "OCR_DAGSTER_EXECUTOR=in_process\n"
        f"OCR_DAGSTER_HOME_ROOT={base / 'homes'}\n"
    )
    env = {k: v for k, v in os.environ.items() if not k.startswith("OCR_")}
    start = time.perf_counter()
    done = subprocess.run(
        [*OCR, "deploy", "--env-file", str(env_file), "--region-id", REGIONS, "--create-pyramid"],
        capture_output=True,
        text=True,
        timeout=600,
        env={**env, "COLUMNS": "200"},
    )
    assert done.returncode == 0, done.stdout + done.stderr
    return {
        "storage": OcrStorage(root=str(root), environment="local"),
        "stdout": done.stdout,
        "stderr": done.stderr,
        "home": base / "homes" / "local",
        "seconds": time.perf_counter() - start,
    }


def test_deploy_shows_progress_and_regions_log_stage_timings(deployed):
    out = deployed["stdout"]
    # the console stays quiet; the runs' log lines are in the deployment's log file it names
    log = re.search(r"Dagster's event log: (\S+\.log)", out)
    assert log, out
    err = Path(log.group(1)).read_text()
    assert "done in" not in deployed["stderr"]
    # the progress bar's last state: regions done / failed / remaining
    bar = re.search(r"regions .*? (\d+)/(\d+) done (\d+)\s+failed (\d+)\s+remaining (\d+)", out)
    assert bar, out
    assert bar.groups() == (str(N_REGIONS), str(N_REGIONS), str(N_REGIONS), "0", "0")
    # each region logs its stage timings in one line as soon as it is done
    line = re.search(r"region y0_x1: done in (\{'fields': [^}]+\}) s", err)
    assert line, err[-2000:]
    for stage in (
        "read_reference",
        "write_raster",
        "sample_buildings",
        "write_buildings",
        "preview",
    ):
        assert re.search(rf"'{stage}': \d+\.\d+", line.group(1)), stage


def _png_from_markdown(value: dg.MetadataValue) -> bytes:
    assert isinstance(value, dg.MarkdownMetadataValue)
    found = re.fullmatch(r"!\[[^\]]*\]\(data:image/png;base64,([A-Za-z0-9+/=]+)\)", value.md_str)
    assert found, value.md_str[:100]
    return base64.b64decode(found.group(1))


def test_materializations_carry_png_previews(deployed):
    from PIL import Image

    with dg.DagsterInstance.from_config(str(deployed["home"])) as instance:
        regions = instance.fetch_materializations(dg.AssetKey("region_risk_raster"), limit=50)
        stats = instance.fetch_materializations(dg.AssetKey("region_risk_summary_stats"), limit=1)
    assert len(regions.records) == N_REGIONS
    images = []
    for record in [*regions.records, *stats.records]:
        png = _png_from_markdown(record.asset_materialization.metadata["preview"])
        image = Image.open(io.BytesIO(png))
        # large enough to read (regions 500 × 420, choropleths 900 × 450), small enough for the
        # event log, once per materialization
        assert image.format == "PNG" and 450 <= image.width <= 1000 and 380 <= image.height <= 500
        assert len(png) < 150_000
        images.append(image)
    # the preview is a picture of the data, not a blank canvas: several risk colours
    assert all(len(im.convert("RGB").getcolors(100_000)) > 5 for im in images)


# --- the browser ------------------------------------------------------------------------------
def _view(page, lon: float, lat: float, zoom: float) -> None:
    page.evaluate(
        "async ([lon, lat, zoom]) => { map.jumpTo({center: [lon, lat], zoom}); "
        "await ocrMap.settle(); }",
        [lon, lat, zoom],
    )


def _rendered(page, layer: str) -> list[dict]:
    return page.evaluate(
        "(layer) => map.queryRenderedFeatures({layers: [layer]}).map((f) => f.properties)", layer
    )


def _click(page, lon: float, lat: float) -> str:
    """Click the map at a place; the popup's text."""
    x, y = page.evaluate(
        "([lon, lat]) => { const p = map.project([lon, lat]); return [p.x, p.y]; }", [lon, lat]
    )
    page.mouse.click(x, y)
    popup = page.wait_for_selector(".maplibregl-popup-content", timeout=10_000)
    return popup.inner_text()


def _surface_pixel(storage: OcrStorage, level_index: int, margin: int) -> dict:
    """A pixel of pyramid level ``level_index`` inside a (2·margin+1)² block of one colour per
    year, with different colours in 2011 and 2047: its centre (lon, lat, the level's stored
    coordinates) and both colours, worked out here from the stored values with the score
    function and the colour table."""
    level = zarr.open_group(storage.layout.pyramid, mode="r")[str(level_index)]
    scores = {}
    for year in ("2011", "2047"):
        values = level[f"rps_{year}"][:]
        shown = np.isfinite(values) & (values > 0)
        scores[year] = np.where(shown, risk_score(np.where(shown, values, 0)), -1)
    ny, nx = scores["2011"].shape
    for i in range(margin, ny - margin):
        for j in range(margin, nx - margin):
            block = {
                y: s[i - margin : i + margin + 1, j - margin : j + margin + 1]
                for y, s in scores.items()
            }
            a, b = block["2011"], block["2047"]
            if (
                a.min() >= 1
                and (a == a[0, 0]).all()
                and (b == b[0, 0]).all()
                and a[0, 0] != b[0, 0]
            ):
                lon, lat = float(level["longitude"][j]), float(level["latitude"][i])
                rgb = {y: _hex_rgb(RISK_COLORS[int(block[y][0, 0])]) for y in block}
                return {"lon": lon, "lat": lat, **rgb}
    raise AssertionError(f"no uniform block of {2 * margin + 1} pixels at level {level_index}")


def _hex_rgb(color: str) -> tuple[int, int, int]:
    return tuple(int(color[i : i + 2], 16) for i in (1, 3, 5))


def _canvas_rgb(page, lon: float, lat: float) -> tuple[tuple[int, int, int], set]:
    """The canvas's colour at a place, and every colour on it (a screenshot, read back)."""
    from PIL import Image

    x, y = page.evaluate(
        "([lon, lat]) => { const p = map.project([lon, lat]); return [p.x, p.y]; }", [lon, lat]
    )
    image = Image.open(io.BytesIO(page.locator("canvas").screenshot())).convert("RGB")
    colors = {c for _, c in image.getcolors(VIEWPORT["width"] * VIEWPORT["height"])}
    return image.getpixel((round(x), round(y))), colors


def _close(a: tuple, b: tuple, tolerance: int = 3) -> bool:
    return all(abs(p - q) <= tolerance for p, q in zip(a, b, strict=True))


def _check_surface(page, storage: OcrStorage, figures: dict) -> None:
    """The risk surface alone (every other layer hidden, opacity 1): at map zoom 10 (z10 tiles,
    one pixel per screen pixel, drawn from level 2: the sample's 1.109″ pixels × 4 = 4.43″, the
    coarsest no wider than a z10 tile pixel, 4.94″) and 14 (past z13, the first zoom drawn from
    level 0: its tiles enlarged), the screen shows the pyramid's colour where the sample has
    risk, and the year toggle turns it into the other year's colour."""
    page.evaluate("ocrMap.closePopup()")
    page.evaluate(
        "() => { for (const l of map.getStyle().layers) if (!l.id.startsWith('surface-') "
        "&& l.id !== 'background') map.setLayoutProperty(l.id, 'visibility', 'none'); "
        "ocrMap.setSurfaceOpacity(1); }"
    )
    risk_colors = {_hex_rgb(c) for c in RISK_COLORS[1:]}
    seen = {}
    for map_zoom, level, margin in ((10, 2, 3), (14, 0, 2)):
        pixel = _surface_pixel(storage, level, margin)
        _view(page, pixel["lon"], pixel["lat"], map_zoom)
        found, colors = _canvas_rgb(page, pixel["lon"], pixel["lat"])
        assert _close(found, pixel["2011"]), (map_zoom, found, pixel)
        assert len(colors & risk_colors) >= 3, (map_zoom, sorted(colors)[:20])
        page.check("#year-2047")
        page.evaluate("ocrMap.settle()")
        found, _ = _canvas_rgb(page, pixel["lon"], pixel["lat"])
        assert _close(found, pixel["2047"]), (map_zoom, found, pixel)
        page.check("#year-2011")
        page.evaluate("ocrMap.settle()")
        seen[f"map zoom {map_zoom} (level {level})"] = [list(pixel["2011"]), list(pixel["2047"])]
    figures["surface_colours_2011_2047"] = seen
    page.evaluate(
        "() => { for (const l of map.getStyle().layers) "
        "map.setLayoutProperty(l.id, 'visibility', l.id === 'surface-2047' ? 'none' : 'visible'); "
        "ocrMap.setSurfaceOpacity(0.8); }"
    )


def test_map_page_in_chromium(deployed):
    _require(Path(CHROMIUM).is_file(), f"no chromium at {CHROMIUM} (.ci/run installs it)")
    _require(not missing_vendor_files(), "the map page's libraries are missing (make web)")
    playwright = pytest.importorskip("playwright.sync_api")

    storage = deployed["storage"]
    buildings = gpd.read_parquet(storage.layout.consolidated_buildings)
    west, south, east, north = buildings.total_bounds
    centre = ((west + east) / 2, (south + north) / 2)
    # a building with risk in both years: shown as a centroid and as a polygon
    target = buildings[(buildings.rps_2011 > 0) & (buildings.rps_2047 > 0)].iloc[0]
    point = target.geometry.representative_point()
    ARTIFACTS.mkdir(exist_ok=True)
    figures: dict[str, object] = {"deploy_seconds": round(deployed["seconds"], 1)}
    errors: list[str] = []
    outside: list[str] = []

    started = time.perf_counter()
    with (
        serve_in_thread(map_site(storage)) as server,
        playwright.sync_playwright() as pw,
    ):
        browser = pw.chromium.launch(executable_path=CHROMIUM, headless=True, args=CHROMIUM_ARGS)
        try:
            page = browser.new_page(viewport=VIEWPORT)
            page.on("console", lambda m: errors.append(m.text) if m.type == "error" else None)
            page.on("pageerror", lambda e: errors.append(f"page error: {e}"))

            def only_local(route) -> None:
                if route.request.url.startswith(server.url):
                    route.continue_()
                else:
                    outside.append(route.request.url)
                    route.abort()

            page.route("**/*", only_local)
            page.goto(server.url)
            page.wait_for_function("window.ocrMap !== undefined", timeout=30_000)
            figures["first_idle_ms"] = round(page.evaluate("window.ocrMap.firstIdle"))
            page.evaluate("ocrMap.settle()")
            figures["page_ready_seconds"] = round(time.perf_counter() - started, 2)

            # rendered features at each zoom: census choropleth, centroids, building polygons
            counts = {}
            for zoom, layer in (
                (6.5, "counties-fill"),
                (9.5, "tracts-fill"),
                (12.5, "centroids"),
                (15.5, "buildings"),
            ):
                at = (point.x, point.y) if zoom > 15 else centre
                _view(page, *at, zoom)
                features = _rendered(page, layer)
                counts[f"z{zoom} {layer}"] = len(features)
                assert features, f"nothing rendered in {layer} at zoom {zoom}"
                # numeric keys, as OCR publishes them: "0" building_count and "7" GEOID of a
                # census unit, "0" rps_2011 of a building or centroid
                if layer.endswith("-fill"):
                    assert all(f["0"] > 0 and f["7"] for f in features)
                else:
                    assert all(isinstance(f["0"], float) for f in features), features[:3]
                    assert all(0 <= f["0"] <= 100 for f in features)
            figures["rendered_features"] = counts

            # the 2011 / 2047 toggle repaints buildings and areas from the other year
            _view(page, *centre, 12.5)
            before = page.evaluate("map.getPaintProperty('centroids', 'circle-color')")
            before_pixels = page.locator("canvas").screenshot()
            page.check("#year-2047")
            page.evaluate("ocrMap.settle()")
            after = page.evaluate("map.getPaintProperty('centroids', 'circle-color')")
            tracts = page.evaluate("map.getPaintProperty('tracts-fill', 'fill-color')")
            # centroids: "0" rps_2011, "1" rps_2047; census units: "2" rps_2047_mean
            assert '["get", "0"]' in json.dumps(before) and '["get", "1"]' in json.dumps(after)
            assert '["get", "2"]' in json.dumps(tracts)
            assert page.evaluate("ocrMap.year()") == "2047"
            assert page.locator("#legend-year").inner_text() == "2047"
            assert page.locator("canvas").screenshot() != before_pixels  # colours changed
            page.check("#year-2011")
            page.evaluate("ocrMap.settle()")

            # a click opens a popup with the unit's GEOID, values and histogram
            _view(page, point.x, point.y, 9.5)
            text = _click(page, point.x, point.y)
            assert "GEOID" in text and target["GEOID"][:11] in text, text
            assert page.locator(".maplibregl-popup svg.histogram rect").count() == 11
            # on a building: its own values, then its tract
            _view(page, point.x, point.y, 15.5)
            drawn = page.evaluate(
                "([lon, lat]) => map.queryRenderedFeatures(map.project([lon, lat]), "
                "{layers: ['buildings']}).map((f) => f.properties)",
                [point.x, point.y],
            )
            published = ("rps_2011", "rps_2047", "bp_2011", "bp_2047", "crps_scott")
            published += ("bp_2011_riley", "bp_2047_riley")
            assert drawn and drawn[0] == {
                str(k): float(target[name]) for k, name in enumerate(published)
            }, drawn
            text = _click(page, point.x, point.y)
            assert "Building" in text and f"{target['rps_2011']:.3f}" in text, text
            assert target["GEOID"][:11] in text

            # the risk surface under the vector layers, then without it (the pyramid is
            # optional): the page says so and works as before
            _check_surface(page, storage, figures)
            plain = map_site(storage)
            plain.raster, plain.config = None, {**plain.config, "raster": None}
            with serve_in_thread(plain) as without:
                other = browser.new_page(viewport=VIEWPORT)
                other.on("pageerror", lambda e: errors.append(f"page error: {e}"))
                other.goto(without.url)
                other.wait_for_function("window.ocrMap !== undefined", timeout=30_000)
                other.evaluate("ocrMap.settle()")
                assert "no risk surface" in other.locator("#surface-note").inner_text()
                assert other.evaluate("map.getLayer('surface-2011') === undefined")
                _view(other, *centre, 9.5)
                assert _rendered(other, "tracts-fill")
                other.close()

            # the picture for the README and docs: the whole sample with a tract's popup open
            page.evaluate("ocrMap.closePopup()")
            _view(page, *centre, 11.4)
            _click(page, point.x, point.y)
            page.evaluate("ocrMap.settle()")
            page.screenshot(path=ARTIFACTS / "map-page.png")
        finally:
            browser.close()
    figures["browser_seconds"] = round(time.perf_counter() - started, 1)
    (ARTIFACTS / "map-page.json").write_text(json.dumps(figures, indent=2))
    print(json.dumps(figures))
    assert not outside, f"the page reached outside the server: {outside}"
    assert not errors, f"errors in the browser console: {errors}"
