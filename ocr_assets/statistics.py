"""`region_risk_summary_stats` (phase 02): the consolidated buildings joined to the census
units of each level → one Parquet file of statistics per level (docs/design.md §6)."""

from collections.abc import Iterator
from contextlib import ExitStack

import dagster as dg
import duckdb
import geopandas as gpd
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from ocr_assets.buildings import buildings_geoparquet
from ocr_assets.constants import PHASE02_GROUP
from ocr_assets.inputs import census_boundaries
from ocr_assets.previews import choropleth_level, choropleth_preview, png_markdown
from ocr_assets.step import run_step, step_asset
from ocr_resources.compute import ComputeProfile, OcrCompute
from ocr_resources.layout import CENSUS_COLUMNS
from ocr_resources.storage import BATCH_ROWS, OcrStorage, even_batches
from ocr_resources.storage.geoparquet import geoparquet_crs
from ocr_science.statistics import (
    CENSUS_LEVELS,
    SCORED,
    STATISTICS_COLUMNS,
    connect,
    histograms_off,
    statistics_query,
    units_query,
)


def _census_problem(con: duckdb.DuckDBPyConnection, level: str) -> str | None:
    """Why a level's census cannot take its statistics: duplicate GEOIDs, or buildings in
    units the census does not have."""
    duplicates = con.execute(
        "SELECT GEOID FROM census_scan GROUP BY GEOID HAVING count(*) > 1 ORDER BY 1 LIMIT 3"
    ).fetchall()
    if duplicates:
        return f"{level} census GEOIDs are not unique, e.g. {[d[0] for d in duplicates]}"
    units, params = units_query(level)
    missing = con.execute(
        f"SELECT u.GEOID FROM ({units}) u ANTI JOIN census_scan c ON u.GEOID = c.GEOID ORDER BY 1",
        params,
    ).fetchall()
    if missing:
        return (
            f"{len(missing)} {level} GEOID(s) of buildings are not in the census input, "
            f"e.g. {[m[0] for m in missing[:3]]}"
        )
    return None


def statistics_schema(level: str) -> pa.Schema:
    """A level's statistics columns in the published order (docs/published.md §4.4): GEOID,
    the unit's names (counties NAME; states STUSPS, NAME; nation NAME), the count, the 7
    means, the 7 medians, the 2 histograms, the unit's polygon last. No covering bbox: the published
    files have none, and a few thousand units need no row-group filter."""
    types = {"building_count": pa.int64(), **dict.fromkeys(SCORED, pa.list_(pa.int64()))}
    return pa.schema(
        [
            *(pa.field(n, pa.large_string()) for n in CENSUS_COLUMNS[level]),
            *(pa.field(c, types.get(c, pa.float64())) for c in STATISTICS_COLUMNS),
            pa.field("geometry", pa.binary()),
        ]
    )


def _numbered_census(
    storage: OcrStorage, level: str, schema: pa.Schema, batch_rows: int
) -> pa.RecordBatchReader:
    """A census level's key columns and polygons with their row number in the file, read a
    batch at a time in file order."""
    columns = [*CENSUS_COLUMNS[level], "geometry"]

    def batches() -> Iterator[pa.RecordBatch]:
        start = 0
        for batch in storage.vector.iter_batches(storage.layout.census(level), columns, batch_rows):
            rows = pa.array(range(start, start + batch.num_rows), pa.int64())
            start += batch.num_rows
            yield batch.append_column("census_row", rows)

    stored = storage.vector.parquet_schema(storage.layout.census(level))
    numbered = pa.schema([stored.field(c).remove_metadata() for c in columns])
    return pa.RecordBatchReader.from_batches(
        numbered.append(pa.field("census_row", pa.int64())), batches()
    )


def write_summary_statistics(storage: OcrStorage, batch_rows: int = BATCH_ROWS) -> dict[str, int]:
    """One GeoParquet per census level: statistics joined by GEOID to the unit's name and
    polygon, in DuckDB, streamed to the file in batches of ``batch_rows`` units.

    Every level is checked (census input, unknown GEOIDs) before anything is computed, and
    every level is written to a temporary name first: the files are moved into place only
    when all five succeeded, so a failure leaves the previous statistics as they were.
    """
    with storage.files.local_copy(storage.layout.consolidated_buildings) as buildings:
        return _write_summary_statistics(storage, buildings, batch_rows)


def _write_summary_statistics(
    storage: OcrStorage, buildings: str, batch_rows: int
) -> dict[str, int]:
    con = connect()
    # DuckDB's own Parquet reader on a local file: its scan of a pyarrow dataset reads up
    # to 16 M rows ahead, memory that grows with the buildings (bench/scale). can_have_nan:
    # Parquet min/max leave NaN out, and DuckDB would read them as "no NaN here" and fold
    # away the statistics' check of every value (duckdb/duckdb#25521)
    con.sql(
        "SELECT * FROM read_parquet($path, can_have_nan = true)", params={"path": buildings}
    ).create_view("buildings_scan")
    censuses = {level: storage.inputs.census_dataset(level) for level in CENSUS_LEVELS}
    for level, census in censuses.items():
        con.register("census_scan", census)
        problem = _census_problem(con, level)
        con.unregister("census_scan")
        if problem:
            raise ValueError(problem)
    rows: dict[str, int] = {}
    tally = _CountTally()
    with ExitStack() as files:
        for level, census in censuses.items():
            schema = statistics_schema(level)
            names = ", ".join(f"c.{n}" for n in CENSUS_COLUMNS[level])
            sql, params = statistics_query(level)
            con.register("census_scan", _numbered_census(storage, level, schema, batch_rows))
            # in the census file's order, as the unit polygons come (tippecanoe's dropping of
            # tiny polygons at low zooms depends on the order it reads them in)
            reader = con.sql(
                f"SELECT {names}, s.* EXCLUDE (GEOID), c.geometry FROM census_scan c "
                f"JOIN ({sql}) s ON c.GEOID = s.GEOID ORDER BY c.census_row",
                params=params,
            ).to_arrow_reader(batch_rows)
            path = storage.layout.region_summary_stats(level)
            writer = files.enter_context(
                storage.vector.geoparquet_writer(
                    path, schema, geoparquet_crs(census.schema), covering=False
                )
            )
            # batches of exactly batch_rows: row groups that do not depend on how DuckDB cuts
            # the sorted result (on one thread in batch_rows, on more at its partitions)
            for batch in even_batches(reader, batch_rows):
                tally.add(level, batch)
                writer.write(batch)
            con.unregister("census_scan")
            rows[level] = writer.rows
        # the blocking check's rules on what was written, before any level replaces the last
        if problems := tally.problems(pq.ParquetFile(buildings).metadata.num_rows):
            raise StatisticsCheckError(
                f"histograms_sum_to_counts: {'; '.join(problems)}; the previous statistics are kept"
            )
    return rows


class StatisticsCheckError(ValueError):
    """Statistics that break the rules of their blocking check, found before publishing."""


class _CountTally:
    """Per level, the buildings counted and the units whose histograms do not sum to their
    count, as the statistics stream past (what ``histograms_sum_to_counts`` checks)."""

    def __init__(self) -> None:
        self.counted: dict[str, int] = {}
        self.off: dict[str, int] = {}

    def add(self, level: str, batch: pa.RecordBatch) -> None:
        counts = batch.column("building_count").to_numpy(zero_copy_only=False)
        self.counted[level] = self.counted.get(level, 0) + int(counts.sum())
        for column in SCORED:
            hist = batch.column(column)
            off = histograms_off(
                counts,
                pc.list_flatten(hist).to_numpy(zero_copy_only=False),
                pc.list_parent_indices(hist).to_numpy(zero_copy_only=False),
            )
            self.off[level] = self.off.get(level, 0) + off

    def problems(self, buildings: int) -> list[str]:
        found = [
            f"{level}: {n} histogram(s) do not sum to building_count"
            for level, n in self.off.items()
            if n
        ]
        found += [
            f"{level} counts {n} buildings, consolidated has {buildings}"
            for level, n in self.counted.items()
            if n != buildings
        ]
        return found


def read_summary_statistics(storage: OcrStorage, level: str) -> gpd.GeoDataFrame:
    """A whole level, for what is small by construction (a preview's level)."""
    return storage.vector.read_geoparquet(storage.layout.region_summary_stats(level))


def statistics_batches(
    storage: OcrStorage, level: str, batch_rows: int
) -> Iterator[pa.RecordBatch]:
    """A level's statistics (every column), a batch at a time."""
    return storage.vector.iter_batches(storage.layout.region_summary_stats(level), None, batch_rows)


@step_asset(
    "region_risk_summary_stats",
    PHASE02_GROUP,
    [buildings_geoparquet, census_boundaries],
    "Per census level (nation, states, counties, tracts, blocks): building count, "
    "mean and median of seven variables, risk-score histograms and the unit's polygon.",
    {"parquet", "duckdb"},
    (
        __name__,
        "ocr_science.statistics",
        "ocr_resources.layout",  # the census columns per level
        "ocr_resources.storage.vector",
        "ocr_resources.storage.geoparquet",
    ),
    ComputeProfile("m8g.16xlarge", "m8g.16xlarge"),
)
def region_risk_summary_stats(
    context: dg.AssetExecutionContext, storage: OcrStorage, compute: OcrCompute
):
    step = run_step(context, storage, compute, write_summary_statistics)
    level = choropleth_level(step.result)
    preview = choropleth_preview(read_summary_statistics(storage, level), level)
    paths = {lv: storage.layout.region_summary_stats(lv) for lv in CENSUS_LEVELS}
    return step.materialize(
        list(paths.values()),
        paths=paths,
        rows_per_level=step.result,
        preview=dg.MetadataValue.md(png_markdown(preview, f"{level} mean RPS")),
    )


@dg.asset_check(asset=region_risk_summary_stats, blocking=True)
def histograms_sum_to_counts(storage: OcrStorage) -> dg.AssetCheckResult:
    """Every histogram sums to building_count; each level counts every building once
    (scanned by DuckDB, never loaded whole)."""
    total = storage.vector.parquet_rows(storage.layout.consolidated_buildings)
    problems, per_level = [], {}
    con = duckdb.connect()
    for level in CENSUS_LEVELS:
        con.register(
            "stats", storage.vector.parquet_dataset(storage.layout.region_summary_stats(level))
        )
        wrong, counted = con.execute(
            "SELECT count(*) FILTER (WHERE list_sum(risk_score_2011_hist) != building_count "
            "OR list_sum(risk_score_2047_hist) != building_count), "
            "coalesce(sum(building_count), 0) FROM stats"
        ).fetchall()[0]
        con.unregister("stats")
        if wrong:
            problems.append(f"{level}: {wrong} histogram(s) do not sum to building_count")
        per_level[level] = int(counted)
        if per_level[level] != total:
            problems.append(
                f"{level} counts {per_level[level]} buildings, consolidated has {total}"
            )
    return dg.AssetCheckResult(
        passed=not problems,
        metadata={"buildings": total, "per_level": per_level, "problems": problems or ["none"]},
    )
