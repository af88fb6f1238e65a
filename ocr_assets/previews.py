"""Small PNG previews for asset metadata, so the Dagster UI shows a picture per materialization.

Colours are the map page's (``RISK_COLORS``, served to it by ``ocr serve``): one class per risk
score 0–10 from the one binning function, so a preview and the map agree pixel for pixel.
Drawn with matplotlib's object API on an Agg canvas (no pyplot state, safe in any thread).
"""

from __future__ import annotations

import base64
import io
import math

import geopandas as gpd
import numpy as np

from ocr_science.fire_model import YEARS
from ocr_science.scoring import N_SCORES, RISK_COLORS, risk_score

PREVIEW_PIXELS = 480  # longest side of a raster preview's data, before the figure's margins
MAX_CHOROPLETH_UNITS = 5000  # finest level drawn: tracts when few, else counties, else states
DPI = 100  # figures are sized in inches: 5 × 4.2 in is a 500 × 420 px preview


NO_FINITE_VALUES = "no finite values: every pixel of this window is missing (NaN) in the inputs"


def png_markdown(png: bytes, alt: str) -> str:
    """Markdown showing a PNG inline (a data URI), the form Dagster's UI renders as an image."""
    return f"![{alt}](data:image/png;base64,{base64.b64encode(png).decode('ascii')})"


def _scores(values: np.ndarray) -> np.ma.MaskedArray:
    """Risk score per finite value; missing values masked (drawn transparent)."""
    values = np.asarray(values)
    finite = np.isfinite(values)
    scores = np.zeros(values.shape, dtype=np.int8)
    scores[finite] = risk_score(values[finite])
    return np.ma.masked_array(scores, mask=~finite)


def _png(fig) -> bytes:
    from matplotlib.backends.backend_agg import FigureCanvasAgg

    FigureCanvasAgg(fig)
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=DPI)
    return buffer.getvalue()


def _legend(fig, ax) -> None:
    from matplotlib.cm import ScalarMappable
    from matplotlib.colors import BoundaryNorm, ListedColormap

    cmap = ListedColormap(RISK_COLORS)
    norm = BoundaryNorm(np.arange(N_SCORES + 1) - 0.5, N_SCORES)
    bar = fig.colorbar(ScalarMappable(norm=norm, cmap=cmap), ax=ax, ticks=[0, 5, 10])
    bar.ax.tick_params(labelsize=9)
    bar.set_label("risk score", fontsize=9)


def raster_preview(values: np.ndarray, title: str, latitude: float = 0.0) -> bytes:
    """A region's RPS window (rows = latitude ascending, square degrees) as risk-score classes.

    Large windows are subsampled (nearest) to about ``PREVIEW_PIXELS`` on the long side, so
    a 6000 × 4500 region draws as fast as the sample's 120 × 90; pixels are stretched by
    1 / cos(latitude) so the region keeps its shape on the ground.
    """
    from matplotlib.colors import BoundaryNorm, ListedColormap
    from matplotlib.figure import Figure

    step = max(1, math.ceil(max(values.shape) / PREVIEW_PIXELS))
    scores = _scores(values[::step, ::step])
    fig = Figure(figsize=(5.0, 4.2), layout="constrained")
    ax = fig.add_subplot()
    if scores.mask.all():  # say so rather than draw an empty frame
        ax.text(
            0.5,
            0.5,
            NO_FINITE_VALUES.replace(": ", ":\n"),
            transform=ax.transAxes,
            ha="center",
            va="center",
            fontsize=10,
        )
    cmap = ListedColormap(RISK_COLORS)
    norm = BoundaryNorm(np.arange(N_SCORES + 1) - 0.5, N_SCORES)
    ax.imshow(
        scores,
        cmap=cmap,
        norm=norm,
        origin="lower",
        interpolation="nearest",
        aspect=1 / math.cos(math.radians(latitude)),
    )
    ax.set_title(title, fontsize=11)
    ax.set_axis_off()
    _legend(fig, ax)
    return _png(fig)


def choropleth_level(rows_per_level: dict[str, int]) -> str:
    """The finest regional map level with at most ``MAX_CHOROPLETH_UNITS`` units."""
    for level in ("tracts", "counties", "states"):
        if 0 < rows_per_level.get(level, 0) <= MAX_CHOROPLETH_UNITS:
            return level
    return "states"


def choropleth_preview(units: gpd.GeoDataFrame, level: str) -> bytes:
    """Census units coloured by the risk score of their mean RPS, 2011 beside 2047."""
    from matplotlib.figure import Figure

    west, south, east, north = units.total_bounds
    simplified = units.geometry.simplify(max(east - west, north - south) / 600)
    fig = Figure(figsize=(9.0, 4.5), layout="constrained")
    axes = fig.subplots(1, 2)
    for ax, year in zip(axes, YEARS, strict=True):
        classes = _scores(units[f"rps_{year}_mean"].to_numpy(np.float64)).filled(0)
        colors = [RISK_COLORS[c] for c in classes]
        gpd.GeoSeries(simplified, crs=units.crs).plot(
            ax=ax, color=colors, edgecolor="white", linewidth=0.3
        )
        ax.set_title(f"{level}: mean RPS {year}", fontsize=11)
        ax.set_aspect(1 / math.cos(math.radians((south + north) / 2)))
        ax.set_axis_off()
    _legend(fig, axes)
    return _png(fig)
