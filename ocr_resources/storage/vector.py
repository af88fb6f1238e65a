"""Vector outputs and streamed reads: GeoParquet written atomically, Parquet read a row group at
a time, so memory is set by the batch size and never by the number of rows."""

from __future__ import annotations

import gzip
import io
import json
import posixpath
import re
import shutil
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from typing import Any

import geopandas as gpd
import numpy as np
import pyarrow as pa
import pyarrow.dataset as ds
import pyarrow.parquet as pq
from pmtiles.reader import Reader
from pmtiles.tile import Compression, deserialize_header, serialize_header

from ocr_resources.layout import StorageLayout
from ocr_resources.storage.files import FileStore
from ocr_resources.storage.geoparquet import BBOX_FIELDS, PARQUET_WRITE_OPTIONS, GeoParquetWriter
from ocr_science.regions import sort_region_ids

REGION_FILE = re.compile(r"^y\d+_x\d+\.parquet$")
# Rows per record batch where a table is streamed (buildings, census units): memory is set by
# this, never by the number of rows.
BATCH_ROWS = 65_536
GEOPARQUET_OPTIONS: dict[str, Any] = {
    **PARQUET_WRITE_OPTIONS,
    "write_covering_bbox": True,
    "schema_version": "1.1.0",
    "index": False,
    # row groups of a batch: a reader decodes one row group at a time, so a streamed read of
    # a region file holds a batch, not the whole region
    "row_group_size": BATCH_ROWS,
}

Extent = tuple[float, float, float, float]  # (xmin, ymin, xmax, ymax)

HEADER_BYTES = 127  # a PMTiles v3 header
COPY_BLOCK = 8 * 2**20
# the archive's own codec for its metadata; gzip without a timestamp, so the same metadata
# gives the same bytes
METADATA_CODECS: dict[Compression, tuple[Callable[[bytes], bytes], Callable[[bytes], bytes]]] = {
    Compression.NONE: (bytes, bytes),
    Compression.GZIP: (gzip.decompress, lambda data: gzip.compress(data, mtime=0)),
}


def _canonical_layout(header: dict[str, Any]) -> bool:
    """The sections in the order tippecanoe (and the spec's writers) put them, back to back."""
    return (
        header["root_offset"] == HEADER_BYTES
        and header["metadata_offset"] == header["root_offset"] + header["root_length"]
        and header["leaf_directory_offset"] == header["metadata_offset"] + header["metadata_length"]
        and header["tile_data_offset"]
        == header["leaf_directory_offset"] + header["leaf_directory_length"]
    )


def meets(boxes: np.ndarray, window: Extent) -> np.ndarray:
    """Which boxes (``(xmin, ymin, xmax, ymax)`` along the last axis) meet ``window``, edges
    included, as GeoPandas' bbox filter: the one rule for "a region reads this row group"
    and "this row is the region's"."""
    west, south, east, north = window
    return (
        (boxes[..., 0] <= east)
        & (boxes[..., 2] >= west)
        & (boxes[..., 1] <= north)
        & (boxes[..., 3] >= south)
    )


def covering_extents(metadata: pq.FileMetaData, column: str) -> list[Extent | None]:
    """Each row group's extent as its footer states it: the statistics of the covering bbox
    struct ``column`` (least ``xmin`` and ``ymin``, greatest ``xmax`` and ``ymax``); None
    where a statistic is missing (the group cannot be skipped by its extent)."""
    paths = [metadata.schema.column(i).path for i in range(metadata.num_columns)]
    index = {name: paths.index(f"{column}.{name}") for name in BBOX_FIELDS}
    extents: list[Extent | None] = []
    for g in range(metadata.num_row_groups):
        group = metadata.row_group(g)
        stats = {name: group.column(i).statistics for name, i in index.items()}
        if not all(s is not None and s.has_min_max for s in stats.values()):
            extents.append(None)
            continue
        lows = (float(stats["xmin"].min), float(stats["ymin"].min))
        extents.append((*lows, float(stats["xmax"].max), float(stats["ymax"].max)))
    return extents


class _FetchedRanges(io.RawIOBase):
    """A file of which only some byte ranges are in memory, for pyarrow to read: a read
    outside them raises ``LookupError``, which no decoder raises, so it is never taken for
    corrupt bytes."""

    def __init__(self, size: int, ranges: dict[int, bytes]) -> None:
        self._size, self._ranges, self._position = size, ranges, 0

    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return True

    def tell(self) -> int:
        return self._position

    def seek(self, offset: int, whence: int = io.SEEK_SET) -> int:
        base = {io.SEEK_SET: 0, io.SEEK_CUR: self._position, io.SEEK_END: self._size}[whence]
        self._position = base + offset
        return self._position

    def read(self, size: int | None = -1) -> bytes:
        left = self._size - self._position
        size = left if size is None or size < 0 else min(size, left)
        for start, data in self._ranges.items():
            if start <= self._position and self._position + size <= start + len(data):
                offset = self._position - start
                self._position += size
                return data[offset : offset + size]
        raise LookupError(f"bytes {self._position}–{self._position + size} were not fetched")


class VectorStore:
    """Parquet, GeoParquet and PMTiles files under the storage root: written atomically, read a
    row group (or a byte range) at a time."""

    def __init__(self, files: FileStore, layout: StorageLayout) -> None:
        self._files, self._layout = files, layout

    def write_geoparquet(self, gdf: gpd.GeoDataFrame, path: str) -> int:
        """GeoParquet 1.1 (zstd, covering bbox); returns the byte size written."""
        with self._files.atomic_path(path) as tmp:
            gdf.to_parquet(tmp, filesystem=self._files.fs_for(path), **GEOPARQUET_OPTIONS)
            size = self._files.size(tmp)
        return int(size)

    def write_parquet_table(self, table: pa.Table, path: str, row_group_rows: int) -> int:
        """A pyarrow table as one Parquet file (zstd, its schema metadata kept, e.g. GeoParquet's
        ``geo``); returns the byte size written."""
        with self._files.atomic_open(path) as f:
            pq.write_table(table, f, row_group_size=row_group_rows, **PARQUET_WRITE_OPTIONS)
        return self._files.size(path)

    def list_region_buildings(self) -> list[str]:
        """Region ids with a buildings file in this environment (others' files are ignored)."""
        folder = self._layout.region_buildings_dir
        if not self._files.exists(folder):
            return []
        names = [posixpath.basename(p) for p in self._files.fs.ls(folder, detail=False)]
        ids = [n.removesuffix(".parquet") for n in names if REGION_FILE.match(n)]
        return sort_region_ids(ids)

    def parquet_dataset(self, paths: str | list[str]) -> ds.Dataset:
        """A pyarrow dataset over files or a folder (paths without their URL scheme, as
        pyarrow's fsspec bridge expects)."""
        first = paths if isinstance(paths, str) else (paths[0] if paths else None)
        fs = self._files.fs if first is None else self._files.fs_for(first)
        files = self._files
        paths = (
            files.fs_path(paths) if isinstance(paths, str) else [files.fs_path(p) for p in paths]
        )
        return ds.dataset(paths, format="parquet", filesystem=fs)

    @contextmanager
    def geoparquet_writer(
        self, path: str, schema: pa.Schema, crs: Any, covering: bool = True
    ) -> Iterator[Any]:
        """A :class:`GeoParquetWriter` on ``path``: batches in, one atomic GeoParquet out."""
        with self._files.atomic_open(path) as f:
            writer = GeoParquetWriter(f, schema, crs, covering)
            yield writer
            writer.close()

    def iter_batches(
        self,
        path: str,
        columns: list[str] | None = None,
        batch_rows: int = BATCH_ROWS,
        row_groups: Iterable[int] | None = None,
    ) -> Iterator[pa.RecordBatch]:
        """A Parquet file's rows (of ``row_groups`` only, if given) as record batches of at
        most ``batch_rows`` (one row group in memory at a time); the page checksums of a file
        that has them are verified (a damaged page raises OSError)."""
        with self._files.fs_for(path).open(path, "rb") as f:
            source = pq.ParquetFile(f, page_checksum_verification=True)
            # a reader per row group: one reader over all of them keeps memory for each group
            # it has read (bench/scale.py measures it)
            for group in range(source.num_row_groups) if row_groups is None else row_groups:
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

    @contextmanager
    def pmtiles_reader(self, path: str) -> Iterator[Reader]:
        """A PMTiles reader of ``path`` that fetches byte ranges (never the whole archive)."""
        with self._files.fs_for(path).open(path, "rb") as f:

            def get_bytes(offset: int, length: int) -> bytes:
                f.seek(offset)
                return f.read(length)

            yield Reader(get_bytes)

    def pmtiles_summary(self, path: str) -> dict[str, Any]:
        """A PMTiles archive's zooms, layer names, tileset name and key map, read by byte
        ranges (only its header and metadata, however large the archive)."""
        with self.pmtiles_reader(path) as reader:
            header = reader.header()
            metadata = reader.metadata()
        return {
            "min_zoom": header["min_zoom"],
            "max_zoom": header["max_zoom"],
            "layers": [layer["id"] for layer in metadata.get("vector_layers", [])],
            "name": metadata.get("name"),
            "key_map": metadata.get("key_map"),
            "bytes": self._files.size(path),
        }

    def put_pmtiles(
        self,
        local_path: str,
        path: str,
        metadata: dict[str, Any],
        check: Callable[[dict[str, Any]], None] | None = None,
    ) -> int:
        """Copy a finished local PMTiles archive into place atomically with ``metadata``
        merged into its JSON metadata (tippecanoe has no option for members of one's own);
        ``check`` is given the written archive's summary (:meth:`pmtiles_summary`) before it
        replaces the previous one, and may refuse it by raising.

        Only the header and the metadata section change; the directories and tiles are
        copied as bytes, a block at a time, as the leaf and tile offsets are relative to
        their sections (PMTiles v3). Returns the byte size written."""
        with open(local_path, "rb") as src:
            header = deserialize_header(src.read(HEADER_BYTES))
            if not _canonical_layout(header):
                raise ValueError(
                    f"{local_path}: expected a PMTiles v3 archive laid out as header, root "
                    f"directory, metadata, leaf directories, tiles; got {header}"
                )
            compression = header["internal_compression"]
            if compression not in METADATA_CODECS:
                raise ValueError(
                    f"{local_path}: metadata compressed with {compression.name}, expected one "
                    f"of {[c.name for c in METADATA_CODECS]}"
                )
            decompress, compress = METADATA_CODECS[compression]
            src.seek(header["root_offset"])
            root = src.read(header["root_length"])
            old = json.loads(decompress(src.read(header["metadata_length"])))
            encoded = compress(json.dumps({**old, **metadata}).encode())
            moved = len(encoded) - header["metadata_length"]
            new_header = {
                **header,
                "metadata_length": len(encoded),
                "leaf_directory_offset": header["leaf_directory_offset"] + moved,
                "tile_data_offset": header["tile_data_offset"] + moved,
            }
            with self._files.atomic_path(path) as tmp:
                with self._files.fs.open(tmp, "wb") as out:
                    out.write(serialize_header(new_header))
                    out.write(root)
                    out.write(encoded)
                    shutil.copyfileobj(src, out, COPY_BLOCK)  # leaf directories, then tiles
                if check is not None:
                    check(self.pmtiles_summary(tmp))
        return self._files.size(path)

    def read_geoparquet(self, path: str) -> gpd.GeoDataFrame:
        """A whole (small) GeoParquet output, e.g. one level's statistics for a preview."""
        return gpd.read_parquet(path, filesystem=self._files.fs_for(path))

    def parquet_schema(self, path: str) -> pa.Schema:
        with self._files.fs_for(path).open(path, "rb") as f:
            return pq.read_schema(f)

    def undecodable_row_group(self, path: str, group: int) -> str | None:
        """Why row group ``group`` of a Parquet file does not decode, or None when it does.

        The group's bytes and the footer are fetched whole, then decoded from memory, so only
        the bytes can fail there: a read that failed on the way (network, timeout) decodes
        here and gets None, as does a fetch that fails (an I/O error says nothing about the
        data)."""
        try:
            metadata = self.parquet_metadata(path)
            size = self._files.size(path)
            columns = [metadata.row_group(group).column(i) for i in range(metadata.num_columns)]
            starts = [c.dictionary_page_offset or c.data_page_offset for c in columns]
            end = max(s + c.total_compressed_size for s, c in zip(starts, columns, strict=True))
            # pyarrow reads a file's last 64 KiB first, then the footer
            tail = min(size, max(1 << 16, metadata.serialized_size + 8))
            ranges = {
                min(starts): self._files.fs_for(path).cat_file(path, min(starts), end),
                size - tail: self._files.fs_for(path).cat_file(path, size - tail, size),
            }
        except Exception:
            return None
        try:
            for _ in pq.ParquetFile(_FetchedRanges(size, ranges)).iter_batches(row_groups=[group]):
                pass
        except LookupError:  # pyarrow wanted bytes besides the group's: cannot tell
            return None
        except Exception as exc:  # whatever the decoder raises: the bytes do not decode
            return f"{type(exc).__name__}: {exc}"
        return None

    def parquet_metadata(self, path: str) -> pq.FileMetaData:
        """A Parquet file's footer: row groups, their sizes and column statistics."""
        with self._files.fs_for(path).open(path, "rb") as f:
            return pq.ParquetFile(f).metadata

    def parquet_rows(self, path: str) -> int:
        return self.parquet_metadata(path).num_rows


def even_batches(batches: Iterator[pa.RecordBatch], batch_rows: int) -> Iterator[pa.RecordBatch]:
    """The same rows in batches of exactly ``batch_rows`` (the last one shorter): the files'
    row groups then depend on the rows alone, not on how DuckDB's threads cut its result."""
    pending: list[pa.RecordBatch] = []
    held = 0
    for batch in batches:
        while batch.num_rows:
            take = min(batch_rows - held, batch.num_rows)
            pending.append(batch.slice(0, take))
            held += take
            batch = batch.slice(take)
            if held == batch_rows:
                yield pa.concat_batches(pending)
                pending, held = [], 0
    if held:
        yield pa.concat_batches(pending)
