"""Where a run's Dagster event log goes besides the instance: a file per deployment, so the
console shows the deployment's own report and the events stay one ``-v`` (or one file) away."""

from __future__ import annotations

import logging
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import dagster as dg

CONSOLE_QUIET = "ERROR"  # a failing step still prints its error on the console
CONSOLE_VERBOSE = "INFO"  # -v: the events and the steps' own log lines, as Dagster prints them


@dg.logger(
    config_schema={
        "path": dg.Field(str, is_required=False, description="the log file (appended)"),
        "log_level": dg.Field(str, default_value="DEBUG"),
    },
    description="Appends the run's events and logs to a file (nothing without a path, as in "
    "runs launched from the UI, whose events stay in the instance).",
)
def file_logger(init_context: dg.InitLoggerContext) -> logging.Logger:
    config = init_context.logger_config
    logger = logging.getLogger(f"ocr.run_log.{uuid.uuid4().hex}")
    logger.setLevel(config["log_level"])
    logger.propagate = False
    path = config.get("path")
    handler: logging.Handler = logging.FileHandler(path) if path else logging.NullHandler()
    handler.setFormatter(logging.Formatter("%(asctime)s - %(levelname)s - %(message)s"))
    logger.addHandler(handler)
    return logger


# every run's loggers: Dagster's console logger and the file logger above
LOGGERS: dict[str, dg.LoggerDefinition] = {
    "console": dg.colored_console_logger,
    "file": file_logger,
}


@dataclass(frozen=True)
class RunLogging:
    """How loud the console is and which file gets the events, for every run of a deploy."""

    console_level: str = CONSOLE_VERBOSE
    file: Path | None = None

    def run_config(self) -> dict[str, Any]:
        loggers: dict[str, Any] = {"console": {"config": {"log_level": self.console_level}}}
        if self.file is not None:
            loggers["file"] = {"config": {"path": str(self.file)}}
        return {"loggers": loggers}
