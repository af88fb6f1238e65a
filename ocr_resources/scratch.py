"""Local scratch folders that do not outlive their process, even one killed hard.

A step's scratch folder (FlatGeobuf layers and tippecanoe's archive, DuckDB's sort spill) can
hold gigabytes. Leaving the ``with`` block removes it, but a process killed with SIGKILL (out
of memory, a cancelled run, a lost VM agent) runs no cleanup. So every scratch folder lives
under one known parent per user and host, named after the process that made it, and making a
new one first removes the folders whose process is gone.
"""

from __future__ import annotations

import os
import re
import shutil
import socket
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

# <pid>-<label>-<random>: the pid says whether the folder's owner still runs
_SCRATCH_NAME = re.compile(r"^(?P<pid>\d+)-")
_LABEL = re.compile(r"^[A-Za-z0-9_.-]+$")


def scratch_parent() -> Path:
    """``<temp dir>/ocr-scratch-<uid>-<host>``: one user's scratch folders on this host (pids
    only mean something on the host, and another user's folders are not ours to remove)."""
    uid = os.getuid() if hasattr(os, "getuid") else 0
    return Path(tempfile.gettempdir()) / f"ocr-scratch-{uid}-{socket.gethostname()}"


def _process_alive(pid: int) -> bool:
    """Whether ``pid`` is a process of this host (signal 0 checks without signalling)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # exists, owned by someone else
        return True
    return True


def remove_stale_scratch(parent: Path) -> list[Path]:
    """Remove the scratch folders under ``parent`` whose process has ended; the removed
    folders. Folders of running processes, and anything not named like a scratch folder,
    are left alone."""
    if not parent.is_dir():
        return []
    removed = []
    for folder in parent.iterdir():
        found = _SCRATCH_NAME.match(folder.name)
        if not found or not folder.is_dir():
            continue
        pid = int(found.group("pid"))
        if pid == os.getpid() or _process_alive(pid):
            continue
        shutil.rmtree(folder, ignore_errors=True)  # a concurrent cleaner may be removing it too
        if not folder.exists():
            removed.append(folder)
    return removed


@contextmanager
def scratch_dir(label: str, parent: Path | None = None) -> Iterator[Path]:
    """A fresh folder ``<parent>/<pid>-<label>-<random>``, removed when the block ends
    (success or error); folders that dead processes left behind are removed first."""
    if not _LABEL.match(label):
        raise ValueError(f"scratch label {label!r}: expected letters, digits, '_', '.' or '-'")
    parent = parent or scratch_parent()
    parent.mkdir(parents=True, exist_ok=True)
    remove_stale_scratch(parent)
    folder = Path(tempfile.mkdtemp(prefix=f"{os.getpid()}-{label}-", dir=parent))
    try:
        yield folder
    finally:
        shutil.rmtree(folder, ignore_errors=True)
