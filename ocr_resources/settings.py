"""Typed configuration read from the environment and one env file per environment.

Building a settings object reads the env file and nothing else: no dataset, bucket or network
is touched until an asset asks the storage resource for data.
"""

from __future__ import annotations

import atexit
import os
import re
from collections.abc import Mapping
from contextlib import ExitStack
from importlib import resources
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import (
    AliasChoices,
    Field,
    TypeAdapter,
    ValidationError,
    field_validator,
    model_validator,
)
from pydantic_settings import BaseSettings, SettingsConfigDict

Environment = Literal["local", "qa", "staging", "production"]
RegionCatalog = Literal["sample", "conus"]
# The fire model's numerics (ocr_science.variants.VARIANTS, in this order):
# "published" reproduces the published OCR data; "corrected" is opt-in and written elsewhere.
ModelVariantName = Literal["published", "corrected"]
DEFAULT_MODEL_VARIANT: ModelVariantName = "published"

ENV_FILE_VARIABLE = "OCR_ENV_FILE"
# in a checkout, `envs/` links to the packaged env files, so both name the same file
CHECKOUT_ENV_FILE = Path("envs") / "local.env"
# Semantic version (semver.org), with an optional leading "v" as in release tags.
SEMVER = re.compile(
    r"^v?(?P<release>(0|[1-9]\d*)\.(0|[1-9]\d*)\.(0|[1-9]\d*)"
    r"(?P<pre>-[0-9A-Za-z-]+(?:\.[0-9A-Za-z-]+)*)?)"
    r"(?P<build>\+[0-9A-Za-z-]+(?:\.[0-9A-Za-z-]+)*)?$"
)


def semantic_version(text: str) -> str:
    """``text`` as a release's semantic version (semver.org) without a tag's leading "v".

    It names the version's outputs (``v<version>`` path segments), so build metadata is
    refused: semver says it does not identify a release (``1.2.0+a`` and ``1.2.0+b`` are the
    same version), and two builds must not become two sets of outputs."""
    match = SEMVER.fullmatch(text)
    if match is None:
        raise ValueError(
            f"{text!r} is not a semantic version; expected MAJOR.MINOR.PATCH such as 1.2.0"
        )
    if match["build"]:
        release = match["release"]
        alternative = "" if match["pre"] else f" or a pre-release such as {release}-rc.1"
        raise ValueError(
            f"{text!r} carries build metadata {match['build']!r}, which semver says does not "
            f"identify a release, so it cannot name a version's outputs; expected {release}"
            f"{alternative}"
        )
    return text.removeprefix("v")


class OcrSettings(BaseSettings):
    """One environment's configuration (``OCR_*`` variables)."""

    model_config = SettingsConfigDict(
        env_prefix="OCR_", extra="ignore", frozen=True, populate_by_name=True
    )

    environment: Environment = "local"
    storage_root: str = Field(description="local folder or s3://bucket/prefix")
    # where the inputs are, in the published catalog's layout (default: "<storage root>-inputs");
    # never the output root or under it
    input_root: str | None = Field(default=None, description="local folder or s3://bucket[/prefix]")
    # per catalog name: {"uri": ..., "container": "icechunk"|"zarr"|"auto"|"geoparquet",
    # optionally one of "branch", "tag", "snapshot"}
    input_overrides: dict[str, dict[str, str]] = Field(default_factory=dict)
    version: str | None = Field(default=None, description="production only: semantic version")
    process_retries: int = Field(default=2, ge=0, le=10)
    # regions per region run (and so per cluster): a backfill or deploy of N regions makes
    # ⌈N / regions_per_run⌉ runs per contiguous stretch of region ids
    regions_per_run: int = Field(default=8, ge=1, le=1000)
    region_catalog: RegionCatalog = "sample"
    model_variant: ModelVariantName = DEFAULT_MODEL_VARIANT
    sample_seed: int = Field(default=20250, ge=0)  # NumPy's generators take no negative seed
    s3_endpoint_url: str | None = Field(default=None, description="S3-compatible endpoint")
    # Dagster instance storage: sqlite in the instance home, or postgres at $OCR_DAGSTER_PG_URL
    dagster_storage: Literal["sqlite", "postgres"] = "sqlite"
    # the one limit on clusters at once: the instance's pool "ocr_clusters" (every heavy step,
    # whoever launched it), set from here by ocr deploy and ocr dev
    cluster_limit: int = Field(default=2, ge=1, le=64)
    # where each environment's Dagster instance home lives (default: .dagster/ in the current
    # folder)
    dagster_home_root: str | None = None
    # multiprocess: downstream steps in parallel processes; in_process: one process (small hosts)
    dagster_executor: Literal["multiprocess", "in_process"] = "multiprocess"
    lock_stale_seconds: int = Field(default=900, ge=30)
    # compute (docs/design.md §8)
    compute_backend: Literal["local", "coiled", "dask"] = "local"
    local_workers: int = 0
    # the local cluster's Dask dashboard (its link is logged); off, a local step starts faster
    local_dashboard: bool = False
    # threads of one step's compiled loops (spreading, blur, warp, pyramid); default: every CPU
    # the process may use. Lower it when several steps or fields share a machine.
    threads: int | None = Field(default=None, ge=1, le=1024)
    dask_scheduler_address: str | None = None
    dask_cluster: dict[str, dict[str, Any]] | None = None
    coiled_region: str = "us-west-2"
    # workers of every step's Coiled cluster; unset: the profile its asset declares
    coiled_workers: int | None = Field(default=None, ge=1, le=1000)
    # the Coiled software environment the workers run (CI builds one per commit and names it in
    # COILED_SOFTWARE_ENV_NAME); unset: Coiled's package sync of the local environment
    coiled_software: str | None = Field(
        default=None,
        validation_alias=AliasChoices("OCR_COILED_SOFTWARE", "COILED_SOFTWARE_ENV_NAME"),
    )
    compute_overrides: dict[str, dict[str, Any]] = Field(default_factory=dict)
    env_file: str | None = None

    @field_validator("storage_root")
    @classmethod
    def _storage_root_given(cls, root: str) -> str:
        if not root.strip():  # else a relative "" would silently become the env file's folder
            raise ValueError("is empty; expected a local folder or s3://bucket/prefix")
        return root

    @model_validator(mode="after")
    def _check_version(self) -> OcrSettings:
        if self.environment == "production":
            if not self.version:
                raise ValueError("OCR_VERSION is required for production (e.g. 1.2.0)")
            try:
                version = semantic_version(self.version)
            except ValueError as exc:
                raise ValueError(f"OCR_VERSION {exc}") from None
            object.__setattr__(self, "version", version)
        elif self.version:
            raise ValueError(
                f"OCR_VERSION is set to {self.version!r} for environment "
                f"{self.environment!r}; versions apply to production only, unset it"
            )
        return self


def check_setting(name: str, value: Any) -> Any:
    """``value`` validated as setting ``name`` alone, by the model's own field (type and
    bounds), so an option that overrides a setting is held to exactly the same rule as its
    ``OCR_*`` variable; raises ValueError with pydantic's reason."""
    field = OcrSettings.model_fields[name]
    try:
        return TypeAdapter(Annotated[field.annotation, field]).validate_python(value)
    except ValidationError as exc:
        reason = "; ".join(str(error["msg"]) for error in exc.errors())
        raise ValueError(f"{value!r}: {reason} (the bounds of OCR_{name.upper()})") from None


# packaged files extracted to disk (only when the package is zipped) live until the process ends
_EXTRACTED = ExitStack()
atexit.register(_EXTRACTED.close)


def packaged_file(*parts: str) -> Path:
    """A file shipped inside ``ocr_resources`` (``envs/local.env``, ``dagster.yaml``) as a path
    on disk, found from the installed package so no checkout is needed."""
    resource = resources.files("ocr_resources").joinpath(*parts)
    return _EXTRACTED.enter_context(resources.as_file(resource))


def default_env_file() -> Path:
    """``$OCR_ENV_FILE``, else ``envs/local.env`` under the current folder (a checkout), else the
    packaged ``local.env``."""
    if chosen := os.environ.get(ENV_FILE_VARIABLE):
        return Path(chosen)
    if CHECKOUT_ENV_FILE.is_file():
        return CHECKOUT_ENV_FILE
    return packaged_file("envs", "local.env")


def resolve_env_file(env_file: str | Path | None = None) -> Path:
    """The env file to use (the argument, else :func:`default_env_file`) as an absolute path.

    Symlinks are kept, not resolved: a relative storage root is relative to the folder the file
    was named in, so ``envs/local.env`` (a link into the package) still means the checkout."""
    chosen = Path(env_file) if env_file else default_env_file()
    if chosen.is_dir():
        raise IsADirectoryError(f"env file {str(chosen)!r} is a directory; expected a file")
    if not chosen.exists():
        raise FileNotFoundError(f"env file {str(chosen)!r} does not exist")
    if not chosen.is_file():  # a device, socket or pipe, which the env-file reader skips
        raise OSError(f"env file {str(chosen)!r} is not a regular file; expected a file")
    return chosen.absolute()


def _relative_root_base(env_file: Path) -> Path:
    """The folder a relative local storage root is taken from: the env file's own, except
    for the packaged env files (installed, no checkout), which mean the current folder's as if
    they were ``./envs/<name>``: data never goes inside the installed package."""
    packaged = Path(str(resources.files("ocr_resources").joinpath("envs"))).absolute()
    return Path.cwd() / "envs" if env_file.parent == packaged else env_file.parent


class SettingsFileError(ValueError):
    """An env file that cannot be the environment's settings; the message names the file,
    the line or key, and what was expected."""


#: ``OCR_`` variables of the project that are not settings, and so never belong in an env file
NOT_SETTINGS = ("OCR_ENV_FILE", "OCR_DAGSTER_STORAGE_DIR", "OCR_DAGSTER_PG_URL")
# how like a setting's name an environment variable's must be to be taken for a misspelling
# (difflib's ratio: OCR_PROCES_RETRIES is 0.97 of OCR_PROCESS_RETRIES)
NEAR_MISS = 0.85


def check_env_file(path: Path) -> None:
    """Refuse an env file that is not UTF-8 text (naming the line and byte) or that sets an
    ``OCR_`` name which is no setting — a misspelt one would otherwise be ignored silently —
    naming the closest setting."""
    import difflib

    from dotenv import dotenv_values

    data = path.read_bytes()
    try:
        data.decode("utf-8")
    except UnicodeDecodeError as exc:
        line = data[: exc.start].count(b"\n") + 1
        raise SettingsFileError(
            f"env file {str(path)!r} is not UTF-8 text: byte 0x{data[exc.start]:02x} on line "
            f"{line}; expected UTF-8 (save the file as UTF-8)"
        ) from None
    known = [f"OCR_{name.upper()}" for name in OcrSettings.model_fields]
    for key in dotenv_values(path):
        if not key.upper().startswith("OCR_") or key.upper() in known:
            continue
        if key.upper() in NOT_SETTINGS:
            why = "it is read from the process environment, never from an env file"
        else:
            close = difflib.get_close_matches(key.upper(), known, n=1)
            why = f"did you mean {close[0]}?" if close else "see docs/reference/settings.md"
        raise SettingsFileError(f"env file {str(path)!r}: {key} is not a setting; {why}")


def check_environment(environ: Mapping[str, str]) -> None:
    """Refuse an ``OCR_`` name in the process environment that is a near miss of a setting's
    (``OCR_PROCES_RETRIES``), which would otherwise be ignored silently; other ``OCR_`` names
    (another tool's) are none of the settings' business."""
    import difflib

    known = [f"OCR_{name.upper()}" for name in OcrSettings.model_fields]
    for key in environ:
        name = key.upper()
        if not name.startswith("OCR_") or name in known or name in NOT_SETTINGS:
            continue
        if close := difflib.get_close_matches(name, known, n=1, cutoff=NEAR_MISS):
            raise SettingsFileError(
                f"environment variable {key} is not a setting; did you mean {close[0]}?"
            )


def load_settings(env_file: str | Path | None = None, **overrides: Any) -> OcrSettings:
    """Settings from the env file (process environment wins, ``overrides`` win over both);
    a relative local storage root is taken relative to the env file's folder. An env file
    that is not UTF-8 or names no setting is refused (:func:`check_env_file`)."""
    path = resolve_env_file(env_file)
    check_env_file(path)
    settings = OcrSettings(_env_file=path, env_file=str(path), **overrides)

    def absolute(location: str | None) -> str | None:
        if location is None or "://" in location or Path(location).is_absolute():
            return location
        # lexically, like the path the user wrote: "envs/../.ocr-data" is the checkout's folder
        return os.path.normpath(_relative_root_base(path) / location)

    return settings.model_copy(
        update={
            "storage_root": absolute(settings.storage_root),
            "input_root": absolute(settings.input_root),
            "input_overrides": {
                name: {**o, "uri": absolute(o.get("uri")) or ""}
                for name, o in settings.input_overrides.items()
            },
        }
    )
