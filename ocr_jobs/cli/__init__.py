"""``ocr``: the command line (heavy imports inside commands so ``--help`` is instant).

Commands register on ``app`` when their module is imported, below."""

from ocr_jobs.cli import data, deploy, inspect, unlock  # noqa: F401  (registers the commands)
from ocr_jobs.cli.app import app, console

__all__ = ["app", "console"]
