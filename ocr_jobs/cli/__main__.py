"""``python -m ocr_jobs.cli``: the ``ocr`` command."""

from ocr_jobs.cli import app

app()
