"""Every path of docs/design.md §3, built in one place from (root, environment, version)."""

from __future__ import annotations

import dataclasses
import os
import posixpath
import re
from dataclasses import dataclass, field
from typing import get_args

from ocr_resources.settings import DEFAULT_MODEL_VARIANT, ModelVariantName, semantic_version
from ocr_science.fire_model import YEARS
from ocr_science.regions import validate_region_id
from ocr_science.statistics import CENSUS_LEVELS

LATLON = ("latitude", "longitude")
# An environment name becomes a path segment: a plain lowercase word, never "..", "/" or "".
ENVIRONMENT_NAME = re.compile(r"[a-z][a-z0-9_-]{0,31}")
# A PMTiles archive's name is a file name under pmtiles/: a plain lowercase word.
ARCHIVE_NAME = re.compile(r"[a-z][a-z0-9_]*")


# Containers an input can be in: a raster is an Icechunk repository or plain Zarr ("auto":
# Icechunk when a repository is at the prefix, else plain Zarr, as the published reader tries)
RASTER_CONTAINERS = ("auto", "icechunk", "zarr")
VECTOR_CONTAINERS = ("geoparquet",)
# GEOIDs of each census level (TIGER): a block's 15 digits may carry a suffix letter
# (TABBLOCKSUFX), the nation's is "US"
GEOID_PATTERNS: dict[str, str] = {
    "nation": "US",
    "states": r"\d{2}",
    "counties": r"\d{5}",
    "tracts": r"\d{11}",
    "blocks": r"\d{15}[A-Z]?",
}
# the analysis files' folder of a level where it is not the level's name (docs/published.md §4.5)
ANALYSIS_FOLDERS: dict[str, str] = {"blocks": "block"}
# census columns the pipeline uses, per level (TIGER carries more; they are ignored)
CENSUS_COLUMNS: dict[str, tuple[str, ...]] = {
    "nation": ("GEOID", "NAME"),
    "states": ("GEOID", "STUSPS", "NAME"),
    "counties": ("GEOID", "NAME"),
    "tracts": ("GEOID",),
    "blocks": ("GEOID",),
}
# the census as distributed (NAD83) or in WGS 84; never reprojected (they differ by ~1 m and
# the published pipeline joins on raw coordinates too)
CENSUS_CRS = ("EPSG:4269", "EPSG:4326")
# The published buildings' columns the pipeline reads, by the names it uses (the published
# reader's aliases, ocr/pipeline/process_region.py:17-31); the first name found is read
BUILDING_COLUMNS: dict[str, tuple[str, ...]] = {
    "GEOID": ("block_geoid", "GEOID"),
    "state": ("state_abbrev", "state"),
    "county": ("county_name", "county"),
}


@dataclass(frozen=True)
class CatalogEntry:
    """One input store of the published catalog (ocr/datasets.py at carbonplan/ocr 0a1b285):
    its place under the input root and what it holds."""

    asset: str  # the input's asset key
    catalog_path: str  # relative to the input root
    crs: tuple[str, ...]  # accepted CRSs (the first is the documented one)
    variables: tuple[str, ...] = ()  # rasters: data variables read, each with ``dims``
    dims: tuple[str, ...] = ()
    columns: tuple[str, ...] = ()  # GeoParquet: columns besides the geometry
    geoid_pattern: str | None = None
    # rasters: the documented range of the values (NaN = missing), checked in every chunk read
    value_range: tuple[float, float] | None = None


_TENSOR = "input/fire-risk/tensor"
_VECTOR = "input/fire-risk/vector"
_RILEY = f"{_TENSOR}/USFS/riley-et-al-2025"
_WIND = "conus404-ffwi-p99-wind-direction-distribution-30m-4326"
WIND_DIMS = (*LATLON, "wind_direction")
# documented value ranges of the rasters: burn probability and the wind's fractions of hours;
# conditional risk and risk to potential structures in percent (the outputs' VALUE_RANGES)
FRACTION = (0.0, 1.0)
PERCENT = (0.0, 100.0)

# Every input by its published catalog name: one table drives paths, checks and overrides.
INPUT_CATALOG: dict[str, CatalogEntry] = {
    **{
        f"riley-et-al-2025-{year}-270m-5070": CatalogEntry(
            "burn_probability",
            f"{_RILEY}/{year}-climate-run-270m-5070.icechunk",
            ("EPSG:5070",),
            ("BP",),
            ("y", "x"),
            value_range=FRACTION,
        )
        for year in YEARS
    },
    **{
        f"riley-et-al-2025-{year}-30m-4326": CatalogEntry(
            "burn_probability",
            f"{_RILEY}/{year}-climate-run-30m-4326.icechunk",
            ("EPSG:4326",),
            ("BP",),
            LATLON,
            value_range=FRACTION,
        )
        for year in YEARS
    },
    "scott-et-al-2024-30m-4326": CatalogEntry(
        "conditional_risk",
        f"{_TENSOR}/USFS/scott-et-al-2024/processed-30m-4326.icechunk",
        ("EPSG:4326",),
        ("CRPS", "RPS"),
        LATLON,
        value_range=PERCENT,
    ),
    _WIND: CatalogEntry(
        "wind_direction_distribution",
        f"{_TENSOR}/conus404-ffwi/fosberg-fire-weather-index-p99-wind-direction-distribution"
        "-30m-4326.icechunk",
        ("EPSG:4326",),
        ("wind_direction_distribution",),
        WIND_DIMS,
        value_range=FRACTION,  # of the hours, per direction
    ),
    "conus-overture-region-id-tagged-buildings": CatalogEntry(
        "buildings",
        f"{_VECTOR}/overture-maps/CONUS-overture-region-tagged-buildings-2025-09-24.0.parquet",
        ("EPSG:4326",),
        columns=tuple(BUILDING_COLUMNS),
        geoid_pattern=GEOID_PATTERNS["blocks"],
    ),
    **{
        f"us-census-{level}": CatalogEntry(
            "census_boundaries",
            f"{_VECTOR}/census-tiger/{level}/{level}.parquet",
            CENSUS_CRS,
            columns=CENSUS_COLUMNS[level],
            geoid_pattern=GEOID_PATTERNS[level],
        )
        for level in CENSUS_LEVELS
    },
}


@dataclass(frozen=True, kw_only=True)
class InputSpec(CatalogEntry):
    """One input store as this deployment reads it: its catalog entry, where it is (the
    catalog's place under the input root, or an override), in which container and at which
    Icechunk reference, so readers can refuse anything else by name before a step computes
    or writes."""

    name: str  # the published catalog name
    path: str  # URI (a local path or s3://bucket/key)
    container: str = "auto"
    # Icechunk: ("branch" | "tag" | "snapshot", value)
    reference: tuple[str, str] = ("branch", "main")

    @property
    def is_raster(self) -> bool:
        return bool(self.variables)


def _normalised(uri: str) -> str:
    """A location compared by path segments: ``s3://b/k`` or an absolute local path, with no
    trailing or doubled separators."""
    scheme, sep, rest = uri.partition("://")
    if sep:
        return f"{scheme}://{posixpath.normpath('/' + rest).lstrip('/')}"
    return os.path.normpath(os.path.abspath(uri))


def contains(outer: str, inner: str) -> bool:
    """Whether location ``inner`` is ``outer`` or lies under it."""
    outer, inner = _normalised(outer), _normalised(inner)
    return inner == outer or inner.startswith(outer.rstrip("/") + "/")


ICECHUNK_REFERENCES = ("branch", "tag", "snapshot")


def check_input_override(name: str, override: dict[str, str]) -> None:
    """One entry of ``OCR_INPUT_OVERRIDES``: a known catalog name, a URI, a container its
    kind can be in and at most one Icechunk reference; a ValueError naming what is wrong."""
    if name not in INPUT_CATALOG:
        raise ValueError(
            f"input override {name!r} names no input; expected one of {', '.join(INPUT_CATALOG)}"
        )
    entry = INPUT_CATALOG[name]
    containers = RASTER_CONTAINERS if entry.variables else VECTOR_CONTAINERS
    allowed = {"uri", "container", *ICECHUNK_REFERENCES}
    unknown = sorted(set(override) - allowed)
    if unknown:
        raise ValueError(
            f"input override {name!r} has unknown key(s) {unknown}; expected {sorted(allowed)}"
        )
    if not override.get("uri"):
        raise ValueError(f"input override {name!r} has no 'uri'; expected a path or s3:// URI")
    if override.get("container") not in containers:
        raise ValueError(
            f"input override {name!r} has container {override.get('container')!r}; expected "
            f"one of {', '.join(containers)}"
        )
    references = [k for k in ICECHUNK_REFERENCES if k in override]
    if len(references) > 1 or (references and override["container"] == "zarr"):
        raise ValueError(
            f"input override {name!r} gives {references}; expected at most one of branch, tag "
            "or snapshot, and only for an Icechunk (or auto) container"
        )


def _scoped_prefix(base: str) -> property:
    """A deployment-owned prefix: ``<root>/<base>/<env>[/v<version>][/<variant>]``."""
    return property(lambda self: self._scoped(base), doc=f"``{base}`` of this deployment")


def _under(prefix: str, relative: str) -> property:
    """An output at ``relative`` under one of the deployment's prefixes."""
    return property(lambda self: f"{getattr(self, prefix)}/{relative}", doc=f"``{relative}``")


@dataclass(frozen=True)
class StorageLayout:
    root: str
    environment: str
    version: str | None = None
    model_variant: str = DEFAULT_MODEL_VARIANT
    # where the inputs are (the published catalog's layout under it); None: "<root>-inputs"
    input_root: str | None = None
    # per catalog name: {"uri": ..., "container": ..., and one of "branch"/"tag"/"snapshot"}
    input_overrides: dict[str, dict[str, str]] = field(default_factory=dict)

    def __post_init__(self) -> None:
        """Names, versions and input locations are checked here, before any of them can
        become a path: an output root over an input is refused (a wipe must never reach
        one)."""
        for name, override in self.input_overrides.items():
            check_input_override(name, override)
        for spec in self.input_specs():
            if contains(self.root, spec.path):
                raise ValueError(
                    f"the output root {self.root} contains input {spec.name!r} at {spec.path}; "
                    "expected an output root apart from every input (set OCR_INPUT_ROOT or "
                    "OCR_STORAGE_ROOT so neither holds the other's data)"
                )
        if self.model_variant not in get_args(ModelVariantName):
            raise ValueError(
                f"model variant {self.model_variant!r} is unknown; expected one of "
                f"{', '.join(get_args(ModelVariantName))}"
            )
        if not ENVIRONMENT_NAME.fullmatch(self.environment):
            raise ValueError(
                f"environment {self.environment!r} is not a plain name; expected lowercase "
                "letters, digits, '-' or '_', e.g. 'qa'"
            )
        # a path segment: exactly the semantic version, as settings leave it (no leading "v")
        if self.version is not None and semantic_version(self.version) != self.version:
            raise ValueError(f"version {self.version!r} is not a semantic version like '1.2.3'")

    def _join(self, *parts: str) -> str:
        return "/".join([self.root.rstrip("/"), *parts])

    # deployment records (outside every environment prefix: a wipe never deletes them) ----
    @property
    def deployment_lock(self) -> str:
        """The lock of a running deployment to this environment."""
        return self._join("_deployments/locks", f"{self.environment}.json")

    @property
    def current_pointer(self) -> str:
        """Production's "current" pointer: which version a reader should use."""
        name = "-".join([self.environment, *filter(None, [self.variant_segment]), "current"])
        return self._join("output/fire-risk", f"{name}.json")

    @property
    def variant_segment(self) -> str | None:
        """The path segment of a non-default model variant: published and corrected numbers
        never share a prefix, so they can never mix."""
        return None if self.model_variant == DEFAULT_MODEL_VARIANT else self.model_variant

    def _scoped(self, base: str) -> str:
        """``base/<env>[/v<version>][/<variant>]``: the prefix a deployment owns."""
        parts = [f"v{self.version}"] if self.version else []
        if self.variant_segment:
            parts.append(self.variant_segment)
        return self._join(base, self.environment, *parts)

    # inputs -------------------------------------------------------------------------
    @property
    def inputs_root(self) -> str:
        """The input root (``OCR_INPUT_ROOT``), by default the output root's sibling."""
        return (self.input_root or f"{self.root.rstrip('/')}-inputs").rstrip("/")

    def input_spec_named(self, name: str) -> InputSpec:
        """The input of one catalog name: at its catalog path under the input root, or where
        its override says."""
        entry = dataclasses.asdict(INPUT_CATALOG[name])
        override = self.input_overrides.get(name)
        if override is None:
            path = f"{self.inputs_root}/{entry['catalog_path']}"
            container = "auto" if entry["variables"] else "geoparquet"
            return InputSpec(**entry, name=name, path=path, container=container)
        reference = next(
            ((k, override[k]) for k in ICECHUNK_REFERENCES if k in override), ("branch", "main")
        )
        return InputSpec(
            **entry,
            name=name,
            path=override["uri"],
            container=override["container"],
            reference=reference,
        )

    def bp_270m(self, year: int) -> str:
        return self.input_spec_named(f"riley-et-al-2025-{year}-270m-5070").path

    def bp_30m(self, year: int) -> str:
        return self.input_spec_named(f"riley-et-al-2025-{year}-30m-4326").path

    @property
    def crps_rps(self) -> str:
        return self.input_spec_named("scott-et-al-2024-30m-4326").path

    @property
    def wind(self) -> str:
        return self.input_spec_named(_WIND).path

    @property
    def buildings(self) -> str:
        return self.input_spec_named("conus-overture-region-id-tagged-buildings").path

    def census(self, level: str) -> str:
        if level not in CENSUS_LEVELS:
            raise ValueError(f"census level {level!r} is not one of {CENSUS_LEVELS}")
        return self.input_spec_named(f"us-census-{level}").path

    def input_specs(self) -> list[InputSpec]:
        """Every input of the catalog, where this deployment reads it."""
        return [self.input_spec_named(name) for name in INPUT_CATALOG]

    def input_spec(self, path: str) -> InputSpec:
        """The spec of the input at ``path`` (one of :meth:`input_specs`)."""
        for spec in self.input_specs():
            if spec.path == path:
                return spec
        raise ValueError(f"{path} is not the location of an input of the catalog")

    def input_paths(self) -> list[str]:
        return [spec.path for spec in self.input_specs()]

    # outputs (environment-scoped) ----------------------------------------------------
    raster_prefix = _scoped_prefix("output/fire-risk/tensor")
    intermediate_prefix = _scoped_prefix("intermediate/fire-risk/vector")
    vector_prefix = _scoped_prefix("output/fire-risk/vector")
    pyramid_prefix = _scoped_prefix("output/fire-risk/pyramid")

    def environment_prefixes(self) -> list[str]:
        """Exactly what a wipe of this environment may delete."""
        return [
            self.raster_prefix,
            self.intermediate_prefix,
            self.vector_prefix,
            self.pyramid_prefix,
        ]

    raster_store = _under("raster_prefix", "ocr.icechunk")

    region_buildings_dir = _under("intermediate_prefix", "geoparquet-regions")

    def region_buildings(self, region_id: str) -> str:
        validate_region_id(region_id)
        return f"{self.region_buildings_dir}/{region_id}.parquet"

    def region_summary_stats(self, level: str) -> str:
        return f"{self.intermediate_prefix}/region-summary-stats/{level}_summary_stats.parquet"

    consolidated_buildings = _under("vector_prefix", "geoparquet/consolidated-buildings.parquet")

    partitioned_buildings = _under("vector_prefix", "geoparquet/buildings.parquet")

    def region_analysis(self, level: str, ext: str) -> str:
        """``region-analysis/<folder>/stats.<ext>``: the folder is the level's, except blocks'
        (``block``, singular, as published; its public URLs say so)."""
        folder = ANALYSIS_FOLDERS.get(level, level)
        return f"{self.vector_prefix}/region-analysis/{folder}/stats.{ext}"

    def pmtiles(self, name: str) -> str:
        """``pmtiles/<name>.pmtiles``: the archive names are the tilesets' (``TILESETS``)."""
        if not ARCHIVE_NAME.fullmatch(name):
            raise ValueError(f"pmtiles name {name!r} is not a lowercase word (a-z, 0-9, _)")
        return f"{self.vector_prefix}/pmtiles/{name}.pmtiles"

    pyramid = _under("pyramid_prefix", "pyramid.zarr")
