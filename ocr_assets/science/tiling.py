"""Vector tiles with tippecanoe: layer definitions, feature properties, command lines."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

# Street level: a 10 m building spans several pixels at z16.
BUILDINGS_ZOOM = (6, 16)
CENTROIDS_ZOOM = (6, 13)
REGIONS_ZOOM = (0, 12)
BUILDING_PROPERTIES: tuple[str, ...] = ("rps_2011", "rps_2047", "bp_2011", "bp_2047", "crps_scott")
CENTROID_DECIMALS = 3


@dataclass(frozen=True)
class TileLayer:
    name: str
    source: Path  # FlatGeobuf or GeoJSON file


def tippecanoe_command(
    binary: str,
    output: Path,
    layers: list[TileLayer],
    zoom: tuple[int, int],
    extra: tuple[str, ...] = (),
) -> list[str]:
    """The tippecanoe argv: one ``-L name:file`` per layer, fixed zooms, PMTiles output."""
    if not layers:
        raise ValueError("a tileset needs at least one layer")
    argv = [binary, "-o", str(output), "--force", "--quiet", f"-Z{zoom[0]}", f"-z{zoom[1]}"]
    argv += list(extra)
    for layer in layers:
        argv += ["-L", f"{layer.name}:{layer.source}"]
    return argv


def centroid_properties(values: dict[str, np.ndarray]) -> tuple[dict[str, np.ndarray], np.ndarray]:
    """Centroid layer: keep buildings where both RPS > 0, values rounded to 3 decimals."""
    keep = (values["rps_2011"] > 0) & (values["rps_2047"] > 0)
    rounded = {
        k: np.round(v[keep].astype(np.float64), CENTROID_DECIMALS) for k, v in values.items()
    }
    return rounded, keep
