"""Code versions of the downstream assets, from the source of the modules that compute them:
Dagster marks an asset stale when its code version differs from the one its latest
materialization recorded, so editing what computes an output makes that output stale, with
no version to bump by hand.

A version is ``src-<12 hex>``: a SHA-256 over each module's name and source bytes, read once
when the asset is defined (the code location's import). The modules an asset names are
widened by the science modules they import, directly or not (``ocr_science`` is where
values are computed), so a constant moved between science modules is not missed. The region
model's version is its parameters' (``science.model_version``).
"""

from __future__ import annotations

import ast
import hashlib
import importlib.util
from collections.abc import Callable, Iterable
from pathlib import Path

SOURCE_VERSION_PREFIX = "src-"
SCIENCE_PACKAGE = "ocr_science"


def module_source(name: str) -> Path:
    """The file a module is loaded from, found without importing it (an asset module names
    itself while it is still being imported)."""
    spec = importlib.util.find_spec(name)
    if spec is None or spec.origin is None or not spec.origin.endswith(".py"):
        raise ValueError(f"module {name!r} has no Python source file to version")
    return Path(spec.origin)


def science_imports(source: bytes) -> list[str]:
    """The science modules a module's source imports (``from ocr_science.x import …``,
    ``from ocr_science import x``, ``import ocr_science.x``)."""
    found = []
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            if node.module == SCIENCE_PACKAGE:
                found += [f"{SCIENCE_PACKAGE}.{alias.name}" for alias in node.names]
            elif node.module.startswith(SCIENCE_PACKAGE + "."):
                found.append(node.module)
        elif isinstance(node, ast.Import):
            found += [a.name for a in node.names if a.name.startswith(SCIENCE_PACKAGE + ".")]
    return found


def with_science_imports(modules: Iterable[str], read: Callable[[str], bytes]) -> dict[str, bytes]:
    """``modules`` and every science module they import, directly or not, with their source
    (``read``: a module's name to its source), named modules first, each once."""
    sources: dict[str, bytes] = {}
    pending = list(modules)
    while pending:
        name = pending.pop(0)
        if name not in sources:
            sources[name] = read(name)
            pending += science_imports(sources[name])
    return sources


def sources_version(sources: Iterable[tuple[str, bytes]]) -> str:
    """``src-<12 hex>`` of (module name, source bytes) pairs: the same sources give the same
    version in every process and on every machine (no path, no time goes in)."""
    digest = hashlib.sha256()
    for name, text in sources:
        digest.update(name.encode() + b"\0" + hashlib.sha256(text).digest())
    return SOURCE_VERSION_PREFIX + digest.hexdigest()[:12]


def source_code_version(*modules: str) -> str:
    """The code version of an asset computed by ``modules`` (dotted names: its own module, the
    science and the storage modules it goes through) and the science modules they import."""
    found = with_science_imports(modules, lambda name: module_source(name).read_bytes())
    return sources_version(found.items())
