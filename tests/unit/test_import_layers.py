"""The packages import one way: ``ocr_jobs`` → ``ocr_assets`` → ``ocr_resources`` →
``ocr_science`` (the pure science at the bottom imports none of the others, nor Dagster)."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
# each package and the project packages it may import
MAY_IMPORT: dict[str, set[str]] = {
    "ocr_science": set(),
    "ocr_resources": {"ocr_science"},
    "ocr_assets": {"ocr_resources", "ocr_science"},
    "ocr_jobs": {"ocr_assets", "ocr_resources", "ocr_science"},
}


def _imported_packages(path: Path) -> set[str]:
    """The top-level packages a module imports (absolute imports, anywhere in it)."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            found |= {alias.name.split(".")[0] for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            found.add(node.module.split(".")[0])
    return found


@pytest.mark.parametrize("package", list(MAY_IMPORT))
def test_a_package_imports_only_the_packages_below_it(package):
    wrong = {}
    for path in sorted((ROOT / package).rglob("*.py")):
        imported = _imported_packages(path)
        above = (imported & set(MAY_IMPORT)) - MAY_IMPORT[package] - {package}
        if package == "ocr_science" and "dagster" in imported:
            above.add("dagster")
        if above:
            wrong[str(path.relative_to(ROOT))] = sorted(above)
    assert not wrong, wrong
