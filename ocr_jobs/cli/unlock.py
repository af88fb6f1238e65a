"""``ocr unlock``: break an environment's deployment lock, e.g. one left by a deployment whose
machine stopped (this host cannot see its process, so the lock would block every deploy until
it goes stale, ``OCR_LOCK_STALE_SECONDS``)."""

from __future__ import annotations

from typing import Annotated

import typer
from rich.markup import escape

from ocr_jobs.cli.app import EnvFile, _settings, _storage, app, console


@app.command("unlock")
def unlock(
    env_file: EnvFile = None,
    force: Annotated[
        bool,
        typer.Option("--force", help="Break the lock even of a deployment running on this host."),
    ] = False,
) -> None:
    """Break this environment's deployment lock, saying whose it was (exit 1 if its deployment
    runs on this host, unless --force)."""
    from ocr_jobs.deploy.lock import break_lock
    from ocr_jobs.deploy.plan import DeployError

    settings = _settings(env_file)
    try:
        line = break_lock(_storage(settings), force=force)
    except DeployError as exc:
        console.print(f"[red]error:[/] {escape(str(exc))}", soft_wrap=True)
        raise typer.Exit(1) from exc
    console.print(escape(line), soft_wrap=True)
