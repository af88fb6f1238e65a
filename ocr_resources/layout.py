"""Every path of DESIGN §3, built in one place from (root, environment, version)."""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import get_args

from ocr_assets.science.fire_model import YEARS
from ocr_assets.science.regions import validate_region_id
from ocr_assets.science.statistics import CENSUS_LEVELS, unit_geoid_length
from ocr_resources.settings import DEFAULT_MODEL_VARIANT, ModelVariantName, semantic_version

PMTILES_NAMES: tuple[str, ...] = ("buildings", "building_centroids", "regions")

_INPUT = "input/fire-risk"
LATLON = ("latitude", "longitude")
# An environment name becomes a path segment: a plain lowercase word, never "..", "/" or "".
ENVIRONMENT_NAME = re.compile(r"[a-z][a-z0-9_-]{0,31}")


@dataclass(frozen=True)
class InputSpec:
    """What DESIGN §3 says one input dataset is, so readers can refuse anything else by name
    before a step computes or writes."""

    asset: str  # the input's asset key (DESIGN §2), used to name it in errors
    path: str
    crs: str
    variables: tuple[str, ...] = ()  # Zarr: data variables, each with ``dims``
    dims: tuple[str, ...] = ()
    columns: tuple[str, ...] = ()  # GeoParquet: columns besides the geometry
    geoid_length: int | None = None

    @property
    def is_raster(self) -> bool:
        return bool(self.variables)


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

    def __post_init__(self) -> None:
        """Names and versions are checked here, before any of them can become a path."""
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
    def bp_270m(self, year: int) -> str:
        return self._join(_INPUT, f"tensor/riley-2025/bp_{year}_270m_5070.zarr")

    def bp_30m(self, year: int) -> str:
        return self._join(_INPUT, f"tensor/riley-2025/bp_{year}_30m_4326.zarr")

    @property
    def crps_rps(self) -> str:
        return self._join(_INPUT, "tensor/scott-2024/crps_rps_30m_4326.zarr")

    @property
    def wind(self) -> str:
        return self._join(_INPUT, "tensor/conus404/wind_direction_distribution_30m_4326.zarr")

    @property
    def buildings(self) -> str:
        return self._join(_INPUT, "vector/buildings/buildings.parquet")

    def census(self, level: str) -> str:
        if level not in CENSUS_LEVELS:
            raise ValueError(f"census level {level!r} is not one of {CENSUS_LEVELS}")
        return self._join(_INPUT, f"vector/census/{level}.parquet")

    def input_specs(self) -> list[InputSpec]:
        """Every input with its documented format (DESIGN §3)."""
        wind_dims = (*LATLON, "wind_direction")
        return [
            *(
                InputSpec("burn_probability", self.bp_270m(y), "EPSG:5070", ("BP",), ("y", "x"))
                for y in YEARS
            ),
            *(
                InputSpec("burn_probability", self.bp_30m(y), "EPSG:4326", ("BP",), LATLON)
                for y in YEARS
            ),
            InputSpec("conditional_risk", self.crps_rps, "EPSG:4326", ("CRPS", "RPS"), LATLON),
            InputSpec(
                "wind_direction_distribution",
                self.wind,
                "EPSG:4326",
                ("wind_direction_distribution",),
                wind_dims,
            ),
            InputSpec(
                "buildings",
                self.buildings,
                "EPSG:4326",
                columns=("GEOID", "state", "county"),
                geoid_length=unit_geoid_length("blocks"),
            ),
            *(
                InputSpec(
                    "census_boundaries",
                    self.census(lv),
                    "EPSG:4326",
                    columns=("GEOID", "NAME", *(("STUSPS",) if lv == "states" else ())),
                    geoid_length=unit_geoid_length(lv),
                )
                for lv in CENSUS_LEVELS
            ),
        ]

    def input_spec(self, path: str) -> InputSpec:
        """The spec of the input at ``path`` (one of :meth:`input_specs`)."""
        for spec in self.input_specs():
            if spec.path == path:
                return spec
        raise ValueError(f"{path} is not an input path of DESIGN §3")

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

    raster_store = _under("raster_prefix", "risk.zarr")

    region_buildings_dir = _under("intermediate_prefix", "geoparquet-regions")

    def region_buildings(self, region_id: str) -> str:
        validate_region_id(region_id)
        return f"{self.region_buildings_dir}/{region_id}.parquet"

    def region_summary_stats(self, level: str) -> str:
        return f"{self.intermediate_prefix}/region-summary-stats/{level}_summary_stats.parquet"

    consolidated_buildings = _under("vector_prefix", "geoparquet/consolidated-buildings.parquet")

    partitioned_buildings = _under("vector_prefix", "geoparquet/buildings.parquet")

    def region_analysis(self, level: str, ext: str) -> str:
        return f"{self.vector_prefix}/region-analysis/{level}/stats.{ext}"

    def pmtiles(self, name: str) -> str:
        if name not in PMTILES_NAMES:
            raise ValueError(f"pmtiles name {name!r} is not one of {PMTILES_NAMES}")
        return f"{self.vector_prefix}/pmtiles/{name}.pmtiles"

    pyramid = _under("pyramid_prefix", "pyramid.zarr")
