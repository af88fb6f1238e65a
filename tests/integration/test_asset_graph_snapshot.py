"""The asset graph as a committed snapshot, so that every lineage change shows in code review.

The code location is built from the local settings (``envs/local.env``, no ``OCR_*`` variable of
the calling shell) and described as sorted JSON: assets, asset checks and jobs. The description
is compared with ``tests/snapshots/asset_graph.json``; after an intended change, regenerate it with
``OCR_UPDATE_SNAPSHOT=1 pytest tests/integration/test_asset_graph_snapshot.py`` and review the diff.
"""

from __future__ import annotations

import difflib
import json
import os
from pathlib import Path
from typing import Any

import dagster as dg
import pytest

from ocr_assets.code_version import SOURCE_VERSION_PREFIX
from ocr_jobs.definitions import build_definitions
from ocr_resources.settings import load_settings

REPO = Path(__file__).resolve().parents[2]
LOCAL_ENV = REPO / "envs" / "local.env"
SNAPSHOT = Path(__file__).resolve().parents[1] / "snapshots" / "asset_graph.json"
UPDATE_VARIABLE = "OCR_UPDATE_SNAPSHOT"
HINT = (
    f"regenerate with `{UPDATE_VARIABLE}=1 pytest tests/integration/test_asset_graph_snapshot.py` "
    "and review the diff"
)


def _key(key: dg.AssetKey) -> str:
    return key.to_user_string()


def _partitions(partitions_def: dg.PartitionsDefinition | None) -> dict[str, Any] | None:
    """Type, and for static partitions (the region catalog) the count and keys in declared
    order: that order is the one Dagster uses for partition ranges, so a change matters."""
    if partitions_def is None:
        return None
    described: dict[str, Any] = {"type": type(partitions_def).__name__}
    if isinstance(partitions_def, dg.StaticPartitionsDefinition):
        keys = list(partitions_def.get_partition_keys())
        described |= {"count": len(keys), "keys": keys}
    return described


def _retry_policy(policy: dg.RetryPolicy | None) -> dict[str, Any] | None:
    if policy is None:
        return None
    return {
        "max_retries": policy.max_retries,
        "delay": policy.delay,
        "backoff": policy.backoff.value if policy.backoff else None,
        "jitter": policy.jitter.value if policy.jitter else None,
    }


def _asset(defs: dg.Definitions, spec: dg.AssetSpec) -> dict[str, Any]:
    assets_def = defs.resolve_assets_def(spec.key)
    described: dict[str, Any] = {
        "group": spec.group_name,
        "kinds": sorted(spec.kinds),
        "tags": dict(spec.tags),
        "owners": sorted(spec.owners),
        "deps": sorted(_key(dep.asset_key) for dep in spec.deps),
        # only the deps that declare a mapping (e.g. all regions -> one unpartitioned asset)
        "partition_mappings": {
            _key(dep.asset_key): type(dep.partition_mapping).__name__
            for dep in spec.deps
            if dep.partition_mapping is not None
        },
        "partitions": _partitions(spec.partitions_def),
        # a source-derived version changes with every edit of its modules: the snapshot says
        # that the asset has one (tests/integration/test_code_versions.py checks what it follows)
        "code_version": (
            SOURCE_VERSION_PREFIX + "<source hash>"
            if (spec.code_version or "").startswith(SOURCE_VERSION_PREFIX)
            else spec.code_version
        ),
        "executable": assets_def.is_executable,
        "external": assets_def.is_external,
        "op": None,
    }
    if assets_def.is_executable:
        op = assets_def.op
        described["op"] = {
            "name": op.name,
            "tags": dict(op.tags),
            "retry_policy": _retry_policy(op.retry_policy),
            "pool": op.pool,
        }
    return described


def _without_machine_paths(value: Any, paths: tuple[str, ...]) -> Any:
    """The value with every string that names a folder of this machine left out."""
    if isinstance(value, dict):
        return {
            k: _without_machine_paths(v, paths)
            for k, v in value.items()
            if not (isinstance(v, str) and any(p in v for p in paths))
        }
    if isinstance(value, list):
        return [
            _without_machine_paths(v, paths)
            for v in value
            if not (isinstance(v, str) and any(p in v for p in paths))
        ]
    return value


def describe_asset_graph(defs: dg.Definitions) -> dict[str, Any]:
    """A deterministic, JSON-able description of the assets, asset checks and jobs."""
    graph = defs.resolve_asset_graph()
    assets = {_key(spec.key): _asset(defs, spec) for spec in defs.resolve_all_asset_specs()}
    checks = {
        (_key(spec.asset_key), spec.name): {
            "asset": _key(spec.asset_key),
            "name": spec.name,
            "blocking": spec.blocking,
            "description": spec.description,
            "additional_deps": sorted(_key(dep.asset_key) for dep in spec.additional_deps),
        }
        for assets_def in graph.assets_defs
        for spec in assets_def.check_specs
    }
    jobs = {}
    for job in defs.jobs or []:
        job_def = defs.resolve_job_def(job.name)
        # asset jobs (define_asset_job) carry their selection; op jobs select no asset
        selection = getattr(job, "selection", None)
        jobs[job.name] = {
            "selected_assets": sorted(_key(k) for k in selection.resolve(graph))
            if selection is not None
            else [],
            "partitioned": job_def.partitions_def is not None,
            "partitions": _partitions(job_def.partitions_def),
            "executor": job_def.executor_def.name,
        }
    return {
        "assets": assets,
        "asset_checks": [checks[k] for k in sorted(checks)],
        "jobs": jobs,
    }


@pytest.fixture
def local_defs(monkeypatch) -> tuple[dg.Definitions, tuple[str, ...]]:
    """The code location of envs/local.env, whatever ``OCR_*`` variables the shell exports
    (except the update switch); and the machine paths that must not reach the snapshot."""
    for name in [n for n in os.environ if n.startswith("OCR_") and n != UPDATE_VARIABLE]:
        monkeypatch.delenv(name)
    settings = load_settings(LOCAL_ENV)
    paths = tuple(p for p in {str(REPO), settings.storage_root} if p)
    return build_definitions(settings), paths


def test_asset_graph_matches_snapshot(local_defs):
    defs, machine_paths = local_defs
    described = _without_machine_paths(describe_asset_graph(defs), machine_paths)
    built = json.dumps(described, indent=2, sort_keys=True) + "\n"
    assert not any(p in built for p in machine_paths)

    if os.environ.get(UPDATE_VARIABLE) == "1":
        SNAPSHOT.parent.mkdir(parents=True, exist_ok=True)
        SNAPSHOT.write_text(built, encoding="utf-8")

    name = SNAPSHOT.relative_to(REPO).as_posix()
    if not SNAPSHOT.is_file():
        pytest.fail(f"{name} does not exist; {HINT}", pytrace=False)
    committed = SNAPSHOT.read_text(encoding="utf-8")
    if committed != built:
        diff = "".join(
            difflib.unified_diff(
                committed.splitlines(keepends=True),
                built.splitlines(keepends=True),
                fromfile=f"{name} (committed)",
                tofile="asset graph built from the current code",
            )
        )
        pytest.fail(
            f"the asset graph differs from {name}:\n\n{diff}\n{HINT}",
            pytrace=False,
        )
