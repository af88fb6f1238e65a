"""The environment of every process the project starts: Dagster's telemetry off.

Dagster's webserver and daemon otherwise run a thread that moves ``$DAGSTER_HOME/logs`` to
``.logs_queue``, empties it and uploads it to Dagster's endpoint; ``telemetry: enabled: false``
in ``dagster.yaml`` does not stop that thread, only this variable does.
"""

from __future__ import annotations

import os

TELEMETRY_OFF = {"DAGSTER_DISABLE_TELEMETRY": "1"}


def child_environment(**extra: str) -> dict[str, str]:
    """This process's environment with ``extra`` and telemetry off, for a child it starts."""
    return {**os.environ, **extra, **TELEMETRY_OFF}


def disable_telemetry() -> None:
    """Telemetry off in this process and so in every child it starts without an explicit
    environment (multiprocessing's workers, Dagster's step subprocesses): the command line's
    entry point calls it once."""
    os.environ.update(TELEMETRY_OFF)
