"""GeoParquet 1.1 written batch by batch (WKB geometry, covering ``bbox``), for outputs too
large to hold as one GeoDataFrame: the ``geo`` metadata (bounds, geometry types) is
accumulated over the batches and added to the footer when the file is closed."""

from __future__ import annotations

import base64
import json
from typing import Any, BinaryIO

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import shapely

GEOMETRY = "geometry"
# every Parquet file the pipeline writes: zstd, and a CRC of each page (standard Parquet,
# ignored by readers that do not ask), so flipped bytes in a page are found when it is read
# (``iter_batches``) instead of decoding to other values
PARQUET_WRITE_OPTIONS: dict[str, Any] = {"compression": "zstd", "write_page_checksum": True}
BBOX_FIELDS = ("xmin", "ymin", "xmax", "ymax")
BBOX_TYPE = pa.struct([(name, pa.float64()) for name in BBOX_FIELDS])
# shapely type ids → GeoParquet geometry type names
GEOMETRY_TYPES = {
    0: "Point",
    1: "LineString",
    3: "Polygon",
    4: "MultiPoint",
    5: "MultiLineString",
    6: "MultiPolygon",
    7: "GeometryCollection",
}


def geoparquet_crs(schema: pa.Schema) -> Any:
    """The PROJJSON (or other) CRS of a GeoParquet schema's primary column, as stored."""
    geo = json.loads(schema.metadata[b"geo"])
    return geo["columns"][geo["primary_column"]].get("crs", "OGC:CRS84")


class GeoParquetWriter:
    """Record batches with a WKB ``geometry`` column → one GeoParquet 1.1 file.

    ``schema`` is the output schema without the ``bbox`` column (added last, as GeoPandas
    writes it, unless ``covering`` is False); batches are cast to it, so column types are the
    schema's, not the source's.
    """

    def __init__(self, sink: BinaryIO, schema: pa.Schema, crs: Any, covering: bool = True) -> None:
        field = schema.field(GEOMETRY).with_metadata(
            {
                b"ARROW:extension:name": b"geoarrow.wkb",
                b"ARROW:extension:metadata": json.dumps({"crs": crs}).encode(),
            }
        )
        base = schema.set(schema.get_field_index(GEOMETRY), field).remove_metadata()
        self.schema = base.append(pa.field("bbox", BBOX_TYPE)) if covering else base
        self.covering = covering
        self.crs = crs
        self.rows = 0
        self.types: set[str] = set()
        self.bounds = np.array([np.inf, np.inf, -np.inf, -np.inf])
        # the Arrow schema (with the ``geo`` metadata readers look for) is only known at the
        # end, so it is stored then, by hand, instead of by the writer at the start
        self._writer = pq.ParquetWriter(
            sink, self.schema, store_schema=False, **PARQUET_WRITE_OPTIONS
        )

    def write(self, batch: pa.RecordBatch) -> None:
        geometry = shapely.from_wkb(batch.column(GEOMETRY).to_numpy(zero_copy_only=False))
        bounds = shapely.bounds(geometry)
        columns = [batch.column(f.name).cast(f.type) for f in self.schema if f.name != "bbox"]
        if self.covering:
            columns.append(
                pa.StructArray.from_arrays(
                    [pa.array(bounds[:, i]) for i in range(4)], names=list(BBOX_FIELDS)
                )
            )
        self._writer.write_batch(pa.RecordBatch.from_arrays(columns, schema=self.schema))
        if len(bounds):
            self.bounds[:2] = np.minimum(self.bounds[:2], np.nanmin(bounds[:, :2], axis=0))
            self.bounds[2:] = np.maximum(self.bounds[2:], np.nanmax(bounds[:, 2:], axis=0))
        self.types |= {GEOMETRY_TYPES[int(t)] for t in np.unique(shapely.get_type_id(geometry))}
        self.rows += batch.num_rows

    def close(self) -> None:
        column: dict[str, Any] = {
            "encoding": "WKB",
            "crs": self.crs,
            "geometry_types": sorted(self.types),
        }
        if self.rows:
            column["bbox"] = [float(v) for v in self.bounds]
        if self.covering:
            column["covering"] = {"bbox": {name: ["bbox", name] for name in BBOX_FIELDS}}
        geo = json.dumps(
            {"primary_column": GEOMETRY, "columns": {GEOMETRY: column}, "version": "1.1.0"}
        )
        arrow_schema = self.schema.with_metadata({"geo": geo}).serialize()
        self._writer.add_key_value_metadata(
            {"ARROW:schema": base64.b64encode(arrow_schema).decode(), "geo": geo}
        )
        self._writer.close()
