"""What an output held when it was written, and whether it still does: a step records a
manifest of each output it wrote; a later deploy compares storage with it and rebuilds what
does not match (issue 29: "up to date" means the recorded content is there, not a path).

The comparison is cheap at any size: one listing per output folder, a size and (on S3) an
ETag per file, from the listing, and the footer of a single Parquet file or the header of a
PMTiles archive (byte ranges, never the data). Parquet pages carry checksums besides
(``PARQUET_WRITE_OPTIONS``), verified whenever a step reads them.
"""

from __future__ import annotations

import hashlib
from typing import Any

from ocr_resources.storage.files import FileStore
from ocr_resources.storage.vector import VectorStore

# the sections a PMTiles v3 header points at: each must lie inside the archive
PMTILES_SECTIONS = ("root", "metadata", "leaf_directory", "tile_data")


def _listing_digest(files: dict[str, tuple[int, str]]) -> str:
    """One digest of a folder's file names, sizes and content tags (a folder of thousands of
    files is recorded in a few bytes, and any file added, lost, resized or, where the store
    tags content, rewritten changes it)."""
    lines = "".join(f"{name}\t{size}\t{tag}\n" for name, (size, tag) in sorted(files.items()))
    return hashlib.sha256(lines.encode()).hexdigest()


def _content_tag(info: dict[str, Any]) -> str:
    """What the store says of a file's content for free, in its listing: S3's ETag (an MD5
    of the bytes, or of their parts); a local file has none (its pages' checksums are checked
    when it is read)."""
    return str(info.get("ETag", "")).strip('"')


class OutputManifests:
    """What each output held when written, and how storage differs from it now."""

    def __init__(self, files: FileStore, vector: VectorStore) -> None:
        self._files, self._vector = files, vector

    def _folder_files(self, path: str) -> dict[str, tuple[int, str]]:
        """Every file under folder ``path``, by its name relative to it, with its size and
        content tag."""
        fs = self._files.fs_for(path)
        fs.invalidate_cache(path)  # a listing cached before a write (s3fs) would be stale
        base = self._files.fs_path(path).rstrip("/") + "/"
        return {
            name[len(base) :]: (int(info["size"]), _content_tag(info))
            for name, info in fs.find(path, detail=True).items()
            if info["type"] == "file"
        }

    def output_manifest(self, path: str) -> dict[str, Any]:
        """What output ``path`` (a file or a folder) holds now: a folder's file count, bytes
        and listing digest; a file's bytes and content tag, and a Parquet file's rows."""
        fs = self._files.fs_for(path)
        fs.invalidate_cache(path)
        if fs.isdir(path):
            files = self._folder_files(path)
            return {
                "files": len(files),
                "bytes": sum(size for size, _ in files.values()),
                "listing_sha256": _listing_digest(files),
            }
        info = fs.info(path)
        manifest: dict[str, Any] = {"bytes": int(info["size"]), "tag": _content_tag(info)}
        if path.endswith(".parquet"):
            manifest["rows"] = self._vector.parquet_rows(path)
        return manifest

    def output_problems(
        self, path: str, recorded: dict[str, Any], verify: bool = False
    ) -> list[str]:
        """How output ``path`` differs from the manifest its materialization recorded (empty:
        it is as written); with ``verify``, every page of its Parquet files is read and its
        checksum verified too (the data is read: bytes changed in place, same size, are found
        on a local root as well)."""
        found = self._manifest_problems(path, recorded)
        if verify and not found:
            found = self._page_problems(path)
        return found

    def _page_problems(self, path: str) -> list[str]:
        """The Parquet files of output ``path`` whose pages do not read or verify."""
        fs = self._files.fs_for(path)
        files = (
            [f"{path.rstrip('/')}/{name}" for name in self._folder_files(path)]
            if fs.isdir(path)
            else [path]
        )
        found = []
        for file in (f for f in files if f.endswith(".parquet")):
            try:
                for _ in self._vector.iter_batches(file):
                    pass
            except (OSError, ValueError) as exc:  # a checksum, a decoder (ArrowInvalid)
                found.append(f"{file}: a page does not verify ({exc})")
        return found

    def _manifest_problems(self, path: str, recorded: dict[str, Any]) -> list[str]:
        fs = self._files.fs_for(path)
        fs.invalidate_cache(path)
        if not fs.exists(path):
            return [f"{path} is missing"]
        if "files" in recorded:
            if not fs.isdir(path):
                return [f"{path} is a file, its materialization wrote a folder"]
            files = self._folder_files(path)
            if _listing_digest(files) == recorded["listing_sha256"]:
                return []
            size = sum(size for size, _ in files.values())
            same_count = len(files) == recorded["files"]
            return [
                f"{path} holds {len(files)} files of {size} bytes, its materialization wrote "
                f"{recorded['files']} of {recorded['bytes']}"
                + (" (a file's name, size or content differs)" if same_count else "")
            ]
        info = fs.info(path)
        size = int(info["size"])
        if size != recorded["bytes"]:
            return [f"{path} has {size} bytes, its materialization wrote {recorded['bytes']}"]
        if _content_tag(info) != recorded.get("tag", _content_tag(info)):
            return [f"{path} has other content than its materialization wrote (its ETag)"]
        return self._format_problems(path, size, recorded)

    def _format_problems(self, path: str, size: int, recorded: dict[str, Any]) -> list[str]:
        """A Parquet file's footer (readable, the rows recorded) or a PMTiles archive's header
        (every section inside the file): the bytes a reader opens first."""
        try:
            if path.endswith(".parquet"):
                rows = self._vector.parquet_rows(path)
                if rows != recorded.get("rows", rows):
                    return [f"{path} has {rows} rows, its materialization wrote {recorded['rows']}"]
            elif path.endswith(".pmtiles"):
                with self._vector.pmtiles_reader(path) as reader:
                    header = reader.header()
                ends = {s: header[f"{s}_offset"] + header[f"{s}_length"] for s in PMTILES_SECTIONS}
                outside = [s for s, end in ends.items() if end > size]
                if outside:
                    return [f"{path}: its header's {', '.join(outside)} end past its {size} bytes"]
        except Exception as exc:  # whatever a reader raises on bytes that are not the format
            return [f"{path} is unreadable ({type(exc).__name__}: {exc})"]
        return []
