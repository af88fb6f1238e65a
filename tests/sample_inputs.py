"""Where a test's storage root finds its inputs: the default input root, the root's sibling
``<root>-inputs`` (an output root never holds its inputs)."""

from __future__ import annotations

import os
import shutil
from pathlib import Path


def inputs_of(root: str | Path) -> Path:
    """The default input root of storage root ``root``."""
    return Path(f"{os.fspath(root).rstrip('/')}-inputs")


def link_inputs(sample_root: str | Path, root: str | Path) -> None:
    """``root``'s inputs are the session sample's (a link, read only); a no-op when linked."""
    if not inputs_of(root).exists():
        os.symlink(inputs_of(sample_root), inputs_of(root))


def copy_inputs(sample_root: str | Path, root: str | Path) -> Path:
    """A writable copy of the sample's inputs as ``root``'s; returns the copy's input root."""
    shutil.copytree(inputs_of(sample_root), inputs_of(root))
    return inputs_of(root)
