"""What ``ocr serve`` serves: the map page's folder, one environment's PMTiles archives, the
risk surface's PNG tiles (``raster.py``), and the page's configuration (zooms, score bins,
colours) from the same tables the pipeline uses.

The page's libraries are files on local disk (``make web`` copies them from npm into
``ocr_jobs/serve/web/vendor``); nothing is fetched from a CDN. Archives are read through the
storage resource's filesystem, so a local root and an ``s3://`` root are served the same way.
"""

from __future__ import annotations

import hashlib
import mimetypes
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import dagster as dg
import fsspec
import numpy as np

from ocr_assets.constants import RISK_PYRAMID
from ocr_assets.region_records import newest_region_materialization, outputs_older_than_regions
from ocr_assets.tiles import TILESET_BY_ARCHIVE, TILESETS
from ocr_jobs.serve.raster import RASTER_VARIABLES, PyramidTiles
from ocr_resources.storage import OcrStorage
from ocr_science.scoring import RISK_COLORS, SCORE_EDGES

WEB_DIR = Path(__file__).with_name("web")
VENDOR_DIR = WEB_DIR / "vendor"
# what `make web` copies from web/node_modules; the page loads exactly these
VENDOR_FILES: tuple[str, ...] = (
    "maplibre-gl.mjs",
    "maplibre-gl-worker.mjs",
    "maplibre-gl.css",
    "pmtiles.js",
    "topojson-client.min.js",
    "states-10m.json",
)
# what each archive's numeric property keys hold, from the one table that builds the archives
ARCHIVE_KEYS: dict[str, tuple[str, ...]] = {t.archive: t.keys for t in TILESETS}
CONTENT_TYPES = {
    ".mjs": "text/javascript",  # module scripts are refused under any non-JavaScript type
    ".js": "text/javascript",
    ".css": "text/css",
    ".html": "text/html; charset=utf-8",
    ".json": "application/json",
    ".pmtiles": "application/vnd.pmtiles",
    ".png": "image/png",
}


class ServeError(RuntimeError):
    """The server cannot start for this environment; the message says what to do."""


@dataclass(frozen=True)
class ServedFile:
    """A file behind a URL: where it is, how big, and its validator (ETag)."""

    fs: fsspec.AbstractFileSystem
    path: str
    content_type: str

    def stat(self) -> tuple[int, str]:
        info = self.fs.info(self.path)
        if info.get("type") != "file":
            raise FileNotFoundError(self.path)
        size = int(info["size"])
        stamp = info.get("ETag") or info.get("mtime") or info.get("LastModified") or ""
        token = hashlib.sha1(f"{self.path}|{size}|{stamp}".encode()).hexdigest()[:20]
        return size, f'"{token}"'  # strong: PMTiles readers ignore weak (W/) ETags

    def read(self, start: int, stop: int) -> bytes:
        return self.fs.cat_file(self.path, start=start, end=stop)


@dataclass
class MapSite:
    """What the server serves: the page's folder, the archives by name, the risk surface's
    tiles (when the environment has a pyramid), the page's config."""

    archives: dict[str, ServedFile]
    config: dict[str, Any]
    web_dir: Path = WEB_DIR
    missing: list[str] = field(default_factory=list)
    raster: PyramidTiles | None = None

    def static(self, relative: str) -> ServedFile | None:
        """A file under the page's folder, or None if the path would leave it."""
        parts = relative.split("/")
        if any(p in ("", ".", "..") or "\\" in p or "\0" in p for p in parts):
            return None
        root = self.web_dir.resolve()
        target = root.joinpath(*parts).resolve()
        if not target.is_relative_to(root):  # a symlink pointing out of the folder
            return None
        return ServedFile(fsspec.filesystem("file"), str(target), content_type(target.name))


def content_type(name: str) -> str:
    suffix = Path(name).suffix.lower()
    return CONTENT_TYPES.get(suffix) or mimetypes.guess_type(name)[0] or "application/octet-stream"


def page_config(
    storage: OcrStorage, available: list[str], raster: PyramidTiles | None = None
) -> dict[str, Any]:
    """What the page needs from Python, so the map and the pipeline cannot disagree.

    ``score_edges`` are the binning function's edges in float32 — the precision RPS is
    stored in — so a building on an edge gets the same score on the map as in the tables.
    ``raster`` is the risk surface's tile source (null without a pyramid): zooms past its
    finest level draw that level's tiles enlarged.
    """
    zooms = raster.zooms() if raster else []
    return {
        "environment": storage.environment,
        "version": storage.version,
        "archives": {name: f"/pmtiles/{name}.pmtiles" for name in available},
        # the page finds a property's numeric key here ("rps_2011" → "0"); a key keeps its
        # number on every layer (a census level without NAME has no "9")
        "keys": {name: {n: str(i) for i, n in enumerate(ARCHIVE_KEYS[name])} for name in available},
        "score_edges": [float(e) for e in SCORE_EDGES.astype(np.float32)],
        "colors": list(RISK_COLORS),
        "raster": {
            "tiles": {v[-4:]: f"/tiles/{v}/{{z}}/{{x}}/{{y}}.png" for v in RASTER_VARIABLES},
            "minzoom": zooms[0],
            "maxzoom": zooms[-1],
            "bounds": raster.bounds(),
        }
        if zooms
        else None,
    }


def stale_outputs(
    instance: dg.DagsterInstance, archives: list[str], pyramid: bool
) -> dict[str, Any] | None:
    """What the page serves that is older than the regions in the environment's instance (a
    region recomputed without its downstream, ``ocr deploy --regions-only``): the served
    files' names, and when the regions last changed; None when nothing served is older."""
    served = {TILESET_BY_ARCHIVE[name].key: f"{name}.pmtiles" for name in archives}
    if pyramid:
        served[RISK_PYRAMID] = "pyramid"
    older = outputs_older_than_regions(instance, list(served))
    if not older:
        return None
    newest = newest_region_materialization(instance)
    return {
        "outputs": [served[key] for key in served if key in older],
        "regions_updated": datetime.fromtimestamp(newest or 0, UTC).isoformat(timespec="seconds"),
    }


def missing_vendor_files(vendor_dir: Path = VENDOR_DIR) -> list[str]:
    return [name for name in VENDOR_FILES if not (vendor_dir / name).is_file()]


def map_site(
    storage: OcrStorage, web_dir: Path = WEB_DIR, instance: dg.DagsterInstance | None = None
) -> MapSite:
    """The site for one environment: refuse early if the page or every archive is missing.
    With the environment's ``instance``, the config says which served outputs are older than
    the regions (``stale``: the page's banner)."""
    missing_vendor = missing_vendor_files(web_dir / "vendor")
    if missing_vendor:
        raise ServeError(
            f"the map page's libraries are missing from {web_dir / 'vendor'} "
            f"({', '.join(missing_vendor)}); run `make web` (npm) to install them"
        )
    fs = storage.files.fs
    archives, missing = {}, []
    for name in TILESET_BY_ARCHIVE:
        path = storage.layout.pmtiles(name)
        if fs.isfile(path):
            archives[name] = ServedFile(fs, path, CONTENT_TYPES[".pmtiles"])
        else:
            missing.append(name)
    if not archives:
        raise ServeError(
            f"no PMTiles under {storage.layout.vector_prefix}/pmtiles; materialize the tiles "
            "first (`make run`, or `ocr deploy` for this environment)"
        )
    pyramid = storage.layout.pyramid
    raster = (
        PyramidTiles(fs, storage.files.fs_path(pyramid))
        if fs.isfile(f"{pyramid}/zarr.json")
        else None
    )
    try:
        config = page_config(storage, list(archives), raster)
    except (OSError, ValueError, KeyError) as exc:  # zarr's errors are ValueErrors
        raise ServeError(
            f"the pyramid at {pyramid} cannot be read ({type(exc).__name__}: {exc}); rebuild it "
            "(`ocr deploy --create-pyramid --allow-all-processed`) or remove it"
        ) from exc
    config["stale"] = (
        stale_outputs(instance, list(archives), raster is not None) if instance else None
    )
    return MapSite(archives, config, web_dir, missing, raster)
