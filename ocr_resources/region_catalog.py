"""Valid region ids shipped as package data, one list per input catalog (docs/design.md §4)."""

from __future__ import annotations

import json
from pathlib import Path

from ocr_science.regions import sort_region_ids

DATA_DIR = Path(__file__).resolve().parent / "data"


def catalog_path(catalog: str) -> Path:
    return DATA_DIR / f"{catalog}_valid_region_ids.json"


def load_valid_region_ids(catalog: str) -> list[str]:
    path = catalog_path(catalog)
    if not path.is_file():
        raise FileNotFoundError(
            f"no valid-region list for catalog {catalog!r} at {path}; run `ocr regions refresh`"
        )
    return sort_region_ids(json.loads(path.read_text()))


def write_valid_region_ids(catalog: str, ids: list[str]) -> Path:
    path = catalog_path(catalog)
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(sort_region_ids(ids), indent=0) + "\n")
    tmp.replace(path)
    return path
