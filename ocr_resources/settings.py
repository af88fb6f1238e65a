"""Typed configuration read from the environment and one env file per environment.

Building a settings object reads the env file and nothing else: no dataset, bucket or network
is touched until an asset asks the storage resource for data.
"""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Any, Literal

from pydantic import Field, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

Environment = Literal["local", "qa", "staging", "production"]
RegionCatalog = Literal["sample", "conus"]
# The fire model's numerics (ocr_assets.science.variants.VARIANTS, in this order):
# "published" reproduces the published OCR data; "corrected" is opt-in and written elsewhere.
ModelVariantName = Literal["published", "corrected"]
DEFAULT_MODEL_VARIANT: ModelVariantName = "published"

PROJECT_ROOT = Path(__file__).resolve().parents[1]
ENV_DIR = PROJECT_ROOT / "envs"
DEFAULT_ENV_FILE = ENV_DIR / "local.env"
# Semantic version (semver.org), with an optional leading "v" as in release tags.
SEMVER = re.compile(
    r"^v?(0|[1-9]\d*)\.(0|[1-9]\d*)\.(0|[1-9]\d*)"
    r"(?:-[0-9A-Za-z-]+(?:\.[0-9A-Za-z-]+)*)?(?:\+[0-9A-Za-z-]+(?:\.[0-9A-Za-z-]+)*)?$"
)


class OcrSettings(BaseSettings):
    """One environment's configuration (``OCR_*`` variables)."""

    model_config = SettingsConfigDict(env_prefix="OCR_", extra="ignore", frozen=True)

    environment: Environment = "local"
    storage_root: str = Field(description="local folder or s3://bucket/prefix")
    version: str | None = Field(default=None, description="production only: semantic version")
    process_retries: int = Field(default=2, ge=0, le=10)
    region_catalog: RegionCatalog = "sample"
    model_variant: ModelVariantName = DEFAULT_MODEL_VARIANT
    sample_seed: int = 20250
    s3_endpoint_url: str | None = Field(default=None, description="S3-compatible endpoint")
    # Dagster instance storage: sqlite in the instance home, or postgres at $OCR_DAGSTER_PG_URL
    dagster_storage: Literal["sqlite", "postgres"] = "sqlite"
    deploy_parallel: int = Field(default=2, ge=1, le=64)
    # where each environment's Dagster instance home lives (default: .dagster/ in the checkout)
    dagster_home_root: str | None = None
    # multiprocess: downstream steps in parallel processes; in_process: one process (small hosts)
    dagster_executor: Literal["multiprocess", "in_process"] = "multiprocess"
    lock_stale_seconds: int = Field(default=900, ge=30)
    # compute (DESIGN §8)
    compute_backend: Literal["local", "coiled", "dask"] = "local"
    local_workers: int = 0
    # threads of one step's compiled loops (spreading, blur, warp, pyramid); default: every CPU
    # the process may use. Lower it when several steps or fields share a machine.
    threads: int | None = Field(default=None, ge=1, le=1024)
    dask_scheduler_address: str | None = None
    dask_cluster: dict[str, dict[str, Any]] | None = None
    coiled_region: str = "us-west-2"
    coiled_workers: int = 1
    compute_overrides: dict[str, dict[str, Any]] = Field(default_factory=dict)
    env_file: str | None = None

    @model_validator(mode="after")
    def _check_version(self) -> OcrSettings:
        if self.environment == "production":
            if not self.version:
                raise ValueError("OCR_VERSION is required for production (e.g. 1.2.0)")
            if not SEMVER.match(self.version):
                raise ValueError(
                    f"OCR_VERSION {self.version!r} is not a semantic version; "
                    "expected MAJOR.MINOR.PATCH such as 1.2.0"
                )
            object.__setattr__(self, "version", self.version.removeprefix("v"))
        elif self.version:
            raise ValueError(
                f"OCR_VERSION is set to {self.version!r} for environment "
                f"{self.environment!r}; versions apply to production only, unset it"
            )
        return self


def resolve_env_file(env_file: str | Path | None = None) -> Path:
    """The env file to use: the argument, else ``$OCR_ENV_FILE``, else ``envs/local.env``."""
    chosen = Path(env_file or os.environ.get("OCR_ENV_FILE") or DEFAULT_ENV_FILE)
    if not chosen.is_file():
        raise FileNotFoundError(f"env file {str(chosen)!r} does not exist")
    return chosen.resolve()


def load_settings(env_file: str | Path | None = None, **overrides: Any) -> OcrSettings:
    """Settings from the env file (process environment wins, ``overrides`` win over both);
    a relative local storage root is taken relative to the env file's folder."""
    path = resolve_env_file(env_file)
    settings = OcrSettings(_env_file=path, env_file=str(path), **overrides)
    root = settings.storage_root
    if "://" not in root and not Path(root).is_absolute():
        root = str((path.parent / root).resolve())
        settings = settings.model_copy(update={"storage_root": root})
    return settings
