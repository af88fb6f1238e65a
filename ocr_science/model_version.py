"""The fire model's code version: the region assets carry it, so Dagster marks every region
(and what is built from them) stale when the model changes.

It is the revision below (bumped by hand when the model's code changes what it computes) and a
hash of the model's parameters as they are when the code location loads — change a constant and
the version changes with it, no bump needed.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json

from ocr_science import blur, kernels, regions, reproject, sampling, spreading, variants

# Bump when a change to the model's code (not only its constants) changes its results.
MODEL_REVISION = 1


def model_parameters(variant: str) -> dict:
    """Every constant the region model's results depend on, read now (not at import)."""
    chosen = variants.model_variant(variant)
    return {
        "revision": MODEL_REVISION,
        "kernels": {
            "size": kernels.KERNEL_SIZE,
            "earth_radius_m": kernels.EARTH_RADIUS_M,
            "centre_offset_m": kernels.CENTRE_OFFSET_M,
            "along_wind_m": kernels.ALONG_WIND_M,
            "across_wind_m": kernels.ACROSS_WIND_M,
            "directions": list(kernels.DIRECTIONS),
            "ellipses": {k: dataclasses.asdict(e) for k, e in kernels.ELLIPSES.items()},
        },
        "blur": {"radius_m": blur.BLUR_RADIUS_M, "metres_per_degree": blur.METRES_PER_DEGREE},
        "spreading": {"noise_floor": spreading.NOISE_FLOOR, "iterations": spreading.ITERATIONS},
        "reproject": {"rolling_window": reproject.ROLLING_WINDOW},
        "halo_deg": regions.HALO_DEG,
        "value_ranges": {k: list(v) for k, v in sampling.VALUE_RANGES.items()},
        "variant": {
            "name": chosen.name,
            "subset_margin": chosen.subset_margin,
            "warp": chosen.warp.__name__,
            "centred_kernels": chosen.centred_kernels,
            "kernels_at_region_centre": chosen.kernels_at_region_centre,
            "blur": chosen.blur.__name__,
        },
    }


def model_code_version(variant: str) -> str:
    """``fire-<revision>-<12 hex of the parameters' hash>`` for a model variant."""
    text = json.dumps(model_parameters(variant), sort_keys=True)
    return f"fire-{MODEL_REVISION}-{hashlib.sha256(text.encode()).hexdigest()[:12]}"
