"""Vector tiles as OCR publishes them (docs/published.md §4.6): numeric property keys, the
features as newline-delimited GeoJSON, tippecanoe's command line.

The properties are written by DuckDB's ``json_object``, as OCR's own export does, so numbers
carry the same text: a float32 value as its exact double (``0.10000000149011612``), a list as
a JSON array (which tippecanoe stores in the tile as the array's JSON text).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import duckdb
import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import shapely

from ocr_science.statistics import STAT_VARIABLES

# What each numeric key holds, in key order ("0", "1", …): create_building_pmtiles.py:49-57,
# create_building_centroid_pmtiles.py:43-46, create_regional_pmtiles.py:75-90 at OCR 0a1b285.
# (the buildings' keys are the statistics' variables, in the same order)
BUILDING_KEYS: tuple[str, ...] = STAT_VARIABLES
CENTROID_KEYS: tuple[str, ...] = ("rps_2011", "rps_2047")
# "bbox" is [xmin, ymin, xmax, ymax] of the unit's polygon; NAME and STUSPS keep their keys
# ("9", "10") on the levels OCR gives them (REGION_LEVEL_NAMES) and are absent elsewhere
REGION_KEYS: tuple[str, ...] = (
    "building_count",
    "rps_2011_mean",
    "rps_2047_mean",
    "rps_2011_median",
    "rps_2047_median",
    "risk_score_2011_hist",
    "risk_score_2047_hist",
    "GEOID",
    "bbox",
    "NAME",
    "STUSPS",
)
BBOX = "bbox"
# the census levels in the order OCR gives them to tippecanoe, with their name columns
REGION_LEVEL_NAMES: dict[str, tuple[str, ...]] = {
    "counties": ("NAME",),
    "tracts": (),
    "blocks": (),
    "states": ("NAME", "STUSPS"),
    "nation": ("NAME",),
}
CENTROID_DECIMALS = 3

# tippecanoe's flags per archive, as OCR passes them ("-Z 6" is one argv token there too)
REGION_FLAGS: tuple[str, ...] = (
    "-f",
    "-P",
    "--drop-smallest-as-needed",
    "-q",
    "--extend-zooms-if-still-dropping",
    "-zg",
)
# the buildings' are the regions' and two more, in OCR's order
BUILDING_FLAGS: tuple[str, ...] = (*REGION_FLAGS, "-Z 6", "--generate-ids")
CENTROID_FLAGS: tuple[str, ...] = (
    "-f",
    "-P",
    "--drop-fraction-as-needed",
    "--no-feature-limit",
    "--extend-zooms-if-still-dropping",
    "-zg",
    "-q",
)


@dataclass(frozen=True)
class TileLayer:
    name: str
    source: Path  # newline-delimited GeoJSON


def key_map(keys: tuple[str, ...], present: tuple[str, ...] | None = None) -> dict[str, str]:
    """``{"0": name, …}`` for the names a layer has (all by default); a key's number is the
    name's place in ``keys`` whichever names are left out."""
    return {str(i): name for i, name in enumerate(keys) if present is None or name in present}


def region_key_map(level: str) -> dict[str, str]:
    """A census level's keys: the statistics, GEOID and bbox, and its name columns."""
    if level not in REGION_LEVEL_NAMES:
        raise ValueError(f"census level {level!r} is not one of {list(REGION_LEVEL_NAMES)}")
    return key_map(REGION_KEYS, (*REGION_KEYS[:9], *REGION_LEVEL_NAMES[level]))


def tippecanoe_command(
    binary: str, output: Path, name: str, layers: list[TileLayer], flags: tuple[str, ...]
) -> list[str]:
    """tippecanoe's argv in OCR's order: one layer as ``-l layer -n name flags file``, several
    as ``-L layer:file … -n name flags``."""
    if not layers:
        raise ValueError("a tileset needs at least one layer")
    if len(layers) == 1:
        (layer,) = layers
        return [binary, "-o", str(output), "-l", layer.name, "-n", name, *flags, str(layer.source)]
    named = [arg for layer in layers for arg in ("-L", f"{layer.name}:{layer.source}")]
    return [binary, "-o", str(output), *named, "-n", name, *flags]


def centroid_rows(values: dict[str, np.ndarray]) -> np.ndarray:
    """The centroid archive's rows: both RPS > 0 (NaN is not)."""
    return (values["rps_2011"] > 0) & (values["rps_2047"] > 0)


def properties_sql(keys: dict[str, str], decimals: int | None = None) -> str:
    """DuckDB ``json_object`` of the key map over the scan ``features``; values cast to DOUBLE
    and rounded when ``decimals`` is given (OCR's centroid rule)."""

    def value(column: str) -> str:
        quoted = f'"{column}"'
        return quoted if decimals is None else f"round(CAST({quoted} AS DOUBLE), {int(decimals)})"

    pairs = ", ".join(f"'{k}', {value(column)}" for k, column in keys.items())
    return f"SELECT json_object({pairs}) FROM features"


def feature_lines(
    con: duckdb.DuckDBPyConnection,
    columns: pa.Table,
    polygons: np.ndarray,
    keys: dict[str, str],
    centroids: bool = False,
    decimals: int | None = None,
) -> pa.Array:
    """One GeoJSON Feature line (newline-terminated) per row of ``columns``: its properties
    under the numeric keys, its polygon (or the polygon's planar centroid) as geometry.

    ``columns`` holds the key map's columns but ``bbox``, which comes from the polygons;
    ``polygons`` are shapely geometries, one per row.
    """
    if len(polygons) != columns.num_rows:
        raise ValueError(f"{len(polygons)} polygons for {columns.num_rows} rows")
    if BBOX in keys.values():
        bounds = shapely.bounds(polygons)
        columns = columns.append_column(
            BBOX,
            pa.FixedSizeListArray.from_arrays(pa.array(bounds.ravel()), 4).cast(
                pa.list_(pa.float64())
            ),
        )
    con.register("features", columns)
    try:
        # one scan, no ORDER BY: DuckDB keeps the insertion order (preserve_insertion_order)
        properties = con.sql(properties_sql(keys, decimals)).to_arrow_table().column(0)
    finally:
        con.unregister("features")
    shapes = shapely.centroid(polygons) if centroids else polygons
    geometry = pa.array(shapely.to_geojson(shapes), pa.string())
    return pc.binary_join_element_wise(
        '{"type":"Feature","properties":',
        properties.combine_chunks().cast(pa.string()),
        ',"geometry":',
        geometry,
        "}\n",
        "",
    )
