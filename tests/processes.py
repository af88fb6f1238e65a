"""Stopping the Dagster processes a test started, as a user's Ctrl-C does."""

import os
import signal
import subprocess


def interrupt_group(process: subprocess.Popen, timeout: float = 60) -> str:
    """Ctrl-C to the process's whole group, as a terminal sends it; SIGKILL after ``timeout``
    seconds. Its output when it was piped, else ""."""
    os.killpg(process.pid, signal.SIGINT)
    try:
        output = process.communicate(timeout=timeout)[0]
    except subprocess.TimeoutExpired:
        os.killpg(process.pid, signal.SIGKILL)
        output = process.communicate()[0]
    return output or ""
