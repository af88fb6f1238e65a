"""The three PMTiles archives as OCR publishes them (docs/published.md §4.6), from one table
(``TILESETS``): layer and tileset names, numeric keys, tippecanoe flags, centroid rule.

- `regional_pmtiles` (phase02): `region_risk_summary_stats` → `regions.pmtiles`, a layer per
  census level
- `building_centroid_pmtiles` (phase03): `buildings_geoparquet` → `building_centroids.pmtiles`
- `building_pmtiles` (phase03): `buildings_geoparquet` → `buildings.pmtiles`

Each layer is streamed, a batch at a time, into newline-delimited GeoJSON features in a scratch
folder (the input OCR gives tippecanoe), tiled, and moved into place with its key map and the
vector products' metadata in the archive's metadata.
"""

import subprocess
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any

import dagster as dg
import duckdb
import numpy as np
import pyarrow as pa
import shapely

from ocr_assets.constants import PHASE03_GROUP
from ocr_assets.step import run_step, step_asset
from ocr_resources.compute import ComputeProfile, OcrCompute
from ocr_resources.publication import vector_metadata
from ocr_resources.scratch import scratch_dir
from ocr_resources.storage import BATCH_ROWS, OcrStorage
from ocr_resources.tools import tippecanoe_binary
from ocr_science.parallel import ordered_map, worker_threads
from ocr_science.tiling import (
    BBOX,
    BUILDING_FLAGS,
    BUILDING_KEYS,
    CENTROID_DECIMALS,
    CENTROID_FLAGS,
    CENTROID_KEYS,
    REGION_FLAGS,
    REGION_KEYS,
    REGION_LEVEL_NAMES,
    TileLayer,
    centroid_rows,
    feature_lines,
    key_map,
    region_key_map,
    tippecanoe_command,
)

# argv[0] of tippecanoe, recorded in the archive's metadata: its name, not this machine's path
TIPPECANOE = "tippecanoe"
BUILDING_LAYER = "risk"
# tippecanoe's minimum zoom when no -Z is given
DEFAULT_MIN_ZOOM = 0
# what computes the archives (their code version): this table and its streaming, the tiling
# science, the published metadata, and the archive's writer
CODE: tuple[str, ...] = (
    __name__,
    "ocr_science.tiling",
    "ocr_resources.publication",
    "ocr_resources.storage.vector",
)


# A tile layer's GeoJSON Feature lines in pieces (feature count, their text), made when
# tiling starts (a fresh stream each time it is called)
LayerSource = Callable[[], Iterator[tuple[int, bytes]]]


def lines_text(lines: pa.Array) -> bytes:
    """A string array's text as it is in memory (each element ends its own line)."""
    if lines.null_count:
        raise ValueError("a feature line is null")
    width = np.int64 if pa.types.is_large_string(lines.type) else np.int32
    offsets = np.frombuffer(lines.buffers()[1], width)[lines.offset : lines.offset + len(lines) + 1]
    if not len(lines):
        return b""
    return bytes(memoryview(lines.buffers()[2])[offsets[0] : offsets[-1]])


# per thread of whichever process turns row groups into lines: its storage and DuckDB
_LOCAL = threading.local()


@dataclass(frozen=True)
class RowGroupLines:
    """A Parquet file's row group → (feature count, GeoJSON lines), in this process or in a
    worker process: plain values only (the storage travels as its spec), ``batch_lines`` a
    module-level function (or a partial of one) of a DuckDB connection and a batch."""

    storage: dict[str, Any]  # OcrStorage.spec()
    path: str
    columns: tuple[str, ...]
    batch_rows: int
    batch_lines: Callable[[duckdb.DuckDBPyConnection, pa.RecordBatch], pa.Array]

    def __call__(self, group: int) -> tuple[int, bytes]:
        if getattr(_LOCAL, "spec", None) != self.storage:
            _LOCAL.spec, _LOCAL.storage = self.storage, OcrStorage(**self.storage)
        if not hasattr(_LOCAL, "con"):
            _LOCAL.con = duckdb.connect(config={"threads": 1})
        batches = _LOCAL.storage.vector.iter_batches(
            self.path, list(self.columns), self.batch_rows, row_groups=[group]
        )
        pieces = [self.batch_lines(_LOCAL.con, batch) for batch in batches]
        return sum(len(p) for p in pieces), b"".join(lines_text(p) for p in pieces)


def parallel_lines(
    storage: OcrStorage,
    path: str,
    columns: list[str],
    batch_rows: int,
    batch_lines: Callable[[duckdb.DuckDBPyConnection, pa.RecordBatch], pa.Array],
) -> Iterator[tuple[int, bytes]]:
    """The feature lines of a Parquet file's rows: each row group read (its page checksums
    verified) and turned into lines in a worker process (shapely's WKB reader and GeoJSON
    writer hold the GIL: threads gained 1.2× from 2 cores, bench/scale_results.jsonl), yielded
    in the file's order, so the layer is the same bytes whatever the worker count; a few row
    groups in memory at a time (``ordered_map``'s window). One row group: in this process.
    The workers are spawned: a script of one's own that tiles guards its entry point
    (``if __name__ == "__main__":``), as Python's multiprocessing asks."""
    groups = range(storage.vector.parquet_metadata(path).num_row_groups)
    job = RowGroupLines(storage.spec(), path, tuple(columns), batch_rows, batch_lines)
    yield from ordered_map(job, groups, min(worker_threads(), len(groups)), processes=True)


def write_layer(source: LayerSource, path: Path) -> int:
    """Stream a layer into a newline-delimited GeoJSON file; the feature count."""
    count = 0
    with open(path, "wb") as f:
        for features, text in source():
            f.write(text)
            count += features
    return count


@dataclass(frozen=True)
class Tileset:
    """One archive: its asset, file, tileset name (``-n``), layers with their key maps, flags
    and source."""

    key: str
    archive: str  # the file's name: pmtiles/<archive>.pmtiles
    name: str  # tippecanoe's -n, the metadata's "name"
    upstream: str
    key_maps: dict[str, dict[str, str]]  # layer → {"0": column, …}, layers in tippecanoe's order
    keys: tuple[str, ...]  # every key's column, by number (what "0", "1", … hold)
    flags: tuple[str, ...]
    min_zoom: int  # what the header must say (-Z, or tippecanoe's default)
    layers: Callable[..., dict[str, LayerSource]]  # (storage, spec, batch_rows) → layers
    description: str
    profile: ComputeProfile  # the VM its step runs on (tippecanoe's threads, the lines' workers)
    centroids: bool = False  # points where both RPS > 0, values rounded (OCR's centroid rule)

    @property
    def layer_names(self) -> tuple[str, ...]:
        return tuple(self.key_maps)


def building_layers(
    storage: OcrStorage, spec: Tileset, batch_rows: int = BATCH_ROWS
) -> dict[str, LayerSource]:
    """The ``risk`` layer, one feature per building of the consolidated file (the region
    files' rows, in region order), a batch at a time: polygons, or centroid points."""
    path = storage.layout.consolidated_buildings
    keys = spec.key_maps[BUILDING_LAYER]
    columns = list(keys.values())
    batch_lines = partial(building_batch_lines, keys, spec.centroids)

    def lines() -> Iterator[tuple[int, bytes]]:
        return parallel_lines(storage, path, [*columns, "geometry"], batch_rows, batch_lines)

    return {BUILDING_LAYER: lines}


def building_batch_lines(
    keys: dict[str, str], centroids: bool, con: duckdb.DuckDBPyConnection, batch: pa.RecordBatch
) -> pa.Array:
    """A batch of buildings as feature lines: polygons, or centroid points where both RPS > 0
    with values rounded (OCR's centroid rule)."""
    table = pa.Table.from_batches([batch])
    if centroids:
        values = {k: table.column(k).to_numpy() for k in CENTROID_KEYS}
        table = table.filter(pa.array(centroid_rows(values)))
    polygons = shapely.from_wkb(table.column("geometry").to_numpy(zero_copy_only=False))
    return feature_lines(
        con,
        table.select(list(keys.values())),
        polygons,
        keys,
        centroids=centroids,
        decimals=CENTROID_DECIMALS if centroids else None,
    )


def region_batch_lines(
    keys: dict[str, str], columns: list[str], con: duckdb.DuckDBPyConnection, batch: pa.RecordBatch
) -> pa.Array:
    """A batch of census units as feature lines (their bbox from their polygons)."""
    table = pa.Table.from_batches([batch])
    polygons = shapely.from_wkb(table.column("geometry").to_numpy(zero_copy_only=False))
    return feature_lines(con, table.select(columns), polygons, keys)


def regional_layers(
    storage: OcrStorage, spec: Tileset, batch_rows: int = BATCH_ROWS
) -> dict[str, LayerSource]:
    """One layer per census level from its statistics file, a batch at a time."""

    def level_layer(level: str) -> LayerSource:
        path = storage.layout.region_summary_stats(level)
        keys = spec.key_maps[level]
        columns = [c for c in keys.values() if c != BBOX]
        missing = set(columns) - set(storage.vector.parquet_schema(path).names)
        if missing:
            raise ValueError(f"{path} has no column(s) {sorted(missing)} for the {level} tiles")

        batch_lines = partial(region_batch_lines, keys, columns)

        def lines() -> Iterator[tuple[int, bytes]]:
            return parallel_lines(storage, path, [*columns, "geometry"], batch_rows, batch_lines)

        return lines

    return {level: level_layer(level) for level in spec.layer_names}


# every archive's step: one VM, its disk for tippecanoe's temporary files
TILE_PROFILE = ComputeProfile("c8g.12xlarge", "c8g.12xlarge", 250)
TILESETS: tuple[Tileset, ...] = (
    Tileset(
        "regional_pmtiles",
        "regions",
        "regions",
        "region_risk_summary_stats",
        {level: region_key_map(level) for level in REGION_LEVEL_NAMES},
        REGION_KEYS,
        REGION_FLAGS,
        DEFAULT_MIN_ZOOM,
        regional_layers,
        "Census-unit statistics under numeric keys, one layer per level (counties, tracts, "
        "blocks, states, nation).",
        TILE_PROFILE,
    ),
    Tileset(
        "building_centroid_pmtiles",
        "building_centroids",
        "centroid",
        "buildings_geoparquet",
        {BUILDING_LAYER: key_map(CENTROID_KEYS)},
        CENTROID_KEYS,
        CENTROID_FLAGS,
        DEFAULT_MIN_ZOOM,
        building_layers,
        "Building centroids where both RPS > 0, RPS rounded to 3 decimals (layer risk).",
        TILE_PROFILE,
        centroids=True,
    ),
    Tileset(
        "building_pmtiles",
        "buildings",
        "building",
        "buildings_geoparquet",
        {BUILDING_LAYER: key_map(BUILDING_KEYS)},
        BUILDING_KEYS,
        BUILDING_FLAGS,
        6,  # "-Z 6"
        building_layers,
        "Building polygons with RPS, BP and CRPS under numeric keys (layer risk), from zoom 6.",
        TILE_PROFILE,
    ),
)
TILESET_BY_ARCHIVE: dict[str, Tileset] = {spec.archive: spec for spec in TILESETS}


def build_pmtiles(storage: OcrStorage, spec: Tileset, layers: dict[str, LayerSource]) -> dict:
    """Stream each layer to GeoJSON lines in a scratch folder, tile it, move the archive into
    place with the key maps and the vector products' metadata added to its metadata.

    The scratch folder is removed afterwards, and by the next tile step if this process is
    killed (``scratch_dir``). tippecanoe writes its command line into the archive's metadata
    (``generator_options``), so it runs inside the scratch folder on relative names, as plain
    ``tippecanoe``: the same inputs give the same archive, byte for byte, wherever it runs.
    """
    binary = tippecanoe_binary()  # before any work: a missing tool fails the step at once
    with scratch_dir(f"pmtiles-{spec.archive}") as scratch:
        sources, features = [], {}
        for layer, source in layers.items():
            path = Path(f"{layer}.ndjson")
            features[layer] = write_layer(source, scratch / path)
            sources.append(TileLayer(layer, path))
        output = Path(f"{spec.archive}.pmtiles")
        argv = tippecanoe_command(TIPPECANOE, output, spec.name, sources, spec.flags)
        done = subprocess.run(
            argv, executable=binary, cwd=scratch, capture_output=True, text=True, check=False
        )
        if done.returncode != 0:
            raise RuntimeError(
                f"tippecanoe failed for {spec.archive} ({done.returncode}): {done.stderr[-2000:]}"
            )
        target = storage.layout.pmtiles(spec.archive)
        # the key maps (OCR's archives have none: a reader can then decode the numeric keys)
        # and the vector products' 7 keys, nested so tippecanoe's own "version" (the TileJSON
        # tileset version) keeps its meaning
        added = {
            "key_map": {layer: spec.key_maps[layer] for layer in layers},
            "metadata": vector_metadata(storage.version),
        }
        size = storage.vector.put_pmtiles(
            str(scratch / output), target, added, lambda summary: _refuse(spec, summary)
        )
    summary = storage.vector.pmtiles_summary(target)
    return {
        "bytes": size,
        "layers": list(layers),
        "features": features,
        "min_zoom": summary["min_zoom"],
        "max_zoom": summary["max_zoom"],
    }


def build_tileset(storage: OcrStorage, spec: Tileset, batch_rows: int = BATCH_ROWS) -> dict:
    """Describe the layers and tile them (one call, so it can run on a remote worker)."""
    return build_pmtiles(storage, spec, spec.layers(storage, spec, batch_rows))


def archive_problems(spec: Tileset, summary: dict[str, Any]) -> list[str]:
    """What the written archive gets wrong against the table: tileset name, layers, key maps,
    minimum zoom (the maximum is tippecanoe's guess, -zg)."""
    problems = []
    if summary["name"] != spec.name:
        problems.append(f"tileset name {summary['name']!r}, expected {spec.name!r}")
    if sorted(summary["layers"]) != sorted(spec.layer_names):
        problems.append(f"layers {summary['layers']}, expected {list(spec.layer_names)}")
    if summary["min_zoom"] != spec.min_zoom or summary["max_zoom"] < spec.min_zoom:
        problems.append(
            f"zooms {summary['min_zoom']}–{summary['max_zoom']}, expected from {spec.min_zoom}"
        )
    if summary["key_map"] != spec.key_maps:
        problems.append(f"key map {summary['key_map']}, expected {spec.key_maps}")
    return problems


class ArchiveCheckError(ValueError):
    """An archive that breaks the rules of its check, found before it is published."""


def _refuse(spec: Tileset, summary: dict[str, Any]) -> None:
    """The tileset's check on an archive before it replaces the previous one."""
    if problems := archive_problems(spec, summary):
        raise ArchiveCheckError(
            f"{check_name(spec)}: {'; '.join(problems)}; the previous archive is kept"
        )


def check_name(spec: Tileset) -> str:
    return f"{spec.key}_header_and_layers"


def _tileset_asset(spec: Tileset) -> dg.AssetsDefinition:
    # all three tilesets in the tiles group (docs/design.md §2)
    @step_asset(
        spec.key, PHASE03_GROUP, [spec.upstream], spec.description, {"pmtiles"}, CODE, spec.profile
    )
    def _build(
        context: dg.AssetExecutionContext, storage: OcrStorage, compute: OcrCompute
    ) -> dg.MaterializeResult:
        step = run_step(context, storage, compute, build_tileset, spec)
        return step.materialize(
            [storage.layout.pmtiles(spec.archive)],
            path=dg.MetadataValue.path(storage.layout.pmtiles(spec.archive)),
            **step.result,
        )

    return _build


def _tileset_check(spec: Tileset) -> dg.AssetChecksDefinition:
    @dg.asset_check(
        asset=spec.key,
        name=check_name(spec),
        description=f"The archive is tileset {spec.name!r} with exactly the layers "
        f"{', '.join(spec.layer_names)}, minimum zoom {spec.min_zoom}, and each layer's key "
        "map in its metadata.",
    )
    def _check(storage: OcrStorage) -> dg.AssetCheckResult:
        summary = storage.vector.pmtiles_summary(storage.layout.pmtiles(spec.archive))
        problems = archive_problems(spec, summary)
        return dg.AssetCheckResult(
            passed=not problems,
            metadata={**summary, "key_map": str(summary["key_map"]), "problems": str(problems)},
        )

    return _check


TILESET_ASSETS = [_tileset_asset(spec) for spec in TILESETS]
TILESET_CHECKS = [_tileset_check(spec) for spec in TILESETS]
