"""Functions that run on Dask workers (or in process): they rebuild the storage resource
from plain values, since Dagster resources do not pickle."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np

from ocr_assets.science.composite import NegativeWindWeights
from ocr_assets.science.fire_model import field_bp
from ocr_assets.science.timing import StageTimer
from ocr_resources.storage import OcrStorage


def region_field(spec: dict, region_id: str, year: int) -> tuple[np.ndarray, dict[str, float]]:
    """One BP field of one region: read its window, run the model; (bp, seconds per stage)."""
    storage = OcrStorage(**spec)
    timer = StageTimer()
    with timer.stage("read"):
        grid = storage.region_grid()
        inputs = storage.read_region_inputs(
            grid, grid.region(region_id), fields=(year,), reference=False
        )
    try:
        return field_bp(inputs, year, timer, storage.model_variant), timer.seconds
    except NegativeWindWeights as exc:  # found while the model reads the wind
        raise storage.negative_wind_error(region_id, exc) from None


def with_storage(spec: dict, fn: Callable[..., Any], *args: Any) -> Any:
    """``fn(storage, *args)`` with the storage rebuilt from ``spec``."""
    return fn(OcrStorage(**spec), *args)
