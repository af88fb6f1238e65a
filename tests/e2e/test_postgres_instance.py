"""A shared environment's Dagster instance on a real PostgreSQL server on loopback."""

import glob
import os
import shutil
import socket
import subprocess
import tempfile
from pathlib import Path

import pytest

from tests.e2e.test_deploy import _local_env, ocr

pytestmark = pytest.mark.slow


def _pg_bin(name: str) -> str | None:
    found = shutil.which(name)
    if found:
        return found
    candidates = sorted(glob.glob(f"/usr/lib/postgresql/*/bin/{name}"))
    return candidates[-1] if candidates else None


def _as_postgres(argv: list[str]) -> list[str]:
    """initdb refuses to run as root: run the server as Debian's postgres user then."""
    return ["runuser", "-u", "postgres", "--", *argv] if os.geteuid() == 0 else argv


@pytest.fixture(scope="session")
def postgres_url():
    initdb, pg_ctl, psql = _pg_bin("initdb"), _pg_bin("pg_ctl"), _pg_bin("psql")
    if not (initdb and pg_ctl and psql):
        pytest.skip("PostgreSQL is not installed (.ci/run installs Debian's package)")
    base = Path(tempfile.mkdtemp(prefix="ocr-pg-", dir="/tmp"))
    base.chmod(0o755)
    data = base / "data"
    data.mkdir()
    if os.geteuid() == 0:
        shutil.chown(base, "postgres")
        shutil.chown(data, "postgres")
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    subprocess.run(
        _as_postgres([initdb, "-D", str(data), "-A", "trust", "-U", "postgres"]),
        check=True,
        capture_output=True,
    )
    options = f"-c listen_addresses=127.0.0.1 -p {port} -k {data}"
    subprocess.run(
        _as_postgres(
            [pg_ctl, "-D", str(data), "-o", options, "-l", str(data / "log"), "-w", "start"]
        ),
        check=True,
        capture_output=True,
    )
    try:
        subprocess.run(
            [
                psql,
                "-h",
                "127.0.0.1",
                "-p",
                str(port),
                "-U",
                "postgres",
                "-c",
                "CREATE DATABASE dagster",
            ],
            check=True,
            capture_output=True,
        )
        # SQLAlchemy names the driver Dagster's queries are written for
        yield f"postgresql+psycopg2://postgres@127.0.0.1:{port}/dagster"
    finally:
        subprocess.run(
            _as_postgres([pg_ctl, "-D", str(data), "-m", "fast", "stop"]), capture_output=True
        )
        shutil.rmtree(base, ignore_errors=True)


def test_shared_environment_records_runs_in_postgres(tmp_path, sample_root, postgres_url):
    import psycopg2

    env, _ = _local_env(tmp_path, sample_root, "staging", DAGSTER_STORAGE="postgres")
    done = ocr(
        "deploy", "--region-id", "y0_x0", env_file=env, extra={"OCR_DAGSTER_PG_URL": postgres_url}
    )
    assert done.returncode == 0, done.stdout + done.stderr
    home = tmp_path / "dagster-homes" / "staging"
    assert "postgres_url" in (home / "dagster.yaml").read_text()
    assert postgres_url not in (home / "dagster.yaml").read_text()  # the secret stays in the env
    assert not list(home.rglob("runs.db"))  # nothing in SQLite
    with psycopg2.connect(postgres_url.replace("+psycopg2", "")) as conn, conn.cursor() as cur:
        cur.execute("SELECT pipeline_name, status FROM runs")
        runs = cur.fetchall()
        cur.execute(
            "SELECT count(*) FROM event_logs WHERE asset_key LIKE %s", ("%region_buildings%",)
        )
        events = cur.fetchone()[0]
    assert ("region_job", "SUCCESS") in runs and ("aggregate_and_tile_core", "SUCCESS") in runs
    assert events > 0
