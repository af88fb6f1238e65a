"""Summary statistics are the same bytes on every run (issue: "outputs are deterministic so a
rerun compares byte for byte").

DuckDB aggregates with several threads, each adding the rows it happens to read; a float sum
(``avg``) then changed its last digits from run to run (6 runs on 8 M buildings gave 6 means).
These tests run the statistics several times with more threads than the machine may have, on
rows whose values span many orders of magnitude (where a float sum's order matters most), and
compare results bit for bit, and the written files byte for byte.
"""

from __future__ import annotations

import hashlib
import io
import itertools
import os
from fractions import Fraction

import duckdb
import geopandas as gpd
import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import shapely

from ocr_assets import statistics as statistics_asset
from ocr_resources.layout import CENSUS_LEVELS
from ocr_resources.storage import BATCH_ROWS, OcrStorage
from ocr_science.sampling import VALUE_RANGES
from ocr_science.statistics import STAT_VARIABLES, connect, level_statistics

THREADS = 4  # more than one, whatever the machine: the order rows are added in varies


def _buildings(geoids: np.ndarray, seed: int) -> pa.Table:
    """GEOID and the statistic variables in their documented ranges, spread over many
    magnitudes (x**6), a tenth exactly 0, in record batches of the consolidated file's
    row-group size so that DuckDB's threads share each unit's rows."""
    rng = np.random.default_rng(seed)
    n = geoids.size
    columns: dict[str, pa.Array] = {"GEOID": pa.array(geoids)}
    for v in STAT_VARIABLES:
        values = rng.random(n) ** 6 * VALUE_RANGES[v][1]
        values[rng.random(n) < 0.1] = 0.0
        columns[v] = pa.array(values.astype(np.float32))
    return pa.Table.from_batches(pa.table(columns).to_batches(max_chunksize=BATCH_ROWS))


def _block_geoids(n_blocks: int) -> list[str]:
    """15-character block GEOIDs over two states, four counties and several tracts."""
    return [
        f"{('06', '32')[b % 2]}{3 + 2 * (b // 2 % 2):03d}{100 * (1 + b // 4 % 3):06d}{1001 + b:04d}"
        for b in range(n_blocks)
    ]


def _threaded() -> duckdb.DuckDBPyConnection:
    con = connect()
    con.execute(f"SET threads = {THREADS}")
    return con


def _frame_bytes(stats: pd.DataFrame) -> bytes:
    """The statistics as Parquet bytes: equal bytes means every value is equal bit for bit
    (a mean's last digit, a zero's sign), not just within a tolerance."""
    out = io.BytesIO()
    pq.write_table(pa.Table.from_pandas(stats, preserve_index=False), out)
    return out.getvalue()


def test_threaded_runs_give_identical_statistics():
    """1 M buildings in 28 blocks, three runs with 4 threads: the nation's and the counties'
    statistics are the same bits each time (with DuckDB's avg, two runs on 300 k buildings
    already gave different means in 5 trials out of 5)."""
    rng = np.random.default_rng(7)
    geoids = np.array(_block_geoids(28))[rng.integers(0, 28, 1_000_000)]
    table = _buildings(geoids, seed=8)
    for level in ("nation", "counties"):
        runs = {_frame_bytes(level_statistics(_threaded(), table, level)) for _ in range(3)}
        assert len(runs) == 1, f"{level}: {len(runs)} different results in 3 runs"


def test_statistics_do_not_depend_on_row_order():
    """The same buildings in three orders give the same bits on one thread, so no schedule of
    threads can change them either (a float sum depends on the order it adds in)."""
    rng = np.random.default_rng(11)
    geoids = np.array(_block_geoids(6))[rng.integers(0, 6, 200_000)]
    table = _buildings(geoids, seed=12)
    orders = [np.arange(table.num_rows), np.arange(table.num_rows)[::-1]]
    orders.append(rng.permutation(table.num_rows))
    for level in ("states", "blocks"):
        results = set()
        for order in orders:
            con = connect()
            con.execute("SET threads = 1")
            results.add(_frame_bytes(level_statistics(con, table.take(order), level)))
        assert len(results) == 1, level


def test_a_median_of_zeros_is_zero_whatever_their_order():
    """-0.0 and 0.0 compare equal, so which one a median of zeros returned depended on the
    order of the rows (DuckDB gave -0.0 for some orders of these five and 0.0 for others):
    every order now gives 0.0, the same bits."""
    medians = set()
    for negative in itertools.combinations(range(5), 3):
        values = np.zeros(5, np.float32)
        values[list(negative)] = -0.0
        table = pa.table(
            {"GEOID": ["530010001001001"] * 5} | {v: pa.array(values) for v in STAT_VARIABLES}
        )
        con = connect()
        con.execute("SET threads = 1")
        stats = level_statistics(con, table, "states")
        medians |= {np.float64(stats[f"{v}_median"][0]).tobytes() for v in STAT_VARIABLES}
    assert medians == {np.float64(0.0).tobytes()}


def test_means_are_exact():
    """A mean is the exact sum of the float32 values over the count: 2**16 values of 2**-56
    next to one of 100 add 2**-40 to the sum, which a float sum starting at 100 rounds away
    one value at a time (a double holds 100 to 2**-46)."""
    values = np.array([100.0] + [2.0**-56] * 2**16, np.float32)
    table = pa.table(
        {"GEOID": ["060030001001001"] * values.size} | {v: pa.array(values) for v in STAT_VARIABLES}
    )
    con = connect()
    con.execute("SET threads = 1")  # a float sum would add the values in the order above
    nation = level_statistics(con, table, "nation")
    exact = (Fraction(100) + 2**16 * Fraction(2) ** -56) / values.size
    assert all(nation[f"{v}_mean"][0] == float(exact) for v in STAT_VARIABLES)
    assert float(exact) != 100 / values.size  # what the float sum gave


@pytest.mark.parametrize(
    ("value", "shown"), [(np.nan, "nan"), (np.inf, "inf"), (-200.0, "-200.0"), (1e30, "1e+30")]
)
def test_a_value_that_cannot_be_summed_exactly_is_refused_by_name(value, shown):
    """A value that is not finite or too large to sum exactly stops the statistics with an
    error naming the variable, the documented range and the value (a float mean would have
    been silently NaN, inf or meaningless)."""
    table = pa.table(
        {"GEOID": ["060030001001001"] * 3}
        | {v: pa.array(np.float32([0.5, 0.25, 0.0])) for v in STAT_VARIABLES}
    )
    table = table.set_column(
        table.schema.get_field_index("bp_2047"),
        "bp_2047",
        pa.array(np.float32([0.5, value, 0.0])),
    )
    with pytest.raises(duckdb.InvalidInputException) as raised:
        level_statistics(connect(), table, "counties")
    assert str(raised.value).endswith(
        "statistics need every bp_2047 finite and of magnitude below 128 "
        f"(documented range [0, 1]), got {shown}"
    )


def _digests(storage: OcrStorage) -> dict[str, str]:
    return {
        level: hashlib.sha256(
            storage.files.fs.cat_file(storage.layout.region_summary_stats(level))
        ).hexdigest()
        for level in CENSUS_LEVELS
    }


def test_written_statistics_are_byte_identical_across_runs(env_root, monkeypatch):
    """The published files: 400 k buildings over the sample's census blocks, written twice
    with 4 threads, give the same bytes for every level; then a consolidated file with a NaN
    is refused by name and leaves the files of the good run as they were."""
    storage = OcrStorage(root=env_root, environment="local")
    blocks = pq.read_table(storage.layout.census("blocks"), columns=["GEOID"])["GEOID"]
    rng = np.random.default_rng(3)
    geoids = np.array(blocks.to_pylist())[rng.integers(0, len(blocks), 400_000)]
    path = storage.layout.consolidated_buildings
    os.makedirs(os.path.dirname(path), exist_ok=True)
    table = _buildings(geoids, seed=4)
    pq.write_table(table, path, row_group_size=BATCH_ROWS)
    monkeypatch.setattr(statistics_asset, "connect", _threaded)

    first = statistics_asset.write_summary_statistics(storage)
    digests = _digests(storage)
    assert statistics_asset.write_summary_statistics(storage) == first
    assert _digests(storage) == digests
    assert first["nation"] == 1 and first["blocks"] == len(set(geoids))

    bp = table.schema.get_field_index("bp_2011")
    nan = np.asarray(table["bp_2011"]).copy()
    nan[-1] = np.nan
    pq.write_table(table.set_column(bp, "bp_2011", pa.array(nan)), path)
    with pytest.raises(duckdb.InvalidInputException, match="every bp_2011 finite"):
        statistics_asset.write_summary_statistics(storage)
    assert _digests(storage) == digests


def _grid_census(storage: OcrStorage, n_blocks: int) -> np.ndarray:
    """Five census levels: ``n_blocks`` square blocks in tracts of 10 000 in one county of
    one state; returns the block GEOIDs."""
    tracts = np.arange(n_blocks) // 10_000
    block = np.char.add(
        np.char.add("06001", np.char.zfill((tracts + 1).astype(str), 6)),
        np.char.zfill((np.arange(n_blocks) % 10_000).astype(str), 4),
    )
    x, y = np.arange(n_blocks) % 500 * 1e-3, np.arange(n_blocks) // 500 * 1e-3
    whole = shapely.box(0, 0, 0.5, y.max() + 1e-3)
    units = {
        "nation": ({"GEOID": ["US"]}, [whole]),
        "states": ({"GEOID": ["06"], "STUSPS": ["CA"]}, [whole]),
        "counties": ({"GEOID": ["06001"]}, [whole]),
        "tracts": ({"GEOID": sorted({g[:11] for g in block})}, [whole] * (tracts[-1] + 1)),
        "blocks": ({"GEOID": block}, shapely.box(x, y, x + 1e-3, y + 1e-3)),
    }
    for level, (columns, geometry) in units.items():
        names = {"NAME": [f"{level} {i}" for i in range(len(geometry))]}
        frame = gpd.GeoDataFrame(columns | names, geometry=geometry, crs="EPSG:4326")
        storage.vector.write_geoparquet(frame, storage.layout.census(level))
    return block


def test_row_groups_do_not_depend_on_the_thread_count(tmp_path, monkeypatch):
    """130 000 blocks (more than one of DuckDB's 122 880-row sort partitions), written on one
    thread and on four: the same bytes. DuckDB hands the sorted result over in batches of
    65 536 rows on one thread but cut at its partitions on more (65 536, 57 344, ...), and
    each batch was a row group of the file."""
    storage = OcrStorage(root=str(tmp_path), environment="local")
    geoids = _grid_census(storage, 130_000)
    path = storage.layout.consolidated_buildings
    os.makedirs(os.path.dirname(path), exist_ok=True)
    pq.write_table(_buildings(geoids, seed=5), path, row_group_size=BATCH_ROWS)
    digests = []
    for threads in (1, 4):

        def connect_with_threads(threads: int = threads) -> duckdb.DuckDBPyConnection:
            con = connect()
            con.execute(f"SET threads = {threads}")
            return con

        monkeypatch.setattr(statistics_asset, "connect", connect_with_threads)
        assert statistics_asset.write_summary_statistics(storage)["blocks"] == geoids.size
        digests.append(_digests(storage))
    assert digests[0] == digests[1]
    groups = pq.ParquetFile(storage.layout.region_summary_stats("blocks")).metadata
    assert [groups.row_group(i).num_rows for i in range(groups.num_row_groups)] == [
        *[BATCH_ROWS] * (geoids.size // BATCH_ROWS),
        geoids.size % BATCH_ROWS,
    ]
