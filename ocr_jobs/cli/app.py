"""The ``ocr`` app, its console and how every command reads the environment's settings (a bad
env file or variable is exit 2, naming the file and the variable)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console
from rich.markup import escape

app = typer.Typer(help="Open Climate Risk on Dagster.", no_args_is_help=True, add_completion=False)
regions_app = typer.Typer(help="Region grid and selection.", no_args_is_help=True)
app.add_typer(regions_app, name="regions")
console = Console()

EnvFile = Annotated[
    Path | None,
    typer.Option(
        "--env-file",
        help="Environment file (default: $OCR_ENV_FILE, else ./envs/local.env, else the packaged "
        "local.env).",
    ),
]


def _settings(env_file: Path | None, **overrides: Any):
    """The environment's settings (``overrides`` win over the file and the environment); a
    bad env file or variable is a clear error naming the file and the variable, exit 2."""
    from pydantic import ValidationError

    from ocr_resources.settings import load_settings, resolve_env_file

    try:
        path = resolve_env_file(env_file)
        return load_settings(path, **overrides)
    except FileNotFoundError as exc:
        console.print(f"[red]error in the environment's settings:[/] {escape(str(exc))}")
        raise typer.Exit(2) from exc
    except ValidationError as exc:
        text = "; ".join(_setting_error(e) for e in exc.errors())
        console.print(f"[red]error in the environment's settings[/] ({path}): {escape(text)}")
        raise typer.Exit(2) from exc


def _setting_error(error: Any) -> str:
    """One validation error as ``OCR_<NAME>='value': why``, the way a user sets it."""
    message = str(error["msg"]).removeprefix("Value error, ")
    if not error["loc"]:
        return message
    value = error.get("input")
    shown = f"={value!r}" if isinstance(value, str | int) and error["type"] != "missing" else ""
    return f"OCR_{str(error['loc'][0]).upper()}{shown}: {message}"


def _storage(settings):
    from ocr_jobs.definitions import build_resources

    return build_resources(settings)["storage"]
