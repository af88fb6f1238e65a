"""Nothing sent away, nothing deleted: every door starts its processes with Dagster's telemetry
off, and the deploy logs survive the real webserver and daemon running on their instance.

Without ``DAGSTER_DISABLE_TELEMETRY`` the webserver's and the daemon's upload thread moves
``$DAGSTER_HOME/logs`` into ``.logs_queue`` within seconds, empties it and posts it to Dagster
(``telemetry: enabled: false`` does not stop that thread); here the endpoint is pointed at a
closed loopback port, so a failure of this test sends nothing off the machine either."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import psutil
import pytest
from typer.testing import CliRunner

from ocr_jobs.cli import app
from ocr_jobs.deploy import instance_home
from ocr_jobs.deploy.deployment import DEPLOY_LOGS, _run_logging
from ocr_jobs.process_env import TELEMETRY_OFF
from ocr_resources.settings import load_settings
from tests.processes import interrupt_group

pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parents[2]
BIN = Path(sys.executable).parent
(TELEMETRY_VARIABLE,) = TELEMETRY_OFF
RUN_SECONDS = 30


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _environment_without_telemetry_off() -> dict[str, str]:
    """The test's environment minus the variable (the door must set it) and minus OCR_*; the
    telemetry endpoint a closed loopback port, should anything try."""
    env = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith("OCR_")
        # Dagster also skips the upload under these two CI markers: not here
        and k not in (TELEMETRY_VARIABLE, "DAGSTER_HOME", "BUILDKITE", "TF_BUILD")
    }
    return {**env, "DAGSTER_TELEMETRY_URL": f"http://127.0.0.1:{_free_port()}/", "COLUMNS": "200"}


def _dagster_processes(parent: psutil.Process) -> list[psutil.Process]:
    return [p for p in parent.children(recursive=True) if p.is_running()]


def test_ocr_dev_keeps_the_deploy_logs_and_starts_everything_with_telemetry_off(tmp_path):
    """Deploy logs in an instance home, then ``ocr dev`` (what ``make dev`` runs: dg dev, its
    webserver, daemon and code server) on that home for ~30 s: every one of its processes has
    telemetry off, the deploy logs are intact, and nothing reached a ``.logs_queue`` — not
    even a file in ``$DAGSTER_HOME/logs`` itself, the folder the upload thread empties."""
    env_file = tmp_path / "dev.env"
    env_file.write_text(
        f"OCR_STORAGE_ROOT={tmp_path / 'data'}\nOCR_DAGSTER_HOME_ROOT={tmp_path / 'homes'}\n"
    )
    home = instance_home(load_settings(env_file))
    logs = [_run_logging(home, verbose=False).file for _ in range(2)]
    logs[1] = logs[1].with_name("deploy-20250101T000000Z-1.log")  # two distinct deployments
    for number, path in enumerate(logs):
        path.write_text(f"deployment {number}: region_risk - STEP_START\n" * 200)
    assert {p.parent for p in logs} == {home / DEPLOY_LOGS}
    before = {p: p.read_bytes() for p in logs}

    port = _free_port()
    process = subprocess.Popen(
        [str(BIN / "ocr"), "dev", "--env-file", str(env_file), "--port", str(port)],
        cwd=ROOT,
        env={**_environment_without_telemetry_off(), "VIRTUAL_ENV": sys.prefix},
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        start_new_session=True,
    )
    started = time.monotonic()
    try:
        status = None
        while time.monotonic() - started < 120 and status != 200:
            time.sleep(1)
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/server_info") as reply:
                    status = reply.status
            except OSError:
                assert process.poll() is None, process.stdout.read()
        assert status == 200
        children = _dagster_processes(psutil.Process(process.pid))
        environments = {p.pid: (p.cmdline(), p.environ()) for p in children}
        dagster_home = Path(next(iter(environments.values()))[1]["DAGSTER_HOME"])
        # the folder the upload thread ships (it acts at once when it finds anything there)
        telemetry_logs = dagster_home / "logs"  # the project folder's: DAGSTER_HOME is it
        made = not telemetry_logs.exists()
        telemetry_logs.mkdir(exist_ok=True)
        canary = telemetry_logs / "event.log"
        canary.write_text('{"action": "canary"}\n')
        time.sleep(max(0.0, RUN_SECONDS - (time.monotonic() - started)))
        assert process.poll() is None, process.stdout.read()
    finally:
        output = interrupt_group(process)
    # the webserver, the daemon and the code server were among them, every one told
    commands = [" ".join(cmd[:4]) for cmd, _ in environments.values()]
    assert {"-m dagster_webserver", "-m dagster._daemon"} <= {
        " ".join(c.split()[1:3]) for c in commands
    }, commands
    untold = [
        c
        for c, (_, env) in zip(commands, environments.values(), strict=True)
        if env.get(TELEMETRY_VARIABLE) != "1"
    ]
    assert not untold, untold
    assert {p: p.read_bytes() for p in logs if p.exists()} == before, output
    assert canary.read_text() == '{"action": "canary"}\n'
    canary.unlink()  # nothing left in the project folder
    if made:
        telemetry_logs.rmdir()
    queues = [q for q in (dagster_home / ".logs_queue", home / ".logs_queue") if q.exists()]
    assert not [f for q in queues for f in q.iterdir()]


def test_the_ocr_entry_point_turns_telemetry_off_for_the_processes_it_starts(monkeypatch, tmp_path):
    """``ocr deploy``'s run workers and Dagster's step subprocesses inherit the command's own
    environment: the entry point sets the variable there, whatever the command."""
    monkeypatch.delenv(TELEMETRY_VARIABLE, raising=False)
    env_file = tmp_path / "serve.env"
    env_file.write_text(f"OCR_STORAGE_ROOT={tmp_path / 'data'}\n")
    CliRunner().invoke(app, ["serve", "--check", "--env-file", str(env_file)])
    assert os.environ.get(TELEMETRY_VARIABLE) == "1"


def test_every_make_target_runs_with_telemetry_off():
    """The Makefile exports the variable to every recipe (make dev, make run, make test)."""
    env = {k: v for k, v in os.environ.items() if k != TELEMETRY_VARIABLE}
    shown = subprocess.run(
        [
            "make",
            "-s",
            "--eval",
            f"show-telemetry: ; @echo $${TELEMETRY_VARIABLE}",
            "show-telemetry",
        ],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        check=True,
    )
    assert shown.stdout.strip() == "1"
