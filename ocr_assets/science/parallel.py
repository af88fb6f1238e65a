"""Thread counts and blocks for the compiled and SciPy loops, which release the GIL, and
giving freed memory back to the system between the stages of a field."""

from __future__ import annotations

import ctypes
import ctypes.util
import functools
import os


def worker_threads() -> int:
    """The CPUs this process may use, capped by ``OCR_THREADS`` when set (e.g. when several
    fields share a machine)."""
    cpus = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    return max(1, min(cpus or 1, int(os.environ.get("OCR_THREADS", "64"))))


def blocks(n: int, size: int) -> list[slice]:
    """``range(n)`` cut into slices of ``size`` (the last one shorter)."""
    return [slice(i, min(i + size, n)) for i in range(0, n, size)]


@functools.cache
def _libc() -> ctypes.CDLL | None:
    name = ctypes.util.find_library("c")
    try:
        return ctypes.CDLL(name) if name else None
    except OSError:
        return None


def release_freed_memory() -> None:
    """Return freed heap memory to the system (glibc's ``malloc_trim``; nothing elsewhere).

    Reading a Zarr store frees many chunk-sized buffers from several threads; glibc keeps
    them resident in its arenas, where the next stage (which allocates differently) cannot
    reuse them: ~0.1 GB of a full-size field's peak (bench/).
    """
    libc = _libc()
    if libc is not None and hasattr(libc, "malloc_trim"):
        libc.malloc_trim(0)
