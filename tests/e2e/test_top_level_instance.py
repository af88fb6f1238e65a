"""The top-level ``dagster.yaml`` is the instance of every door: plain ``dg dev`` from the project
folder, given the environment's documented variables, shows what ``ocr deploy`` materialized."""

import json
import os
import subprocess
import time
import urllib.request

import pytest
import yaml

from ocr_jobs.deploy.runner import instance_config
from ocr_resources.settings import load_settings, packaged_file
from tests.e2e.test_deploy import _local_env, ocr
from tests.e2e.test_ui_conventions import BIN, QUIET_ENV, ROOT, WARNINGS, _free_port
from tests.processes import interrupt_group

pytestmark = pytest.mark.slow

MATERIALIZATIONS = """
query ($partitions: [String!]) {
  assetOrError(assetKey: {path: ["region_risk_raster"]}) {
    ... on Asset { assetMaterializations(partitions: $partitions) { partition runId } }
  }
}
"""


def _graphql(port: int, query: str, variables: dict) -> dict:
    body = json.dumps({"query": query, "variables": variables}).encode()
    request = urllib.request.Request(
        f"http://127.0.0.1:{port}/graphql",
        data=body,
        headers={"Content-Type": "application/json"},
    )
    with urllib.request.urlopen(request, timeout=30) as reply:
        return json.loads(reply.read())


def test_top_level_dagster_yaml_is_the_packaged_one():
    """One file: the project's dagster.yaml is the package's (a link), not a second copy."""
    assert (ROOT / "dagster.yaml").resolve() == packaged_file("dagster.yaml").resolve()


def test_plain_dg_dev_shows_the_deployments_materializations(tmp_path, sample_root):
    env_file, _ = _local_env(tmp_path, sample_root)
    done = ocr("deploy", "--region-id", "y0_x0", "--regions-only", env_file=env_file)
    assert done.returncode == 0, done.stdout + done.stderr
    home = tmp_path / "dagster-homes" / "local"
    # the environment's home holds the top-level file with this environment's values filled in
    generated = yaml.safe_load((home / "dagster.yaml").read_text())
    assert generated["storage"]["custom"]["config"] == {"base_dir": str(home), "postgres_url": ""}
    assert (home / "dagster.yaml").read_text() == instance_config(load_settings(env_file))

    port = _free_port()
    clean = {k: v for k, v in os.environ.items() if not k.startswith(("OCR_", "DAGSTER_"))}
    documented = {  # docs/howto/run.md, "The Dagster instance"
        "DAGSTER_HOME": str(ROOT),
        "OCR_DAGSTER_STORAGE_DIR": str(home),
        "OCR_DAGSTER_PG_URL": "",
        "OCR_ENV_FILE": str(env_file),
        "DAGSTER_DISABLE_TELEMETRY": "1",
    }
    process = subprocess.Popen(
        [str(BIN / "dg"), "dev", "--host", "127.0.0.1", "--port", str(port)],
        cwd=ROOT,
        env={**clean, **QUIET_ENV, **documented},
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        start_new_session=True,
    )
    try:
        deadline, found = time.monotonic() + 180, None
        while time.monotonic() < deadline and not found:
            time.sleep(1)
            try:
                reply = _graphql(port, MATERIALIZATIONS, {"partitions": ["y0_x0", "y0_x1"]})
            except OSError:
                assert process.poll() is None, process.stdout.read()
                continue
            found = reply["data"]["assetOrError"]["assetMaterializations"]
    finally:
        output = interrupt_group(process)
    # the deployed partition, and only it: the instance is the environment's, not a temporary one
    assert found and {m["partition"] for m in found} == {"y0_x0"}, output
    assert not [w for w in WARNINGS if w in output], output
    assert not (ROOT / "history").exists() and not (ROOT / "storage").exists()
