"""Read a PMTiles archive's header and layer list (for checks and tests)."""

from __future__ import annotations

import json

from pmtiles.reader import Reader

from ocr_resources.storage import OcrStorage


def archive_summary(storage: OcrStorage, path: str) -> dict:
    """Header and layer list, read by byte ranges (an archive of CONUS buildings is tens of
    GB; only its header and metadata are read)."""
    with storage.fs.open(path, "rb") as f:

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
        "bytes": int(storage.fs.size(path)),
    }
