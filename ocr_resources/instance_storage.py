"""The instance storage named by the top-level ``dagster.yaml``: one file for every environment.

Dagster's ``storage`` setting is a one-of (``sqlite`` or ``postgres``) and an ``env:`` reference
has no default, so one file cannot switch a shared environment to PostgreSQL by itself. These
two pluggable classes (Dagster's ``custom`` storage and ``compute_logs`` interface) read the
environment's folder and PostgreSQL URL from the variables the project's doors set
(:data:`STORAGE_DIR_VARIABLE`, :data:`POSTGRES_URL_VARIABLE`) and keep today's layout of
``.dagster/<env>/``, so existing instances stay readable.
"""

from __future__ import annotations

import os
from typing import Any

from dagster._config import StringSource
from dagster._core.storage.base_storage import DagsterStorage
from dagster._core.storage.local_compute_log_manager import LocalComputeLogManager
from dagster._core.storage.sqlite_storage import DagsterSqliteStorage
from dagster._serdes import ConfigurableClass, ConfigurableClassData

STORAGE_DIR_VARIABLE = "OCR_DAGSTER_STORAGE_DIR"
POSTGRES_URL_VARIABLE = "OCR_DAGSTER_PG_URL"


class EnvironmentStorage(DagsterStorage, ConfigurableClass):
    """Run history, event log and schedules of one environment: in PostgreSQL when
    ``postgres_url`` is not empty (a shared environment), else SQLite under ``base_dir``.
    Never instantiated itself: it builds Dagster's own storage of the chosen kind."""

    @classmethod
    def config_type(cls) -> dict[str, Any]:
        return {"base_dir": StringSource, "postgres_url": StringSource}

    @classmethod
    def from_config_value(  # type: ignore[override]
        cls, inst_data: ConfigurableClassData, config_value: dict[str, str]
    ) -> DagsterStorage:
        if config_value["postgres_url"]:
            from dagster_postgres import DagsterPostgresStorage

            return DagsterPostgresStorage.from_config_value(
                inst_data, {"postgres_url": config_value["postgres_url"]}
            )
        if not config_value["base_dir"]:
            raise ValueError(
                f"{STORAGE_DIR_VARIABLE} is empty: expected the environment's instance folder "
                "(.dagster/<env>), set by `ocr dev` / `ocr deploy`"
            )
        return DagsterSqliteStorage.from_local(config_value["base_dir"], inst_data=inst_data)


class EnvironmentComputeLogs(LocalComputeLogManager):
    """Step stdout/stderr under ``<base_dir>/storage``: where Dagster puts them when the
    instance home is the environment's folder, so older runs' logs stay readable."""

    @classmethod
    def config_type(cls) -> dict[str, Any]:
        return {"base_dir": StringSource}

    @classmethod
    def from_config_value(  # type: ignore[override]
        cls, inst_data: ConfigurableClassData | None, config_value: dict[str, str]
    ) -> EnvironmentComputeLogs:
        return cls(os.path.join(config_value["base_dir"], "storage"), inst_data=inst_data)
