"""Region grid: region id ↔ chunk slices ↔ pixel-edge bounds, and region selection.

Everything is derived from the conditional-risk input's coordinates and chunk shape, so the
embedded sample (small chunks) and the real CONUS grid (6000 × 4500) run through one code path.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

import numpy as np

REGION_ID_PATTERN = re.compile(r"^y(\d+)_x(\d+)$")
_SELECTION_PATTERN = re.compile(r"^y(\d+)(?:-y(\d+))?_x(\d+)(?:-x(\d+))?$")
# A chunk index has at most this many digits (CONUS has 17 × 47 chunks): a longer one names no
# region, and refusing it first keeps int() far from Python's 4300-digit conversion limit.
MAX_INDEX_DIGITS = 6
# Halo around a region for neighbourhood operations (docs/design.md §4): 0.15° ≈ 16.7 km ≈ 540 px.
HALO_DEG = 0.15


class RegionIdError(ValueError):
    """A region id or selection that is malformed or names regions without data."""


def _shown(text: str, limit: int = 48) -> str:
    """``text`` quoted for an error message, its middle elided when long: a refusal names
    what it refuses without echoing megabytes of it."""
    if len(text) <= limit:
        return repr(text)
    return f"{text[: limit // 2] + '…' + text[-(limit // 4) :]!r} ({len(text)} characters)"


def _index(digits: str, text: str, what: str) -> int:
    """One chunk index of ``text`` (a region id or selection) as an int; too many digits is a
    RegionIdError naming ``text`` and the expected form, never int()'s ValueError."""
    if len(digits) > MAX_INDEX_DIGITS:
        raise RegionIdError(
            f"{what} {_shown(text)} has an index of {len(digits)} digits; expected the form "
            f"y{{iy}}_x{{ix}} with chunk indices of at most {MAX_INDEX_DIGITS} digits, "
            "e.g. 'y2_x3'"
        )
    return int(digits)


def validate_region_id(region_id: str) -> tuple[int, int]:
    """(iy, ix) of a well-formed id; raises before the id can reach a path."""
    match = REGION_ID_PATTERN.fullmatch(region_id) if isinstance(region_id, str) else None
    if match is None:
        shown = _shown(region_id) if isinstance(region_id, str) else repr(region_id)
        raise RegionIdError(
            f"region id {shown} is malformed; expected 'y<row>_x<column>', e.g. 'y2_x3'"
        )
    iy, ix = (_index(digits, region_id, "region id") for digits in match.groups())
    return iy, ix


def region_id(iy: int, ix: int) -> str:
    return f"y{iy}_x{ix}"


@dataclass(frozen=True)
class Region:
    """One chunk of the grid: index slices and pixel-edge bounds (degrees)."""

    region_id: str
    lat_slice: slice
    lon_slice: slice
    lat0: float
    lat1: float
    lon0: float
    lon1: float

    @property
    def shape(self) -> tuple[int, int]:
        return (
            self.lat_slice.stop - self.lat_slice.start,
            self.lon_slice.stop - self.lon_slice.start,
        )

    def bounds(self, halo_deg: float = 0.0) -> tuple[float, float, float, float]:
        """(west, south, east, north) pixel edges, widened by ``halo_deg`` on every side and
        not cut at the grid's edge (the published 270 m subset is taken from these)."""
        return (
            self.lon0 - halo_deg,
            self.lat0 - halo_deg,
            self.lon1 + halo_deg,
            self.lat1 + halo_deg,
        )

    def contains(self, lon: np.ndarray, lat: np.ndarray) -> np.ndarray:
        """Half-open test on pixel edges: each point belongs to exactly one region."""
        return (self.lon0 <= lon) & (lon < self.lon1) & (self.lat0 <= lat) & (lat < self.lat1)


@dataclass(frozen=True)
class RegionGrid:
    """The 1 arc-second grid of the conditional-risk input and its chunking into regions."""

    latitude: np.ndarray
    longitude: np.ndarray
    chunk_lat: int
    chunk_lon: int

    def __post_init__(self) -> None:
        for name, c in (("latitude", self.latitude), ("longitude", self.longitude)):
            if c.ndim != 1 or c.size < 2 or not np.all(np.diff(c) > 0):
                raise ValueError(f"{name} coordinate must be 1-D and strictly ascending")

    @property
    def dlat(self) -> float:
        return float(self.latitude[1] - self.latitude[0])

    @property
    def dlon(self) -> float:
        return float(self.longitude[1] - self.longitude[0])

    @property
    def n_chunks(self) -> tuple[int, int]:
        return (-(-self.latitude.size // self.chunk_lat), -(-self.longitude.size // self.chunk_lon))

    def lat_edge(self, index: int) -> float:
        """Southern edge of pixel row ``index`` (one formula, so neighbours share edges)."""
        return float(self.latitude[0]) + (index - 0.5) * self.dlat

    def lon_edge(self, index: int) -> float:
        return float(self.longitude[0]) + (index - 0.5) * self.dlon

    def region(self, rid: str) -> Region:
        iy, ix = validate_region_id(rid)
        ny, nx = self.n_chunks
        if iy >= ny or ix >= nx:
            raise RegionIdError(f"region id {rid!r} is outside the grid of {ny} × {nx} chunks")
        i0, j0 = iy * self.chunk_lat, ix * self.chunk_lon
        i1 = min(i0 + self.chunk_lat, self.latitude.size)
        j1 = min(j0 + self.chunk_lon, self.longitude.size)
        return Region(
            rid,
            slice(i0, i1),
            slice(j0, j1),
            self.lat_edge(i0),
            self.lat_edge(i1),
            self.lon_edge(j0),
            self.lon_edge(j1),
        )

    def all_region_ids(self) -> list[str]:
        ny, nx = self.n_chunks
        return [region_id(iy, ix) for iy in range(ny) for ix in range(nx)]

    def window(self, region: Region, halo_deg: float = HALO_DEG) -> tuple[slice, slice]:
        """Index slices of the pixels whose centres fall inside the region's edges ± halo,
        cut off at the grid's edge."""
        lat = slice(
            int(np.searchsorted(self.latitude, region.lat0 - halo_deg, "left")),
            int(np.searchsorted(self.latitude, region.lat1 + halo_deg, "right")),
        )
        lon = slice(
            int(np.searchsorted(self.longitude, region.lon0 - halo_deg, "left")),
            int(np.searchsorted(self.longitude, region.lon1 + halo_deg, "right")),
        )
        return lat, lon


def valid_region_ids_from_mask(has_data: np.ndarray) -> list[str]:
    """Ids of the chunks flagged in a (n_chunks_lat, n_chunks_lon) boolean array."""
    return [region_id(int(iy), int(ix)) for iy, ix in np.argwhere(has_data)]


def sort_region_ids(ids: Iterable[str]) -> list[str]:
    return sorted(set(ids), key=validate_region_id)


@dataclass(frozen=True)
class RegionSelection:
    """What a user asked for and what of it can run."""

    provided: list[str]
    valid: list[str]
    invalid: list[str]

    def report(self) -> str:
        return (
            f"provided: {len(self.provided)}  valid: {len(self.valid)}  "
            f"invalid: {len(self.invalid)}"
            + (f" ({', '.join(self.invalid)})" if self.invalid else "")
        )

    def raise_for_invalid(self) -> None:
        if self.invalid:
            raise RegionIdError(
                f"{len(self.invalid)} region id(s) have no data in this input catalog: "
                f"{', '.join(self.invalid)}; expected ids of regions with data "
                "(`ocr regions select all` lists them)"
            )


@dataclass(frozen=True)
class RegionRange:
    """The rows and columns one selection spec names (inclusive), not yet expanded: a range
    is checked against the grid before it becomes a list, so its size costs nothing."""

    spec: str
    rows: range
    columns: range

    @property
    def is_range(self) -> bool:
        return "-" in self.spec

    def within(self, extent: RegionRange) -> bool:
        """Whether every region named lies inside ``extent``'s rows and columns."""
        rows, columns = extent.rows, extent.columns
        return (
            rows.start <= self.rows.start
            and self.rows.stop <= rows.stop
            and columns.start <= self.columns.start
            and self.columns.stop <= columns.stop
        )

    def ids(self) -> list[str]:
        return [region_id(iy, ix) for iy in self.rows for ix in self.columns]

    def __str__(self) -> str:
        """``y0-y4_x0-x5``: the spec form of these rows and columns."""

        def span(axis: str, indices: range) -> str:
            first, last = indices[0], indices[-1]
            return f"{axis}{first}" + (f"-{axis}{last}" if last != first else "")

        return f"{span('y', self.rows)}_{span('x', self.columns)}"


def parse_region_spec(spec: str) -> RegionRange:
    """The rows and columns of one spec: ``y2_x3``, ``y12_x3-x7``, ``y5-y9_x2`` or
    ``y5-y9_x2-x4``; a malformed, over-long or backwards spec is a RegionIdError."""
    match = _SELECTION_PATTERN.match(spec.strip())
    if match is None:
        raise RegionIdError(
            f"region selection {_shown(spec)} is malformed; expected an id like 'y2_x3', "
            "a range like 'y2_x3-x5' or 'y1-y3_x2', or 'all'"
        )
    y0, y1, x0, x1 = (
        None if digits is None else _index(digits, spec, "region selection")
        for digits in match.groups()
    )
    y1 = y0 if y1 is None else y1
    x1 = x0 if x1 is None else x1
    if y1 < y0 or x1 < x0:
        raise RegionIdError(
            f"region range {_shown(spec)} runs backwards; write the smaller index first"
        )
    return RegionRange(spec, range(y0, y1 + 1), range(x0, x1 + 1))


def expand_region_spec(spec: str) -> list[str]:
    """Ids named by one spec (see :func:`parse_region_spec`), unchecked against any grid:
    :func:`select_regions` checks a range against the catalog before expanding it."""
    return parse_region_spec(spec).ids()


def region_extent(ids: Iterable[str]) -> RegionRange | None:
    """The rows and columns spanned by ``ids`` (None: no ids)."""
    indices = [validate_region_id(rid) for rid in ids]
    if not indices:
        return None
    rows = [iy for iy, _ in indices]
    columns = [ix for _, ix in indices]
    return RegionRange("", range(min(rows), max(rows) + 1), range(min(columns), max(columns) + 1))


def select_regions(specs: Sequence[str], valid_ids: Sequence[str]) -> RegionSelection:
    """Parse ids, ranges and ``all`` against the valid-id list of the input catalog.

    A range reaching beyond the rows and columns of the catalog's regions is refused before
    it is expanded (it names no region with data there), so no range can cost more memory
    than the catalog's own extent; single ids outside it are reported invalid by name."""
    if not specs:
        raise RegionIdError("the region selection is empty; give region ids, ranges or 'all'")
    valid_set = set(valid_ids)
    extent = region_extent(valid_ids)
    provided: list[str] = []
    for spec in specs:
        if spec.strip() == "all":
            provided += list(valid_ids)
            continue
        chosen = parse_region_spec(spec)
        if chosen.is_range and (extent is None or not chosen.within(extent)):
            grid = f"the regions with data span {extent}" if extent else "no region has data"
            raise RegionIdError(
                f"region range {_shown(spec)} reaches beyond the region grid: {grid}; "
                "expected a range inside it (`ocr regions select all` lists the regions)"
            )
        provided += chosen.ids()
    provided = sort_region_ids(provided)
    return RegionSelection(
        provided=provided,
        valid=[r for r in provided if r in valid_set],
        invalid=[r for r in provided if r not in valid_set],
    )
