"""The ``ocr`` app, its console, how every command reads the environment's settings (a bad
env file or variable is exit 2, naming the file and the variable), checks an option that
overrides a setting, and reports Ctrl-C."""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator
from contextlib import contextmanager, suppress
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console
from rich.markup import escape

app = typer.Typer(help="Open Climate Risk on Dagster.", no_args_is_help=True, add_completion=False)
regions_app = typer.Typer(help="Region grid and selection.", no_args_is_help=True)
app.add_typer(regions_app, name="regions")
console = Console()


@app.callback()
def _every_command() -> None:
    """Telemetry off for the command and every process it starts (``ocr_jobs.process_env``)."""
    from ocr_jobs.process_env import disable_telemetry

    disable_telemetry()


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
    from pydantic_settings import SettingsError

    from ocr_resources.settings import (
        SettingsFileError,
        check_environment,
        load_settings,
        resolve_env_file,
    )

    try:
        check_environment(os.environ)  # the process environment, read where the CLI starts
        path = resolve_env_file(env_file)
        return load_settings(path, **overrides)
    except (OSError, SettingsFileError) as exc:  # missing, a directory, unreadable, not UTF-8
        console.print(f"[red]error in the environment's settings:[/] {escape(str(exc))}")
        raise typer.Exit(2) from exc
    except ValidationError as exc:
        text = "; ".join(_setting_error(e) for e in exc.errors())
        console.print(f"[red]error in the environment's settings[/] ({path}): {escape(text)}")
        raise typer.Exit(2) from exc
    except SettingsError as exc:  # a JSON setting that does not parse
        console.print(
            f"[red]error in the environment's settings[/] ({path}): {escape(_unparsed(exc))}"
        )
        raise typer.Exit(2) from exc


def _unparsed(error: Exception) -> str:
    """pydantic-settings' "error parsing value for field …" as ``OCR_<NAME> is not valid JSON
    (the parser's reason); expected …``."""
    import re

    found = re.search(r'field "(\w+)"', str(error))
    name = f"OCR_{found.group(1).upper()}" if found else "a setting"
    return f"{name} is not valid JSON ({error.__cause__ or error}); expected a JSON object"


def _setting_error(error: Any) -> str:
    """One validation error as ``OCR_<NAME>='value': why``, the way a user sets it."""
    message = str(error["msg"]).removeprefix("Value error, ")
    if not error["loc"]:
        return message
    value = error.get("input")
    shown = f"={value!r}" if isinstance(value, str | int) and error["type"] != "missing" else ""
    return f"OCR_{str(error['loc'][0]).upper()}{shown}: {message}"


def checked_as(setting: str) -> Callable[[Any], Any]:
    """A typer callback holding an option that overrides ``setting`` to that setting's own
    field (type and bounds; the settings model is the one source of truth): a bad value is a
    usage error naming the option, exit 2, before anything runs, ``--dry-run`` included."""

    def check(value: Any) -> Any:
        if value is None:  # not given: the setting's own value applies
            return None
        from ocr_resources.settings import check_setting

        try:
            return check_setting(setting, value)
        except ValueError as exc:
            raise typer.BadParameter(str(exc)) from None

    return check


@contextmanager
def interruptible(what: str, afterwards: str = "") -> Iterator[None]:
    """Ctrl-C (SIGINT), or SIGTERM as a supervisor or ``kill`` sends it, while ``what`` runs
    ends in one line saying what was interrupted (and what the next run does about it) and
    exit 128 + the signal's number (130, 143), as a shell reports it, with no traceback: both
    take the same path (a KeyboardInterrupt), so a deploy terminates its runs either way.

    Dagster turns a Ctrl-C inside one of its runs into a failed run rather than a
    KeyboardInterrupt; the signal still wakes the fd of ``signal.set_wakeup_fd``, so that
    case ends the same way."""
    import signal

    with _signals_seen() as seen:
        try:
            yield
        except KeyboardInterrupt:
            pass
        except typer.Exit:  # a step's failure the interrupt caused, already reported
            if not seen():
                raise
        else:
            if not seen():
                return
        received = seen() or {signal.SIGINT}
    signum = signal.SIGTERM if signal.SIGTERM in received else signal.SIGINT
    how = "" if signum == signal.SIGINT else f" ({signal.Signals(signum).name})"
    console.print(
        f"[yellow]interrupted{how}:[/] {what}" + (f"; {afterwards}" if afterwards else "")
    )
    raise typer.Exit(128 + signum)


@contextmanager
def _signals_seen() -> Iterator[Callable[[], set[int]]]:
    """A function telling which of SIGINT and SIGTERM arrived in the block (whoever handled
    them), from the signal wakeup fd; SIGTERM raises KeyboardInterrupt there, as SIGINT does.
    Outside the main thread, where neither can be set, it says none."""
    import signal
    import socket

    reader, writer = socket.socketpair()
    reader.setblocking(False)
    writer.setblocking(False)
    try:
        previous = signal.set_wakeup_fd(writer.fileno(), warn_on_full_buffer=False)
    except ValueError:  # not the main thread
        previous = None
    received: set[int] = set()

    def seen() -> set[int]:
        with suppress(BlockingIOError):  # nothing (more) arrived
            received.update(reader.recv(4096))
        return received & {signal.SIGINT, signal.SIGTERM}

    def interrupt(signum: int, frame: object) -> None:
        raise KeyboardInterrupt

    terminate = signal.signal(signal.SIGTERM, interrupt) if previous is not None else None
    try:
        yield seen if previous is not None else set
    finally:
        if previous is not None:
            signal.set_wakeup_fd(previous)
            signal.signal(signal.SIGTERM, signal.SIG_DFL if terminate is None else terminate)
        reader.close()
        writer.close()


def _storage(settings):
    from ocr_jobs.definitions import build_resources

    return build_resources(settings)["storage"]
