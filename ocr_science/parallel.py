"""Thread counts and blocks for the compiled and SciPy loops, which release the GIL, worker
processes for the work that holds it, and giving freed memory back to the system between the
stages of a field."""

from __future__ import annotations

import ctypes
import ctypes.util
import functools
import multiprocessing
import os
import signal
import sys
from collections import deque
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import Executor, Future, ProcessPoolExecutor, ThreadPoolExecutor
from contextlib import contextmanager
from contextvars import ContextVar
from typing import TypeVar

T = TypeVar("T")
PR_SET_PDEATHSIG = 1  # prctl(2)
R = TypeVar("R")

# The caller's cap on threads (the ``threads`` setting, set by the compute resource around a
# step's work); a context variable so that concurrent steps in one process keep their own.
_THREAD_LIMIT: ContextVar[int | None] = ContextVar("ocr_thread_limit", default=None)


@contextmanager
def thread_limit(limit: int | None) -> Iterator[None]:
    """Cap ``worker_threads()`` at ``limit`` (None: no cap) inside the block."""
    token = _THREAD_LIMIT.set(limit)
    try:
        yield
    finally:
        _THREAD_LIMIT.reset(token)


def worker_threads() -> int:
    """The CPUs this process may use, capped by the enclosing ``thread_limit``."""
    cpus = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    limit = _THREAD_LIMIT.get()
    return max(1, min(cpus or 1, limit or cpus or 1))


def may_start_processes() -> bool:
    """Whether this process may start worker processes: a daemonic one (a Dask worker under
    its nanny, unless ``distributed.worker.daemon`` is off) may not."""
    return not multiprocessing.current_process().daemon


def _die_with_parent() -> None:
    """In a worker process: be killed when the process that started it dies (Linux's
    ``PR_SET_PDEATHSIG``), so a step killed mid-map leaves no workers behind waiting for work
    that will never come; elsewhere nothing."""
    libc = _libc()
    if libc is not None and hasattr(libc, "prctl") and sys.platform.startswith("linux"):
        libc.prctl(PR_SET_PDEATHSIG, signal.SIGKILL)


def ordered_map(
    fn: Callable[[T], R],
    items: Iterable[T],
    workers: int,
    ahead: int | None = None,
    processes: bool = False,
) -> Iterator[R]:
    """``fn`` over ``items`` on ``workers`` threads, results in the items' order, with at most
    ``ahead`` (default 2 × workers) items taken from ``items`` and not yet yielded: memory is
    bounded by that window, never by the number of items. ``items`` is consumed here, in
    order (a reader stays sequential); an error in ``fn`` is raised at its item.

    ``processes``: on worker processes instead, for work that holds the GIL (``fn``, the items
    and the results pickle; the workers are spawned, so they see this process's environment
    as it is now); on threads where this process may not start any."""
    if workers <= 1:
        yield from map(fn, items)
        return
    window: deque[Future[R]] = deque()
    limit = max(1, ahead or 2 * workers)
    pool: Executor
    if processes and may_start_processes():
        pool = ProcessPoolExecutor(
            workers, mp_context=multiprocessing.get_context("spawn"), initializer=_die_with_parent
        )
    else:
        pool = ThreadPoolExecutor(workers, thread_name_prefix="ordered-map")
    with pool:
        try:
            for item in items:
                window.append(pool.submit(fn, item))
                if len(window) >= limit:
                    yield window.popleft().result()
            while window:
                yield window.popleft().result()
        finally:
            for future in window:
                future.cancel()


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
    reuse them (measured in bench/).
    """
    libc = _libc()
    if libc is not None and hasattr(libc, "malloc_trim"):
        libc.malloc_trim(0)
