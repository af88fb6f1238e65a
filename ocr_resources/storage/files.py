"""Files under the storage root: atomic writes (a temporary sibling, then a move or a swap),
exclusive creation, compare-and-swap (replace or delete only the version read), deletion and
the environment wipe. Works the same on a local folder and on S3 (through fsspec; boto3 through
dagster-aws for conditional requests)."""

from __future__ import annotations

import fcntl
import hashlib
import json
import os
import posixpath
import tempfile
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager, suppress
from dataclasses import dataclass
from functools import lru_cache
from typing import IO, Any, get_args

import fsspec
import icechunk
from fsspec.implementations.local import LocalFileSystem

from ocr_resources.layout import StorageLayout
from ocr_resources.settings import DEFAULT_MODEL_VARIANT, ModelVariantName


class StorageRootError(RuntimeError):
    """The storage root is missing or not writable (checked when a deploy starts, never when
    settings are built, so configuration stays free of I/O)."""


@dataclass(frozen=True)
class Versioned:
    """A file's content and its version token: the S3 ETag, or locally the content's hash
    (like an ETag, the same bytes give the same token)."""

    data: bytes
    token: str


# Icechunk's own log lines (e.g. its note that local storage is not for concurrent commits)
# stay out of the pipeline's console: errors are raised as exceptions anyway
icechunk.set_logs_filter("error")


def _content_token(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


@lru_cache(maxsize=8)
def _s3_client(endpoint_url: str | None):
    """One boto3 client per endpoint (clients are thread-safe; making one costs ~0.1 s), built
    by dagster-aws; credentials come from the environment."""
    from dagster_aws.s3 import S3Resource

    return S3Resource(endpoint_url=endpoint_url).get_client()


# a forked child must not share the parent's pooled connections
os.register_at_fork(after_in_child=_s3_client.cache_clear)

# S3 requests one filesystem keeps in flight (botocore's default pool: 10): a folder swapped
# into place is copied ~this many objects at a time (a CONUS pyramid: ~440,000 objects)
S3_CONNECTIONS = 64
# what every temporary of an atomic write is named after; a reader never lists these
TEMPORARY_PREFIX = ".tmp-"
# a Zarr tree's metadata documents (v3 and v2): published after the chunks they describe
METADATA_OBJECTS = frozenset({"zarr.json", ".zarray", ".zgroup", ".zattrs", ".zmetadata"})
# folders written whole (stores, datasets): a sweep of dead temporaries does not walk them
WRITTEN_WHOLE = (".icechunk", ".zarr", ".parquet")
# the answers of a conditional S3 request whose condition failed: the object exists (create),
# changed (replace, delete) or is gone, or a concurrent conditional write won (409)
_CONDITION_FAILED = {"PreconditionFailed", "ConditionalRequestConflict", "NoSuchKey", "412"}


def _s3_conditional(call: Callable[[], dict[str, Any]]) -> dict[str, Any] | None:
    """The response of a conditional S3 request, or None when its condition failed."""
    from botocore.exceptions import ClientError

    try:
        return call()
    except ClientError as exc:
        if exc.response.get("Error", {}).get("Code") in _CONDITION_FAILED:
            return None
        raise


def _normalised(path: str) -> str:
    """``path`` with "..", "." and doubled "/" resolved (after the URL scheme, if any)."""
    scheme, sep, rest = path.rpartition("://")
    return f"{scheme}{sep}{posixpath.normpath(rest or '/')}"


def _is_s3(url: str) -> bool:
    return url.startswith("s3://")


class FileStore:
    """Files under the storage root: filesystems, atomic and conditional writes, locks, the
    environment's wipe. Holds only plain values (the layout, the S3 endpoint), so it pickles
    to a worker as it is."""

    def __init__(self, layout: StorageLayout, endpoint_url: str | None = None) -> None:
        self._layout, self._root = layout, layout.root
        self._endpoint_url = endpoint_url  # an S3-compatible endpoint (e.g. a test server)

    @property
    def is_s3(self) -> bool:
        return self._root.startswith("s3://")

    @property
    def storage_options(self) -> dict[str, Any]:
        """fsspec options for URLs under the root (credentials come from the environment)."""
        return self.options_for(self._root)

    def options_for(self, url: str) -> dict[str, Any]:
        """fsspec options for ``url``: for an S3 URL the endpoint and a connection pool wide
        enough for fsspec's concurrent batches (inputs and outputs may be on different kinds
        of storage)."""
        if not _is_s3(url):
            return {}
        options: dict[str, Any] = {"config_kwargs": {"max_pool_connections": S3_CONNECTIONS}}
        return options | ({"endpoint_url": self._endpoint_url} if self._endpoint_url else {})

    @property
    def fs(self) -> fsspec.AbstractFileSystem:
        return self.fs_for(self._root)

    def fs_for(self, url: str) -> fsspec.AbstractFileSystem:
        """The filesystem of ``url`` (an input may be local while the outputs are on S3)."""
        return fsspec.core.url_to_fs(url, **self.options_for(url))[0]

    def icechunk_storage(self, uri: str) -> icechunk.Storage:
        """Icechunk storage of a repository: S3 (credentials from the environment, as the
        published reader) or a local folder."""
        if _is_s3(uri):
            bucket, _, prefix = uri.removeprefix("s3://").partition("/")
            endpoint = self._endpoint_url
            return icechunk.s3_storage(
                bucket=bucket,
                prefix=prefix.rstrip("/") or None,
                endpoint_url=endpoint,
                allow_http=bool(endpoint and endpoint.startswith("http://")),
                force_path_style=bool(endpoint),
                from_env=True,
            )
        return icechunk.local_filesystem_storage(self.fs_path(uri))

    def fs_path(self, url: str) -> str:
        """``url`` as the filesystem names it (no URL scheme), as pyarrow's fsspec bridge and
        ``fs.find`` results expect: fsspec's public ``url_to_fs`` does the stripping."""
        return fsspec.core.url_to_fs(url, **self.options_for(url))[1]

    def s3_client(self):
        """boto3 S3 client through dagster-aws, for what fsspec cannot do (conditional puts)."""
        return _s3_client(self._endpoint_url)

    def _s3_key(self, path: str) -> dict[str, str]:
        bucket, _, key = path.removeprefix("s3://").partition("/")
        return {"Bucket": bucket, "Key": key}

    def _s3_put_if(self, path: str, data: bytes, **condition: str) -> str | None:
        """A conditional PutObject (``IfNoneMatch`` or ``IfMatch``): the new ETag, or None."""
        key = self._s3_key(path)
        done = _s3_conditional(lambda: self.s3_client().put_object(**key, Body=data, **condition))
        return None if done is None else done["ETag"]

    # conditional writes: each returns the version token of what it wrote (an S3 ETag, or
    # the content's hash locally), None when its condition failed ----------------------
    def create_exclusive(self, path: str, data: bytes) -> str | None:
        """Create ``path`` only if it does not exist (atomically, with all of ``data`` at
        once, so a reader never sees it half written); None if it exists."""
        if self.is_s3:
            return self._s3_put_if(path, data, IfNoneMatch="*")
        local = self.fs_path(path)
        parent, name = os.path.split(local)
        os.makedirs(parent, exist_ok=True)
        tmp = os.path.join(parent, f"{TEMPORARY_PREFIX}{uuid.uuid4().hex}-{name}")
        try:
            with open(tmp, "wb") as f:
                f.write(data)
            os.link(tmp, local)  # fails if ``local`` exists: O_EXCL, with the content complete
        except FileExistsError:
            return None
        finally:
            with suppress(FileNotFoundError):
                os.unlink(tmp)
        return _content_token(data)

    def read_versioned(self, path: str) -> Versioned | None:
        """``path``'s content with its version token (for :meth:`replace_if` and
        :meth:`delete_if`), or None if it does not exist."""
        if self.is_s3:
            key = self._s3_key(path)
            got = _s3_conditional(lambda: self.s3_client().get_object(**key))
            return None if got is None else Versioned(got["Body"].read(), got["ETag"])
        try:
            with open(self.fs_path(path), "rb") as f:
                data = f.read()
        except FileNotFoundError:
            return None
        return Versioned(data, _content_token(data))

    def replace_if(self, path: str, token: str, data: bytes) -> str | None:
        """Replace ``path`` with ``data`` only if it is still the version ``token`` names
        (compare-and-swap); the new token, or None if it changed or is gone."""
        if self.is_s3:
            return self._s3_put_if(path, data, IfMatch=token)
        with self._local_cas(path) as current:
            if current is None or current.token != token:
                return None
            self.write_bytes(path, data)  # a rename: readers see the old or the new content
        return _content_token(data)

    def delete_if(self, path: str, token: str) -> bool:
        """Delete ``path`` only if it is still the version ``token`` names; False if it
        changed or is gone (so a late delete never removes what someone else wrote since)."""
        if self.is_s3:
            key = self._s3_key(path)
            return (
                _s3_conditional(lambda: self.s3_client().delete_object(**key, IfMatch=token))
                is not None
            )
        with self._local_cas(path) as current:
            if current is None or current.token != token:
                return False
            os.unlink(self.fs_path(path))
        return True

    @contextmanager
    def _local_cas(self, path: str) -> Iterator[Versioned | None]:
        """``path``'s current version, read while holding the local lock of ``path``: every
        conditional change of ``path`` on a local root holds it from its compare to its write.
        (Creation needs no guard: ``os.link`` is exclusive on its own.)"""
        with self.local_lock(path, "cas"):
            yield self.read_versioned(path)

    @contextmanager
    def local_lock(self, path: str, kind: str = "lock") -> Iterator[None]:
        """An exclusive ``flock`` on a hidden sibling of local ``path`` (``.<name>.<kind>``),
        across processes; the kernel releases it when the holder exits, however it dies."""
        parent, name = os.path.split(self.fs_path(path))
        os.makedirs(parent, exist_ok=True)
        fd = os.open(os.path.join(parent, f".{name}.{kind}"), os.O_CREAT | os.O_RDWR, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            yield
        finally:
            os.close(fd)  # releases the flock

    def open(self, path: str, mode: str = "rb") -> IO:
        """A file under the root; writing creates its folder first (objects need none)."""
        if "w" in mode:
            self.fs_for(path).makedirs(posixpath.dirname(path), exist_ok=True)
        return self.fs_for(path).open(path, mode)

    def size(self, path: str) -> int:
        return int(self.fs_for(path).size(path))

    def makedirs(self, path: str) -> None:
        self.fs.makedirs(path, exist_ok=True)

    def read_json(self, path: str) -> Any:
        with self.fs_for(path).open(path, "rb") as f:
            return json.load(f)

    def delete(self, path: str) -> None:
        if self.fs.exists(path):
            self.fs.rm(path, recursive=True)

    def wipe_environment(self) -> list[str]:
        """Delete exactly this environment's output prefixes; returns those that existed."""
        if self._layout.environment == "production":
            raise PermissionError("wipe is refused for production: versions are kept for rollback")
        root = _normalised(self._root).rstrip("/") + "/"
        scope = "/".join([self._layout.environment, *filter(None, [self._layout.variant_segment])])
        others = self._other_variants()
        deleted = []
        for prefix in self._layout.environment_prefixes():
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

    def _other_variants(self) -> set[str]:
        """The folders in this deployment's prefixes that are other model variants' own
        prefixes (the default variant's prefix holds them): never this deployment's to touch."""
        if self._layout.variant_segment:
            return set()
        return set(get_args(ModelVariantName)) - {DEFAULT_MODEL_VARIANT}

    def remove_dead_temporaries(self) -> list[str]:
        """The temporaries (``.tmp-…``, see :meth:`atomic_path`) that writers of this
        environment left when they died, removed from its output prefixes; their paths. Stores
        and datasets (``*.icechunk``, ``*.zarr``, ``*.parquet`` folders) are written whole and
        not walked. Only for a deployment holding the lock with no run of the environment live:
        then no writer that could own one is alive. Paths are returned as URLs (``s3://…``)."""
        removed: list[str] = []
        prefixes = [self.fs_path(p) for p in self._layout.environment_prefixes()]
        folders = [p for p in prefixes if self.fs.exists(p)]
        others = self._other_variants()
        while folders:
            folder = folders.pop()
            for entry in self.fs.ls(folder, detail=True):
                path = entry["name"].rstrip("/")
                name = posixpath.basename(path)
                if folder in prefixes and name in others:
                    continue  # another variant's prefix
                if name.startswith(TEMPORARY_PREFIX):
                    self.fs.rm(path, recursive=True)
                    removed.append(f"s3://{path}" if self.is_s3 else path)
                elif entry["type"] == "directory" and not name.endswith(WRITTEN_WHOLE):
                    folders.append(path)
        return sorted(removed)

    # generic atomic writes ---------------------------------------------------------------
    def exists(self, path: str) -> bool:
        return self.fs_for(path).exists(path)

    @contextmanager
    def atomic_path(self, path: str) -> Iterator[str]:
        """A temporary sibling to write to; moved onto ``path`` only if the block succeeds."""
        parent, name = posixpath.split(path)
        fs = self.fs_for(path)
        fs.makedirs(parent, exist_ok=True)
        tmp = f"{parent}/{TEMPORARY_PREFIX}{uuid.uuid4().hex}-{name}"
        try:
            yield tmp
            if not fs.isdir(tmp):
                fs.mv(tmp, path)  # a rename, or one object copy on S3
            elif isinstance(fs, LocalFileSystem):
                self._replace_local_dir(tmp, path)
            else:
                self._replace_object_dir(tmp, path)
        finally:
            if fs.exists(tmp):
                fs.rm(tmp, recursive=True)

    def _replace_local_dir(self, tmp: str, path: str) -> None:
        """Swap a finished directory into place; the old one is removed only afterwards.

        Two renames, under a lock on the parent folder itself (no lock file beside the
        published outputs): two writers swapping at once would otherwise each move the other's
        fresh directory aside or, renaming onto a directory that just reappeared, nest theirs
        inside it."""
        old = f"{tmp}.old"
        folder = os.open(posixpath.dirname(self.fs_path(path)), os.O_RDONLY)
        try:
            fcntl.flock(folder, fcntl.LOCK_EX)  # released when the folder is closed
            with suppress(FileNotFoundError):
                os.rename(self.fs_path(path), self.fs_path(old))
            os.rename(self.fs_path(tmp), self.fs_path(path))
        finally:
            os.close(folder)
        if self.fs.exists(old):
            self.fs.rm(old, recursive=True)

    def _replace_object_dir(self, tmp: str, path: str) -> None:
        """Object stores have no directories to rename: copy the finished objects into place
        (server-side copies, concurrently in fsspec's batches, not one request after another:
        a CONUS pyramid has tens of thousands), metadata objects last, so a reader meets new
        metadata only over the data it describes; then delete the old objects the new set
        does not have."""
        base, dest = self.fs_path(tmp), self.fs_path(path)
        fresh = sorted(f[len(base) :] for f in self.fs.find(tmp))
        data = [rel for rel in fresh if posixpath.basename(rel) not in METADATA_OBJECTS]
        metadata = [rel for rel in fresh if posixpath.basename(rel) in METADATA_OBJECTS]
        for batch in (data, metadata):
            if batch:
                self.fs.copy([base + rel for rel in batch], [dest + rel for rel in batch])
        if self.fs.exists(path):
            kept = set(fresh)
            stale = [f for f in self.fs.find(path) if f[len(dest) :] not in kept]
            if stale:
                self.fs.rm(stale)

    def write_bytes(self, path: str, data: bytes) -> None:
        with self.atomic_path(path) as tmp:
            self.fs.pipe_file(tmp, data)

    def check_root(self) -> None:
        """The root exists and can be written: a local folder gets a probe file (created and
        removed); an S3 root needs its bucket (the deploy's lock is its first write)."""
        if self.is_s3:
            bucket = self._root.removeprefix("s3://").split("/", 1)[0]
            if not self.fs.exists(bucket):
                raise StorageRootError(
                    f"storage root {self._root} does not exist: expected an existing bucket "
                    f"{bucket!r} (fix OCR_STORAGE_ROOT or create the bucket)"
                )
            return
        if not os.path.exists(self._root):
            raise StorageRootError(
                f"storage root {self._root} does not exist: expected an existing folder "
                "(create it, or fix OCR_STORAGE_ROOT)"
            )
        if not os.path.isdir(self._root):
            raise StorageRootError(f"storage root {self._root} is not a folder: expected a folder")
        try:
            tempfile.TemporaryFile(dir=self._root, prefix=".ocr-write-check-").close()
        except OSError as exc:
            raise StorageRootError(
                f"storage root {self._root} is not writable ({exc.strerror}): expected a folder "
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
