"""Files under the storage root: atomic writes (a temporary sibling, then a move or a swap),
exclusive creation, deletion and the environment wipe. Works the same on a local folder and on
S3 (through fsspec; boto3 through dagster-aws for conditional puts)."""

from __future__ import annotations

import json
import os
import posixpath
import tempfile
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from typing import IO, Any, get_args

import fsspec
from fsspec.implementations.local import LocalFileSystem

from ocr_resources.settings import DEFAULT_MODEL_VARIANT, ModelVariantName


class StorageRootError(RuntimeError):
    """The storage root is missing or not writable (checked when a deploy starts, never when
    settings are built, so configuration stays free of I/O)."""


def _normalised(path: str) -> str:
    """``path`` with "..", "." and doubled "/" resolved (after the URL scheme, if any)."""
    scheme, sep, rest = path.rpartition("://")
    return f"{scheme}{sep}{posixpath.normpath(rest or '/')}"


class FileStore:
    """File operations of :class:`OcrStorage` (a mixin: it uses the resource's fields ``root``,
    ``environment``, ``endpoint_url``, ``model_variant`` and its ``layout``; no fields of its
    own, so pydantic sees only the resource's)."""

    @property
    def is_s3(self) -> bool:
        return self.root.startswith("s3://")

    @property
    def storage_options(self) -> dict[str, Any]:
        """fsspec options for URLs under the root (credentials come from the environment)."""
        return {"endpoint_url": self.endpoint_url} if self.is_s3 and self.endpoint_url else {}

    @property
    def fs(self) -> fsspec.AbstractFileSystem:
        return fsspec.core.url_to_fs(self.root, **self.storage_options)[0]

    def fs_path(self, url: str) -> str:
        """``url`` as the filesystem names it (no URL scheme), as pyarrow's fsspec bridge and
        ``fs.find`` results expect: fsspec's public ``url_to_fs`` does the stripping."""
        return fsspec.core.url_to_fs(url, **self.storage_options)[1]

    def s3_client(self):
        """boto3 S3 client through dagster-aws, for what fsspec cannot do (conditional puts)."""
        from dagster_aws.s3 import S3Resource

        return S3Resource(endpoint_url=self.endpoint_url).get_client()

    def create_exclusive(self, path: str, data: bytes) -> bool:
        """Create ``path`` only if it does not exist (atomically); False if it does."""
        if self.is_s3:
            bucket, _, key = path.removeprefix("s3://").partition("/")
            try:
                self.s3_client().put_object(Bucket=bucket, Key=key, Body=data, IfNoneMatch="*")
            except Exception as exc:  # botocore ClientError: PreconditionFailed
                if "PreconditionFailed" in str(exc) or "412" in str(exc):
                    return False
                raise
            return True
        self.fs.makedirs(posixpath.dirname(path), exist_ok=True)
        try:
            fd = os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
        except FileExistsError:
            return False
        with os.fdopen(fd, "wb") as f:
            f.write(data)
        return True

    def open(self, path: str, mode: str = "rb") -> IO:
        """A file under the root; writing creates its folder first (objects need none)."""
        if "w" in mode:
            self.fs.makedirs(posixpath.dirname(path), exist_ok=True)
        return self.fs.open(path, mode)

    def size(self, path: str) -> int:
        return int(self.fs.size(path))

    def makedirs(self, path: str) -> None:
        self.fs.makedirs(path, exist_ok=True)

    def read_json(self, path: str) -> Any:
        with self.fs.open(path, "rb") as f:
            return json.load(f)

    def delete(self, path: str) -> None:
        if self.fs.exists(path):
            self.fs.rm(path, recursive=True)

    def wipe_environment(self) -> list[str]:
        """Delete exactly this environment's output prefixes; returns those that existed."""
        if self.environment == "production":
            raise PermissionError("wipe is refused for production: versions are kept for rollback")
        root = _normalised(self.root).rstrip("/") + "/"
        scope = "/".join([self.environment, *filter(None, [self.layout.variant_segment])])
        # the default variant's prefix holds the other variants' prefixes: they are kept
        others = (
            set()
            if self.layout.variant_segment
            else set(get_args(ModelVariantName)) - {DEFAULT_MODEL_VARIANT}
        )
        deleted = []
        for prefix in self.layout.environment_prefixes():
            # compared normalised, so "..", "." or doubled "/" in a crafted root cannot widen
            # the scope: a prefix must be exactly what it says, under the root, for this env
            exact = _normalised(prefix) == prefix and prefix.startswith(root)
            if not exact or not prefix.endswith(f"/{scope}"):
                raise PermissionError(f"refusing to wipe {prefix}: not this environment's prefix")
            if not self.fs.exists(prefix):
                continue
            children = self.fs.ls(prefix, detail=False)
            doomed = [c for c in children if posixpath.basename(c.rstrip("/")) not in others]
            if len(doomed) == len(children):
                self.fs.rm(prefix, recursive=True)
            elif doomed:
                self.fs.rm(doomed, recursive=True)
            deleted.append(prefix)
        return deleted

    # generic atomic writes ---------------------------------------------------------------
    def exists(self, path: str) -> bool:
        return self.fs.exists(path)

    @contextmanager
    def atomic_path(self, path: str) -> Iterator[str]:
        """A temporary sibling to write to; moved onto ``path`` only if the block succeeds."""
        parent, name = posixpath.split(path)
        self.fs.makedirs(parent, exist_ok=True)
        tmp = f"{parent}/.tmp-{uuid.uuid4().hex}-{name}"
        try:
            yield tmp
            if not self.fs.isdir(tmp):
                self.fs.mv(tmp, path)  # a rename, or one object copy on S3
            elif isinstance(self.fs, LocalFileSystem):
                self._replace_local_dir(tmp, path)
            else:
                self._replace_object_dir(tmp, path)
        finally:
            if self.fs.exists(tmp):
                self.fs.rm(tmp, recursive=True)

    def _replace_local_dir(self, tmp: str, path: str) -> None:
        """Swap a finished directory into place; the old one is removed only afterwards."""
        old = f"{tmp}.old"
        if self.fs.exists(path):
            self.fs.mv(path, old, recursive=True)
        self.fs.mv(tmp, path, recursive=True)
        if self.fs.exists(old):
            self.fs.rm(old, recursive=True)

    def _replace_object_dir(self, tmp: str, path: str) -> None:
        """Object stores have no directories to rename: copy each finished object into place,
        then delete the old objects the new set does not have."""
        base = self.fs_path(tmp)
        fresh = {f[len(base) :] for f in self.fs.find(tmp)}
        for rel in sorted(fresh):
            self.fs.copy(base + rel, f"{self.fs_path(path)}{rel}")
        if self.fs.exists(path):
            dest = self.fs_path(path)
            stale = [f for f in self.fs.find(path) if f[len(dest) :] not in fresh]
            if stale:
                self.fs.rm(stale)

    def write_bytes(self, path: str, data: bytes) -> None:
        with self.atomic_path(path) as tmp:
            self.fs.pipe_file(tmp, data)

    def check_root(self) -> None:
        """The root exists and can be written: a local folder gets a probe file (created and
        removed); an S3 root needs its bucket (the deploy's lock is its first write)."""
        if self.is_s3:
            bucket = self.root.removeprefix("s3://").split("/", 1)[0]
            if not self.fs.exists(bucket):
                raise StorageRootError(
                    f"storage root {self.root} does not exist: expected an existing bucket "
                    f"{bucket!r} (fix OCR_STORAGE_ROOT or create the bucket)"
                )
            return
        if not os.path.exists(self.root):
            raise StorageRootError(
                f"storage root {self.root} does not exist: expected an existing folder "
                "(create it, or fix OCR_STORAGE_ROOT)"
            )
        if not os.path.isdir(self.root):
            raise StorageRootError(f"storage root {self.root} is not a folder: expected a folder")
        try:
            tempfile.TemporaryFile(dir=self.root, prefix=".ocr-write-check-").close()
        except OSError as exc:
            raise StorageRootError(
                f"storage root {self.root} is not writable ({exc.strerror}): expected a folder "
                "this user can create files in"
            ) from exc

    def write_json(self, path: str, payload: Any) -> None:
        self.write_bytes(path, json.dumps(payload, indent=1, sort_keys=True).encode())

    def put_file(self, local_path: str, path: str) -> int:
        """Copy a finished local file (e.g. from a scratch folder) into place atomically."""
        with self.atomic_path(path) as tmp:
            self.fs.put_file(local_path, tmp)
            size = self.fs.size(tmp)
        return int(size)

    def write_text(self, path: str, text: str) -> None:
        self.write_bytes(path, text.encode())

    @contextmanager
    def atomic_open(self, path: str, mode: str = "wb") -> Iterator[IO]:
        """A file on a temporary sibling, written as a stream and moved onto ``path`` only
        when the block succeeds (closed first)."""
        with self.atomic_path(path) as tmp, self.fs.open(tmp, mode) as f:
            yield f

    @contextmanager
    def local_copy(self, path: str) -> Iterator[str]:
        """A local path to read ``path`` with tools that need one (GDAL): the file itself on
        a local root, else a streamed download into a scratch file."""
        if isinstance(self.fs, LocalFileSystem):
            yield path
            return
        with tempfile.TemporaryDirectory(prefix="ocr-copy-") as scratch:
            local = os.path.join(scratch, posixpath.basename(path))
            self.fs.get_file(path, local)
            yield local
