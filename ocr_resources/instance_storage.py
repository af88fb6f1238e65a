"""The instance storage named by the top-level ``dagster.yaml``: one file for every environment.

Dagster's ``storage`` setting is a one-of (``sqlite`` or ``postgres``) and an ``env:`` reference
has no default (so ``dg check defs`` would fail where the variable is unset), so one file can
neither switch a shared environment to PostgreSQL nor fall back to the local environment.
These pluggable classes (Dagster's ``custom`` storage, ``local_artifact_storage`` and
``compute_logs`` interfaces) take the environment's folder and PostgreSQL URL from their
``config`` when given (the copy ``ocr deploy`` writes into the folder), else from the variables
the project's doors set (:data:`STORAGE_DIR_VARIABLE`, :data:`POSTGRES_URL_VARIABLE`), else the
local environment (:data:`DEFAULT_STORAGE_DIR`, SQLite). The layout in the folder is Dagster's
own (``history/``, ``schedules/``, ``storage/``), so existing instances stay readable.

The base classes come from Dagster submodules: this is the plug-in interface Dagster documents
for instance storage (its "Internals" API page; ``dagster.yaml`` names such classes by
``module``/``class``), and it has no top-level import path (``dagster.core``, which older
documentation shows, is gone in 1.13). Pinned with the Dagster family; tests cover each class.
"""

from __future__ import annotations

import os
from typing import Any

from dagster import Field
from dagster._config import StringSource
from dagster._core.storage.base_storage import DagsterStorage
from dagster._core.storage.local_compute_log_manager import LocalComputeLogManager
from dagster._core.storage.root import LocalArtifactStorage
from dagster._core.storage.sqlite_storage import DagsterSqliteStorage
from dagster._serdes import ConfigurableClass, ConfigurableClassData

STORAGE_DIR_VARIABLE = "OCR_DAGSTER_STORAGE_DIR"
POSTGRES_URL_VARIABLE = "OCR_DAGSTER_PG_URL"
DEFAULT_STORAGE_DIR = os.path.join(".dagster", "local")  # `make run`'s, in the current folder

FOLDER_CONFIG = {"base_dir": Field(StringSource, is_required=False)}


def storage_dir(config: dict[str, str]) -> str:
    """The environment's folder: ``base_dir`` if configured, else ``$OCR_DAGSTER_STORAGE_DIR``,
    else the local environment's ``.dagster/local`` (absolute, so every process agrees)."""
    folder = config.get("base_dir") or os.environ.get(STORAGE_DIR_VARIABLE) or DEFAULT_STORAGE_DIR
    return os.path.abspath(folder)


class EnvironmentStorage(DagsterStorage, ConfigurableClass):
    """Run history, event log and schedules of one environment: in PostgreSQL when its URL
    (``postgres_url``, else ``$OCR_DAGSTER_PG_URL``) is not empty, else SQLite in its folder.
    Never instantiated itself: it builds Dagster's own storage of the chosen kind."""

    @classmethod
    def config_type(cls) -> dict[str, Any]:
        return {**FOLDER_CONFIG, "postgres_url": Field(StringSource, is_required=False)}

    @classmethod
    def from_config_value(  # type: ignore[override]
        cls, inst_data: ConfigurableClassData, config_value: dict[str, str]
    ) -> DagsterStorage:
        url = config_value.get("postgres_url", os.environ.get(POSTGRES_URL_VARIABLE, ""))
        if url:
            from dagster_postgres import DagsterPostgresStorage

            return DagsterPostgresStorage.from_config_value(inst_data, {"postgres_url": url})
        return DagsterSqliteStorage.from_local(storage_dir(config_value), inst_data=inst_data)


class _InEnvironmentFolder:
    """A Dagster store built on a folder: the environment's, or ``subfolder`` of it."""

    subfolder: tuple[str, ...] = ()

    @classmethod
    def config_type(cls) -> dict[str, Any]:
        return FOLDER_CONFIG

    @classmethod
    def from_config_value(cls, inst_data: ConfigurableClassData | None, config_value: dict):
        return cls(os.path.join(storage_dir(config_value), *cls.subfolder), inst_data=inst_data)


class EnvironmentArtifacts(_InEnvironmentFolder, LocalArtifactStorage):
    """Dagster's local artifacts (definitions state) in the environment's folder."""


class EnvironmentComputeLogs(_InEnvironmentFolder, LocalComputeLogManager):
    """Step stdout/stderr under ``<folder>/storage``: where Dagster put them when the instance
    home was the environment's folder, so older runs' logs stay readable."""

    subfolder = ("storage",)
