"""What an output held when it was written, and whether it still does: a step records a
manifest of each output it wrote; a later deploy compares storage with it and rebuilds what
does not match (issue 29: "up to date" means the recorded content is there, not a path).

The comparison is cheap at any size: one listing per output folder, a size per file, and the
footer of a single Parquet file or the header of a PMTiles archive (byte ranges, never the
data). Parquet pages carry checksums besides (``PARQUET_WRITE_OPTIONS``), verified whenever
a step reads them.
"""

from __future__ import annotations

import hashlib
from typing import Any

from pmtiles.reader import Reader

from ocr_resources.storage.vector import VectorStore

# the sections a PMTiles v3 header points at: each must lie inside the archive
PMTILES_SECTIONS = ("root", "metadata", "leaf_directory", "tile_data")


def _listing_digest(files: dict[str, int]) -> str:
    """One digest of a folder's file names and sizes (a folder of thousands of files is
    recorded in a few bytes, and any file added, lost or resized changes it)."""
    lines = "".join(f"{name}\t{size}\n" for name, size in sorted(files.items()))
    return hashlib.sha256(lines.encode()).hexdigest()


class OutputManifests(VectorStore):
    """The manifests of :class:`OcrStorage`'s outputs."""

    def _folder_files(self, path: str) -> dict[str, int]:
        """Every file under folder ``path``, by its name relative to it, with its size."""
        fs = self.fs_for(path)
        fs.invalidate_cache(path)  # a listing cached before a write (s3fs) would be stale
        base = self.fs_path(path).rstrip("/") + "/"
        return {
            name[len(base) :]: int(info["size"])
            for name, info in fs.find(path, detail=True).items()
            if info["type"] == "file"
        }

    def output_manifest(self, path: str) -> dict[str, Any]:
        """What output ``path`` (a file or a folder) holds now: a folder's file count, bytes
        and listing digest; a file's bytes, and a Parquet file's rows."""
        fs = self.fs_for(path)
        fs.invalidate_cache(path)
        if fs.isdir(path):
            files = self._folder_files(path)
            return {
                "files": len(files),
                "bytes": sum(files.values()),
                "listing_sha256": _listing_digest(files),
            }
        manifest: dict[str, Any] = {"bytes": self.size(path)}
        if path.endswith(".parquet"):
            manifest["rows"] = self.parquet_rows(path)
        return manifest

    def output_problems(self, path: str, recorded: dict[str, Any]) -> list[str]:
        """How output ``path`` differs from the manifest its materialization recorded (empty:
        it is as written)."""
        fs = self.fs_for(path)
        fs.invalidate_cache(path)
        if not fs.exists(path):
            return [f"{path} is missing"]
        if "files" in recorded:
            if not fs.isdir(path):
                return [f"{path} is a file, its materialization wrote a folder"]
            files = self._folder_files(path)
            if _listing_digest(files) == recorded["listing_sha256"]:
                return []
            return [
                f"{path} holds {len(files)} files of {sum(files.values())} bytes, its "
                f"materialization wrote {recorded['files']} of {recorded['bytes']}"
                + ("" if len(files) != recorded["files"] else " (files differ in size or name)")
            ]
        size = self.size(path)
        if size != recorded["bytes"]:
            return [f"{path} has {size} bytes, its materialization wrote {recorded['bytes']}"]
        return self._format_problems(path, size, recorded)

    def _format_problems(self, path: str, size: int, recorded: dict[str, Any]) -> list[str]:
        """A Parquet file's footer (readable, the rows recorded) or a PMTiles archive's header
        (every section inside the file): the bytes a reader opens first."""
        try:
            if path.endswith(".parquet"):
                rows = self.parquet_rows(path)
                if rows != recorded.get("rows", rows):
                    return [f"{path} has {rows} rows, its materialization wrote {recorded['rows']}"]
            elif path.endswith(".pmtiles"):
                with self.fs_for(path).open(path, "rb") as f:

                    def get_bytes(offset: int, length: int) -> bytes:
                        f.seek(offset)
                        return f.read(length)

                    header = Reader(get_bytes).header()
                ends = {s: header[f"{s}_offset"] + header[f"{s}_length"] for s in PMTILES_SECTIONS}
                outside = [s for s, end in ends.items() if end > size]
                if outside:
                    return [f"{path}: its header's {', '.join(outside)} end past its {size} bytes"]
        except Exception as exc:  # whatever a reader raises on bytes that are not the format
            return [f"{path} is unreadable ({type(exc).__name__}: {exc})"]
        return []
