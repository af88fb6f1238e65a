"""Golden tests of the three PMTiles archives against the published contract
(docs/published.md §4.6): paths, tileset and layer names, numeric keys and their key maps,
tippecanoe's argv, and the decoded tiles' properties against the rows they come from (read
here with pyarrow, decoded with ``pmtiles`` and ``mapbox-vector-tile``)."""

from __future__ import annotations

import gzip
import json
import math
import shlex
from collections import Counter
from pathlib import Path

import dagster as dg
import geopandas as gpd
import mapbox_vector_tile
import numpy as np
import pyarrow.parquet as pq
import pytest
import shapely
import shapely.affinity
from pmtiles.reader import MmapSource, Reader, all_tiles

from ocr_assets.tiles import TILESET_BY_ARCHIVE, TILESETS, build_tileset
from ocr_jobs.definitions import build_definitions, build_resources
from ocr_jobs.jobs import DOWNSTREAM_CORE_JOB, REGION_JOB
from ocr_resources.publication import vector_metadata
from ocr_resources.settings import OcrSettings
from ocr_resources.storage import OcrStorage
from ocr_science.tiling import TileLayer, tippecanoe_command
from tests.sample_inputs import link_inputs

REGIONS = ("y1_x1", "y1_x2")
VERSION = "1.2.3"

# docs/published.md §4.6, written out here rather than taken from the code under test
BUILDING_KEYS = {
    "0": "rps_2011",
    "1": "rps_2047",
    "2": "bp_2011",
    "3": "bp_2047",
    "4": "crps_scott",
    "5": "bp_2011_riley",
    "6": "bp_2047_riley",
}
CENTROID_KEYS = {"0": "rps_2011", "1": "rps_2047"}
REGION_KEYS = {
    "0": "building_count",
    "1": "rps_2011_mean",
    "2": "rps_2047_mean",
    "3": "rps_2011_median",
    "4": "rps_2047_median",
    "5": "risk_score_2011_hist",
    "6": "risk_score_2047_hist",
    "7": "GEOID",
    "8": "bbox",
}
NAMED = {"9": "NAME"}
LEVEL_KEYS = {
    "counties": {**REGION_KEYS, **NAMED},
    "tracts": REGION_KEYS,
    "blocks": REGION_KEYS,
    "states": {**REGION_KEYS, **NAMED, "10": "STUSPS"},
    "nation": {**REGION_KEYS, **NAMED},
}
PUBLISHED_ARGV = {
    "buildings": "tippecanoe -o out.pmtiles -l risk -n building -f -P --drop-smallest-as-needed "
    "-q --extend-zooms-if-still-dropping -zg|-Z 6|--generate-ids risk.ndjson",
    "building_centroids": "tippecanoe -o out.pmtiles -l risk -n centroid -f -P "
    "--drop-fraction-as-needed --no-feature-limit --extend-zooms-if-still-dropping -zg -q "
    "risk.ndjson",
    "regions": "tippecanoe -o out.pmtiles -L counties:counties.ndjson -L tracts:tracts.ndjson "
    "-L blocks:blocks.ndjson -L states:states.ndjson -L nation:nation.ndjson -n regions -f -P "
    "--drop-smallest-as-needed -q --extend-zooms-if-still-dropping -zg",
}


def _argv(text: str) -> list[str]:
    """Space-separated tokens; "|" separates a token that holds a space ("-Z 6")."""
    return [t for part in text.split("|") for t in ([part] if part == "-Z 6" else part.split())]


def test_tippecanoe_argv_is_the_published_one():
    """Each published archive's command (a product of this project's own needs no pin)."""
    for archive in PUBLISHED_ARGV:
        spec = TILESET_BY_ARCHIVE[archive]
        layers = [TileLayer(n, Path(f"{n}.ndjson")) for n in spec.layer_names]
        argv = tippecanoe_command("tippecanoe", Path("out.pmtiles"), spec.name, layers, spec.flags)
        assert argv == _argv(PUBLISHED_ARGV[spec.archive]), spec.archive
    assert "-Z 6" in TILESET_BY_ARCHIVE["buildings"].flags  # one token, as OCR passes it


@pytest.fixture(scope="module")
def tiles(tmp_path_factory, sample_root) -> dict:
    """Two sample regions, then the core downstream job (statistics and tiles) at a version."""
    root = tmp_path_factory.mktemp("published-tiles")
    link_inputs(sample_root, root)
    settings = OcrSettings(storage_root=str(root), environment="production", version=VERSION)
    defs = build_definitions(settings)
    with dg.instance_for_test() as instance:
        for region in REGIONS:
            job = defs.resolve_job_def(REGION_JOB)
            assert job.execute_in_process(partition_key=region, instance=instance).success
        result = defs.resolve_job_def(DOWNSTREAM_CORE_JOB).execute_in_process(instance=instance)
        assert result.success
        checks = {
            e.event_specific_data.check_name: e.event_specific_data.passed
            for e in result.all_events
            if e.event_type == dg.DagsterEventType.ASSET_CHECK_EVALUATION
        }
    return {"root": root, "storage": build_resources(settings)["storage"], "checks": checks}


def _archive(path: str, y_down: bool = False) -> tuple[dict, dict, dict]:
    """Header, metadata and every tile, decoded ({(z, x, y): layers})."""
    with open(path, "rb") as f:
        reader = Reader(MmapSource(f))
        header, metadata = reader.header(), reader.metadata()
        decoded = {}
        for zxy, data in all_tiles(reader.get_bytes):
            if data[:2] == b"\x1f\x8b":
                data = gzip.decompress(data)
            decoded[zxy] = mapbox_vector_tile.decode(data, default_options={"y_coord_down": y_down})
    return header, metadata, decoded


def _at_max_zoom(header: dict, decoded: dict, layer: str) -> list[dict]:
    return [
        feature
        for (z, _, _), tile in decoded.items()
        if z == header["max_zoom"]
        for feature in tile.get(layer, {}).get("features", [])
    ]


def test_archives_are_at_the_published_paths_with_names_layers_and_key_maps(tiles):
    storage = tiles["storage"]
    output = f"{tiles['root']}/output/fire-risk/vector/production/v{VERSION}"
    expected = {
        "buildings": ("building", {"risk": BUILDING_KEYS}, 6),
        "building_centroids": ("centroid", {"risk": CENTROID_KEYS}, 0),
        "regions": ("regions", LEVEL_KEYS, 0),
    }
    for archive, (name, key_maps, min_zoom) in expected.items():
        path = storage.layout.pmtiles(archive)
        assert path == f"{output}/pmtiles/{archive}.pmtiles"
        with open(path, "rb") as f:
            reader = Reader(MmapSource(f))
            header, metadata = reader.header(), reader.metadata()
        assert metadata["name"] == name, archive
        assert {layer["id"] for layer in metadata["vector_layers"]} == set(key_maps), archive
        assert metadata["key_map"] == key_maps, archive
        assert metadata["metadata"] == vector_metadata(VERSION)
        assert metadata["version"] == "2"  # tippecanoe's tileset version, kept
        assert header["min_zoom"] == min_zoom and header["max_zoom"] > min_zoom, archive
        options = metadata["generator_options"]
        # tippecanoe records its argv shell-quoted ("'-Z 6'")
        assert options == shlex.join(
            tippecanoe_command(
                "tippecanoe",
                Path(f"{archive}.pmtiles"),
                name,
                [TileLayer(n, Path(f"{n}.ndjson")) for n in key_maps],
                TILESET_BY_ARCHIVE[archive].flags,
            )
        )
    assert all(tiles["checks"][f"{s.key}_header_and_layers"] for s in TILESETS), tiles["checks"]


def _buildings(storage) -> dict[str, np.ndarray]:
    table = pq.read_table(storage.layout.consolidated_buildings)
    return {name: table.column(name).to_numpy() for name in table.column_names}


def test_building_features_carry_their_rows_values_under_numeric_keys(tiles):
    """One feature per row of the region files (in region order, as the consolidated file
    holds them) at the maximum zoom: its id (--generate-ids) the same in every tile it spans,
    its properties the row's 7 values under "0".."6", unrounded (a float32 as its exact
    double). tippecanoe numbers the features by where -P's readers meet them, not by row."""
    storage = tiles["storage"]
    rows = _buildings(storage)
    regions = [pq.read_table(storage.layout.region_buildings(r)) for r in REGIONS]
    assert sum(t.num_rows for t in regions) == len(rows["rps_2011"])
    header, _, decoded = _archive(storage.layout.pmtiles("buildings"))
    by_id: dict[int, dict] = {}
    for feature in _at_max_zoom(header, decoded, "risk"):
        assert by_id.setdefault(feature["id"], feature["properties"]) == feature["properties"]
    expected = Counter(
        tuple(float(v) for v in values)
        for table in regions
        for values in zip(
            *(table.column(n).to_numpy() for n in BUILDING_KEYS.values()), strict=True
        )
    )
    found = Counter(tuple(p[k] for k in BUILDING_KEYS) for p in by_id.values())
    assert len(by_id) == len(rows["rps_2011"]) and found == expected
    assert all(set(p) == set(BUILDING_KEYS) for p in by_id.values())
    assert any(v != round(v, 3) for p in by_id.values() for v in p.values())  # unrounded


def _lonlat(z: int, x: int, y: int, px: float, py: float, extent: int = 4096) -> tuple:
    """A tile's pixel (y down) in degrees (Web Mercator)."""
    n = 2**z
    lon = (x + px / extent) / n * 360 - 180
    lat = math.degrees(math.atan(math.sinh(math.pi * (1 - 2 * (y + py / extent) / n))))
    return lon, lat


def test_centroids_are_the_rows_with_both_rps_positive_rounded_to_3_decimals(tmp_path):
    """Crafted rows: a zero or NaN in either year leaves a building out; values are cast to
    double and rounded to 3 decimals (0.0004 > 0 stays, as 0.0); the point is the polygon's
    centroid (an L-shaped polygon: its centroid is no vertex and not its box's centre)."""
    storage = OcrStorage(root=str(tmp_path))
    rps = [(0.1234567, 2.0), (0.0, 1.0), (0.0004, 0.5), (1.0, np.nan), (5.5, 0.0), (99.99951, 3.25)]
    ell = shapely.Polygon([(0, 0), (3, 0), (3, 1), (1, 1), (1, 3), (0, 3)])
    shapes = [
        shapely.affinity.translate(
            shapely.affinity.scale(ell, 1.0, 1.0, origin=(0, 0)), -120.5 + 4 * i, 38.0
        )
        for i in range(len(rps))
    ]
    columns = {name: np.zeros(len(rps), np.float32) for name in BUILDING_KEYS.values()}
    columns["rps_2011"] = np.array([a for a, _ in rps], np.float32)
    columns["rps_2047"] = np.array([b for _, b in rps], np.float32)
    gdf = gpd.GeoDataFrame(columns, geometry=shapes, crs="EPSG:4326")
    storage.vector.write_geoparquet(gdf, storage.layout.consolidated_buildings)
    result = build_tileset(storage, TILESET_BY_ARCHIVE["building_centroids"], batch_rows=4)
    assert result["features"] == {"risk": 3}

    header, metadata, decoded = _archive(storage.layout.pmtiles("building_centroids"), y_down=True)
    assert metadata["name"] == "centroid" and metadata["key_map"] == {"risk": CENTROID_KEYS}
    z = header["max_zoom"]
    found = {}
    for (tz, x, y), tile in decoded.items():
        for feature in tile.get("risk", {}).get("features", []) if tz == z else []:
            assert feature["geometry"]["type"] == "Point"
            found[(feature["properties"]["0"], feature["properties"]["1"])] = _lonlat(
                z, x, y, *feature["geometry"]["coordinates"]
            )
    kept = [0, 2, 5]
    expected = {
        (round(float(np.float32(rps[i][0])), 3), round(float(np.float32(rps[i][1])), 3)): i
        for i in kept
    }
    assert set(found) == set(expected) == {(0.123, 2.0), (0.0, 0.5), (100.0, 3.25)}
    pixel = 360 / 2**z / 4096  # degrees of longitude per tile pixel at the maximum zoom
    for values, i in expected.items():
        centre = shapes[i].centroid
        assert (
            abs(found[values][0] - centre.x) <= pixel and abs(found[values][1] - centre.y) <= pixel
        )
        assert abs(centre.x - shapes[i].envelope.centroid.x) > 2 * pixel  # not the box centre


def test_region_features_carry_their_statistics_under_numeric_keys(tiles):
    """Every unit of every level is a feature keyed by GEOID ("7") with its row's values;
    lists (histograms, bounding box) are JSON text in the tile, as tippecanoe stores arrays."""
    storage = tiles["storage"]
    header, _, decoded = _archive(storage.layout.pmtiles("regions"))
    for level, keys in LEVEL_KEYS.items():
        table = pq.read_table(storage.layout.region_summary_stats(level))
        stats = {row["GEOID"]: row for row in table.to_pylist()}
        features = {
            f["properties"]["7"]: f["properties"] for f in _at_max_zoom(header, decoded, level)
        }
        assert set(features) == set(stats), level
        for geoid, props in features.items():
            row = stats[geoid]
            assert set(props) == set(keys), (level, props)
            for key, column in keys.items():
                if column == "bbox":
                    bounds = shapely.from_wkb(row["geometry"]).bounds
                    assert json.loads(props[key]) == list(bounds), (level, geoid)
                elif column.endswith("_hist"):
                    assert json.loads(props[key]) == row[column] and len(row[column]) == 11
                else:
                    assert props[key] == row[column], (level, geoid, column)


def test_metadata_is_added_without_touching_a_tile_and_bad_archives_leave_the_target(tmp_path):
    """put_pmtiles rewrites the header and metadata only: every tile reads back the same; an
    archive it cannot lay out is refused by name and the previous target stays."""
    storage = OcrStorage(root=str(tmp_path))
    square = shapely.box(-120.5, 38.0, -120.4, 38.1)
    gdf = gpd.GeoDataFrame(
        {name: np.full(3, 0.5, np.float32) for name in BUILDING_KEYS.values()},
        geometry=[shapely.affinity.translate(square, i, 0) for i in range(3)],
        crs="EPSG:4326",
    )
    storage.vector.write_geoparquet(gdf, storage.layout.consolidated_buildings)
    build_tileset(storage, TILESET_BY_ARCHIVE["buildings"])
    target = storage.layout.pmtiles("buildings")
    with open(target, "rb") as f:
        reader = Reader(MmapSource(f))
        before = dict(all_tiles(reader.get_bytes))
    moved = str(tmp_path / "again.pmtiles")
    storage.vector.put_pmtiles(target, moved, {"notice": "x" * 5000, "key_map": {"risk": {}}})
    with open(moved, "rb") as f:
        reader = Reader(MmapSource(f))
        assert dict(all_tiles(reader.get_bytes)) == before
        metadata = reader.metadata()
    assert metadata["notice"] == "x" * 5000 and metadata["key_map"] == {"risk": {}}
    assert metadata["name"] == "building" and metadata["metadata"]["license_name"] == "ODBL"

    kept = Path(moved).read_bytes()
    shuffled = bytearray(Path(target).read_bytes())
    shuffled[8:16] = (200).to_bytes(8, "little")  # the root directory no longer after the header
    bad = tmp_path / "bad.pmtiles"
    bad.write_bytes(bytes(shuffled))
    with pytest.raises(ValueError, match=r"bad\.pmtiles: expected a PMTiles v3 archive laid out"):
        storage.vector.put_pmtiles(str(bad), moved, {})
    assert Path(moved).read_bytes() == kept


def test_layer_lines_are_the_same_bytes_on_one_worker_and_on_several(tiles, tmp_path):
    """The feature lines are made a row group per worker process, written in order: from a
    copy of every tiled file cut into small row groups, three processes give the very bytes
    one in-process pass gives on the files as published, for every layer of every
    tileset."""
    import shutil

    import psutil

    from ocr_assets.tiles import write_layer
    from ocr_science.parallel import thread_limit

    storage = tiles["storage"]
    copy = tmp_path / "small-row-groups"
    shutil.copytree(tiles["root"], copy, symlinks=True)
    cut = OcrStorage(**{**storage.spec(), "root": str(copy)})
    tiled = [cut.layout.consolidated_buildings]
    tiled += [cut.layout.region_summary_stats(level) for level in TILESETS[0].layer_names]
    for path in tiled:
        table = pq.read_table(path)
        pq.write_table(table, path, row_group_size=max(1, table.num_rows // 5))
    for path in (cut.layout.consolidated_buildings, cut.layout.region_summary_stats("blocks")):
        assert pq.ParquetFile(path).metadata.num_row_groups >= 3, path
    children = set()
    for spec in TILESETS:
        expected = {}
        with thread_limit(1):
            for name, source in spec.layers(storage, spec).items():
                path = tmp_path / f"{spec.archive}-{name}-1.ndjson"
                expected[name] = (write_layer(source, path), path.read_bytes())
        with thread_limit(3):
            for name, source in spec.layers(cut, spec).items():
                stream = source()
                pieces = [next(stream)]  # the workers are running now
                children |= {c.pid for c in psutil.Process().children()}
                pieces += list(stream)
                count, text = sum(n for n, _ in pieces), b"".join(t for _, t in pieces)
                assert expected[name][0] > 0, (spec.archive, name)
                assert (count, text) == expected[name], (spec.archive, name)
    assert children  # worker processes made the lines
