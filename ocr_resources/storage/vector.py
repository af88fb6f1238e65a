"""Vector outputs and streamed reads: GeoParquet written atomically, Parquet read a row group at
a time, so memory is set by the batch size and never by the number of rows."""

from __future__ import annotations

import json
import posixpath
import re
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import geopandas as gpd
import pyarrow as pa
import pyarrow.dataset as ds
import pyarrow.parquet as pq
from pmtiles.reader import Reader

from ocr_assets.science.regions import sort_region_ids
from ocr_resources.storage.files import FileStore
from ocr_resources.storage.geoparquet import GeoParquetWriter

REGION_FILE = re.compile(r"^y\d+_x\d+\.parquet$")
# Rows per record batch where a table is streamed (buildings, census units): memory is set by
# this, never by the number of rows.
BATCH_ROWS = 65_536
GEOPARQUET_OPTIONS: dict[str, Any] = {
    "compression": "zstd",
    "write_covering_bbox": True,
    "schema_version": "1.1.0",
    "index": False,
    # row groups of a batch: a reader decodes one row group at a time, so a streamed read of
    # a region file holds a batch, not the whole region
    "row_group_size": BATCH_ROWS,
}


class VectorStore(FileStore):
    """GeoParquet and Parquet operations of :class:`OcrStorage`."""

    def write_geoparquet(self, gdf: gpd.GeoDataFrame, path: str) -> int:
        """GeoParquet 1.1 (zstd, covering bbox); returns the byte size written."""
        with self.atomic_path(path) as tmp:
            gdf.to_parquet(tmp, filesystem=self.fs, **GEOPARQUET_OPTIONS)
            size = self.fs.size(tmp)
        return int(size)

    def list_region_buildings(self) -> list[str]:
        """Region ids with a buildings file in this environment (others' files are ignored)."""
        folder = self.layout.region_buildings_dir
        if not self.exists(folder):
            return []
        names = [posixpath.basename(p) for p in self.fs.ls(folder, detail=False)]
        ids = [n.removesuffix(".parquet") for n in names if REGION_FILE.match(n)]
        return sort_region_ids(ids)

    def parquet_dataset(self, paths: str | list[str]) -> ds.Dataset:
        """A pyarrow dataset over files or a folder (paths without their URL scheme, as
        pyarrow's fsspec bridge expects)."""
        paths = self.fs_path(paths) if isinstance(paths, str) else [self.fs_path(p) for p in paths]
        return ds.dataset(paths, format="parquet", filesystem=self.fs)

    @contextmanager
    def geoparquet_writer(self, path: str, schema: pa.Schema, crs: Any) -> Iterator[Any]:
        """A :class:`GeoParquetWriter` on ``path``: batches in, one atomic GeoParquet out."""
        with self.atomic_open(path) as f:
            writer = GeoParquetWriter(f, schema, crs)
            yield writer
            writer.close()

    def iter_batches(
        self, path: str, columns: list[str] | None = None, batch_rows: int = BATCH_ROWS
    ) -> Iterator[pa.RecordBatch]:
        """A Parquet file's rows as record batches of at most ``batch_rows`` (one row group
        in memory at a time)."""
        with self.fs.open(path, "rb") as f:
            source = pq.ParquetFile(f)
            # a reader per row group: one reader over all of them keeps memory for each group
            # it has read (bench/scale.py measures it)
            for group in range(source.num_row_groups):
                yield from source.iter_batches(
                    batch_size=batch_rows, row_groups=[group], columns=columns
                )

    def parquet_stream(
        self, path: str, columns: list[str], batch_rows: int = BATCH_ROWS
    ) -> pa.RecordBatchReader:
        """``columns`` of a Parquet file as a one-pass stream for DuckDB, a row group at a time
        (DuckDB's scan of a pyarrow dataset reads millions of rows ahead)."""
        stored = self.parquet_schema(path)
        schema = pa.schema([stored.field(c).remove_metadata() for c in columns])
        return pa.RecordBatchReader.from_batches(
            schema,
            (b.select(columns) for b in self.iter_batches(path, columns, batch_rows)),
        )

    def pmtiles_summary(self, path: str) -> dict[str, Any]:
        """A PMTiles archive's zoom range, layer names and size, read by byte ranges (only its
        header and metadata, however large the archive)."""
        with self.fs.open(path, "rb") as f:

            def get_bytes(offset: int, length: int) -> bytes:
                f.seek(offset)
                return f.read(length)

            reader = Reader(get_bytes)
            header = reader.header()
            metadata = reader.metadata()
        if isinstance(metadata, str | bytes):
            metadata = json.loads(metadata)
        return {
            "min_zoom": header["min_zoom"],
            "max_zoom": header["max_zoom"],
            "layers": [layer["id"] for layer in metadata.get("vector_layers", [])],
            "bytes": self.size(path),
        }

    def read_geoparquet(self, path: str) -> gpd.GeoDataFrame:
        """A whole (small) GeoParquet output, e.g. one level's statistics for a preview."""
        return gpd.read_parquet(path, filesystem=self.fs)

    def parquet_schema(self, path: str) -> pa.Schema:
        with self.fs.open(path, "rb") as f:
            return pq.read_schema(f)

    def parquet_rows(self, path: str) -> int:
        with self.fs.open(path, "rb") as f:
            return pq.ParquetFile(f).metadata.num_rows
