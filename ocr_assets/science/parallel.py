"""Thread counts and blocks for the compiled and SciPy loops, which release the GIL."""

from __future__ import annotations

import os


def worker_threads() -> int:
    """The CPUs this process may use, capped by ``OCR_THREADS`` when set (e.g. when several
    fields share a machine)."""
    cpus = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    return max(1, min(cpus or 1, int(os.environ.get("OCR_THREADS", "64"))))


def blocks(n: int, size: int) -> list[slice]:
    """``range(n)`` cut into slices of ``size`` (the last one shorter)."""
    return [slice(i, min(i + size, n)) for i in range(0, n, size)]
