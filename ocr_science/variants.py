"""The two named numerics of the fire model: ``published`` and ``corrected`` (docs/design.md §5).

``published`` (the default) reproduces the published OCR v1.1 numbers, quirks included.
``corrected`` is opt-in: each of its deviations removes a dependence on how the work was cut
(warp tiles, the window's extent at the grid's edge) or an artefact of the published grid
code. docs/methods/variants.md gives the reason for each row below.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import xarray as xr

from ocr_science.blur import gaussian_blur, gaussian_blur_ignoring_nan
from ocr_science.reproject import corrected_warp, published_warp

Warp = Callable[[xr.DataArray, np.ndarray, np.ndarray], np.ndarray]
Blur = Callable[..., np.ndarray]


@dataclass(frozen=True)
class ModelVariant:
    """Where the variants differ; everything else (gap-fill, spreading, composite, combine,
    blur size, clip) is shared."""

    name: str
    # 270 m cells kept around the published subset: the corrected lookup must never take a
    # cell on the subset's edge, whose gap-fill would not see all its neighbours
    subset_margin: int
    warp: Warp
    # kernel sample grid centred on the anchor cell (−40 … 40) instead of linspace(−41, 40, 81)
    centred_kernels: bool
    # kernel pixel sizes at the region's centre pixel instead of the (possibly cut) window's
    kernels_at_region_centre: bool
    blur: Blur


VARIANTS: dict[str, ModelVariant] = {
    v.name: v
    for v in (
        ModelVariant("published", 0, published_warp, False, False, gaussian_blur),
        ModelVariant("corrected", 2, corrected_warp, True, True, gaussian_blur_ignoring_nan),
    )
}
DEFAULT_VARIANT = "published"


def model_variant(name: str) -> ModelVariant:
    """The variant called ``name``; an unknown name is refused with the known ones."""
    try:
        return VARIANTS[name]
    except KeyError:
        raise ValueError(
            f"model variant {name!r} is unknown; expected one of {', '.join(VARIANTS)}"
        ) from None
