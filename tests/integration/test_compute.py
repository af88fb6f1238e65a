"""The compute resource: local LocalCluster, Coiled (at its boundary), existing Dask clusters."""

import logging
import re
from pathlib import Path
from typing import ClassVar

import dagster as dg
import numpy as np
import pytest
from dask.distributed import LocalCluster

from ocr_assets.graph import PROFILES, profile_table_markdown
from ocr_assets.regions import region_field
from ocr_jobs.definitions import build_definitions
from ocr_jobs.jobs import DOWNSTREAM_JOB, REGION_JOB
from ocr_resources.compute import ComputeProfile, OcrCompute
from ocr_science.fire_model import YEARS, compute_region_rasters

pytestmark = pytest.mark.slow

REGION = "y1_x1"
DESIGN = Path(__file__).resolve().parents[2] / "docs" / "design.md"


class _Context:
    """The slice of an asset context the compute resource reads."""

    def __init__(self, profile: str):
        self.op_execution_context = type(
            "Op", (), {"op_def": type("D", (), {"tags": PROFILES[profile].tags(profile)})()}
        )()
        self.run = type("R", (), {"run_id": "0123456789abcdef"})()
        self.log = logging.getLogger("test-compute")


@pytest.fixture(scope="module")
def in_process(sample_storage):
    grid = sample_storage.regions.region_grid()
    return compute_region_rasters(
        sample_storage.regions.read_region_inputs(grid, grid.region(REGION))
    )


def _dask_sum(_: int) -> int:
    """A task that computes with dask itself, as the region steps' reads do."""
    import dask.array as da

    return int(da.ones(4, chunks=2).sum().compute())


def test_a_task_computing_with_dask_leaves_this_process_without_a_client():
    """Before: a task on an in-process worker that computed with dask made the worker's own
    client the default of the whole process (dask, with no scheduler set, asks distributed
    for one); left behind by the closed cluster, it hung or failed every later compute."""
    import dask
    import dask.array as da
    import distributed

    scheduler = dask.config.get("scheduler", None)
    with OcrCompute().session(_Context("region_risk_raster"), tasks=2) as session:
        assert session.client is not None
        assert session.map(_dask_sum, [0, 1]) == [4, 4]
        with pytest.raises(ValueError):
            distributed.default_client()
    with pytest.raises(ValueError):
        distributed.default_client()
    assert dask.config.get("scheduler", None) == scheduler
    assert da.ones(4, chunks=2).sum().compute() == 4


@pytest.mark.parametrize("processes", [False, True])
def test_local_cluster_equals_in_process(sample_storage, in_process, processes):
    import dask
    import dask.array as da

    compute = OcrCompute(local_processes=processes)
    scheduler = dask.config.get("scheduler", None)
    with compute.session(_Context("region_risk_raster"), tasks=2) as session:
        assert session.client is not None and session.workers == 2
        fields = session.map(region_field, [sample_storage.spec()] * 2, [REGION] * 2, YEARS)
        meta = session.metadata()
    # the session leaves dask's global config as it found it (a default client once left
    # "dask.distributed" set with no client to serve it: every later compute in the process
    # failed)
    assert dask.config.get("scheduler", None) == scheduler
    assert da.ones(4, chunks=2).sum().compute() == 4
    for year, (bp, seconds) in zip(YEARS, fields, strict=True):
        np.testing.assert_array_equal(bp, in_process[f"bp_{year}"])
        assert {"read", "spread", "blur"} <= set(seconds)
    assert meta["compute_backend"] == "local" and meta["vm_type"] == "local (2 worker(s))"


def test_dask_backend_against_a_scheduler_on_loopback(sample_storage, in_process):
    with LocalCluster(
        n_workers=2, threads_per_worker=1, host="127.0.0.1", dashboard_address="127.0.0.1:0"
    ) as cluster:
        assert cluster.scheduler_address.startswith("tcp://127.0.0.1:")
        compute = OcrCompute(backend="dask", scheduler_address=cluster.scheduler_address)
        with compute.session(_Context("region_risk_raster"), tasks=2) as session:
            fields = session.map(region_field, [sample_storage.spec()] * 2, [REGION] * 2, YEARS)
            assert len(session.client.scheduler_info()["workers"]) == 2
            assert session.metadata()["vm_type"] == "dask (2 worker(s))"
    for year, (bp, _) in zip(YEARS, fields, strict=True):
        np.testing.assert_array_equal(bp, in_process[f"bp_{year}"])


def test_dask_backend_builds_a_cluster_from_dagster_dask_config(sample_storage):
    compute = OcrCompute(
        backend="dask", dask_cluster={"local": {"n_workers": 1, "processes": False}}
    )
    with OcrCompute().session(_Context("buildings_geoparquet")) as session:
        assert session.client is None and session.metadata()["vm_type"] == "local (in process)"
    with compute.session(_Context("buildings_geoparquet")) as session:
        assert session.submit(len, "abc") == 3
        assert len(session.client.scheduler_info()["workers"]) == 1
    broken = OcrCompute(backend="dask", dask_cluster={"nope": {}})
    with (
        pytest.raises(ValueError, match="unknown dask cluster type"),
        broken.session(_Context("risk_pyramid")),
    ):
        pass


class FakeCoiledCluster:
    """Stands in for coiled.Cluster: records its arguments, runs on a local cluster."""

    created: ClassVar[list["FakeCoiledCluster"]] = []

    def __init__(self, **kwargs):
        self.kwargs = kwargs
        self.closed = False
        self._local = LocalCluster(
            n_workers=1, threads_per_worker=1, processes=False, dashboard_address="127.0.0.1:0"
        )
        FakeCoiledCluster.created.append(self)

    @property
    def scheduler_address(self):
        return self._local.scheduler_address

    def close(self):
        self.closed = True
        self._local.close()


@pytest.fixture
def fake_coiled(monkeypatch):
    import coiled

    FakeCoiledCluster.created = []
    monkeypatch.setattr(coiled, "Cluster", FakeCoiledCluster)
    return FakeCoiledCluster


def _expected(name: str, software: str | None) -> dict:
    p = PROFILES[name]
    kwargs = {
        "n_workers": p.workers,
        "worker_vm_types": [p.vm_type],
        "region": "us-west-2",
        "spot_policy": "spot_with_fallback",
        "tags": {"Project": "OCR"},
        "environ": {"DASK_DISTRIBUTED__WORKER__DAEMON": "False"},
        "shutdown_on_close": True,
    }
    if p.scheduler_vm_type:
        kwargs["scheduler_vm_types"] = [p.scheduler_vm_type]
    if p.scheduler_vm_type == p.vm_type:  # one VM fewer: the scheduler's runs a worker
        kwargs["extra_worker_on_scheduler"] = True
    if p.tasks_per_worker:
        kwargs["worker_options"] = {"nthreads": p.tasks_per_worker}
    if p.disk_size_gb:
        kwargs["worker_disk_size"] = p.disk_size_gb
    if software:
        kwargs["software"] = software
    return kwargs


def test_coiled_receives_each_assets_profile(fake_coiled, local_settings, monkeypatch):
    settings = local_settings.model_copy(
        update={"compute_backend": "coiled", "coiled_software": "ocr-pr-42"}
    )
    defs = build_definitions(settings)
    with dg.instance_for_test() as instance:
        region = defs.resolve_job_def(REGION_JOB).execute_in_process(
            partition_key="y1_x1", instance=instance
        )
        assert region.success
        downstream = defs.resolve_job_def(DOWNSTREAM_JOB).execute_in_process(instance=instance)
        assert downstream.success
        meta = instance.get_latest_materialization_event(
            dg.AssetKey("building_pmtiles")
        ).asset_materialization.metadata
        assert meta["compute_backend"].value == "coiled" and meta["vm_type"].value == "c8g.12xlarge"
    by_profile = {}
    for cluster in fake_coiled.created:
        name = (
            re.match(r"ocr-(.+)-[0-9a-f]{8}$", cluster.kwargs.pop("name"))
            .group(1)
            .replace("-", "_")
        )
        by_profile[name] = cluster.kwargs
        assert cluster.closed
    assert set(by_profile) == set(PROFILES)
    for name, kwargs in by_profile.items():
        assert kwargs == _expected(name, "ocr-pr-42"), name


def test_coiled_clusters_take_each_profiles_workers_unless_the_setting_names_a_count():
    """A step's cluster has its profile's workers and tasks per worker; a scheduler VM of the
    workers' type runs a worker itself (one VM, not two, for a one-worker step);
    OCR_COILED_WORKERS, when set, is every step's count."""
    context = _Context("region_risk_raster")
    region = OcrCompute(backend="coiled").coiled_cluster_kwargs(
        context, "region_risk_raster", PROFILES["region_risk_raster"]
    )
    assert region["n_workers"] == PROFILES["region_risk_raster"].workers > 1
    assert region["worker_options"] == {"nthreads": PROFILES["region_risk_raster"].tasks_per_worker}
    assert "extra_worker_on_scheduler" not in region  # Coiled's default scheduler VM
    tiles = OcrCompute(backend="coiled").coiled_cluster_kwargs(
        context, "building_pmtiles", PROFILES["building_pmtiles"]
    )
    assert tiles["n_workers"] == 1 and tiles["extra_worker_on_scheduler"] is True
    assert PROFILES["building_pmtiles"].vms() == 1 and PROFILES["region_risk_raster"].vms() == 5
    forced = OcrCompute(backend="coiled", coiled_workers=3).coiled_cluster_kwargs(
        context, "building_pmtiles", PROFILES["building_pmtiles"]
    )
    assert forced["n_workers"] == 3
    assert (
        ComputeProfile.from_tags(PROFILES["region_risk_raster"].tags("r"))[1]
        == PROFILES["region_risk_raster"]
    )


def test_missing_software_env_warns_and_carries_on(fake_coiled, monkeypatch, caplog):
    compute = OcrCompute(backend="coiled", coiled_region="eu-west-1")
    with (
        caplog.at_level(logging.WARNING, logger="test-compute"),
        compute.session(_Context("building_pmtiles")) as session,
    ):
        assert session.submit(sum, [1, 2]) == 3
    assert "COILED_SOFTWARE_ENV_NAME is not set; package sync will be used" in caplog.text
    kwargs = fake_coiled.created[0].kwargs
    assert "software" not in kwargs and kwargs["region"] == "eu-west-1"
    assert kwargs["worker_disk_size"] == 250


def test_cluster_is_closed_after_a_failure(fake_coiled):
    compute = OcrCompute(backend="coiled")
    with pytest.raises(ZeroDivisionError), compute.session(_Context("risk_pyramid")) as session:
        session.submit(lambda: 1 / 0)
    assert fake_coiled.created[0].closed


@pytest.mark.parametrize(
    ("regions", "per_run", "runs"),
    # a stretch of 3 consecutive regions, 2 per run (⌈3 / 2⌉ = 2 runs), then one region after a
    # gap (y0_x3 not asked for): each stretch is cut on its own, as Dagster's BackfillPolicy
    [(["y0_x0", "y0_x1", "y0_x2", "y0_x4"], 2, 3)],
)
def test_region_runs_open_one_coiled_cluster_per_run(
    fake_coiled, local_settings, monkeypatch, regions, per_run, runs
):
    """The deploy's (and a backfill's) runs of N regions open ⌈N / k⌉ clusters (per stretch of
    consecutive regions), counted at coiled.Cluster; a region retried after a transient error
    is retried on its run's cluster, not on a new one."""
    from ocr_assets import regions as region_module
    from ocr_jobs.deploy.runner import partition_tags
    from ocr_jobs.jobs import region_runs

    real, calls = region_module.assemble_region_rasters, []

    def flaky(*args, **kwargs):
        calls.append(1)
        if len(calls) == 1:
            raise OSError("transient read error")
        return real(*args, **kwargs)

    monkeypatch.setattr(region_module, "assemble_region_rasters", flaky)
    settings = local_settings.model_copy(
        update={
            "compute_backend": "coiled",
            "coiled_software": "ocr-env",
            "regions_per_run": per_run,
        }
    )
    defs = build_definitions(settings)
    partitions = defs.resolve_job_def(REGION_JOB).partitions_def.get_partition_keys()
    planned = region_runs(partitions, regions, per_run)
    assert len(planned) == runs and sorted(r for run in planned for r in run) == sorted(regions)
    with dg.instance_for_test() as instance:
        for run in planned:
            result = defs.resolve_job_def(REGION_JOB).execute_in_process(
                instance=instance, tags=partition_tags(run)
            )
            assert result.success
        assert instance.get_materialized_partitions(dg.AssetKey("region_buildings")) == set(regions)
    assert len(fake_coiled.created) == runs
    assert len(calls) == len(regions) + 1  # one retry
    for cluster in fake_coiled.created:
        assert cluster.closed
        assert cluster.kwargs["worker_vm_types"] == [PROFILES["region_risk_raster"].vm_type]


def test_profile_overrides_by_config():
    compute = OcrCompute(overrides={"building_pmtiles": {"vm_type": "c8g.16xlarge"}})
    _, profile = compute.profile_for(PROFILES["building_pmtiles"].tags("building_pmtiles"))
    assert profile == ComputeProfile("c8g.16xlarge", "c8g.12xlarge", 250)
    assert (
        compute.profile_for(PROFILES["risk_pyramid"].tags("risk_pyramid"))[1]
        == PROFILES["risk_pyramid"]
    )


def test_every_asset_step_carries_its_profile(local_settings):
    graph = build_definitions(local_settings).resolve_asset_graph()
    for key in graph.get_all_asset_keys():
        node = graph.get(key)
        if not node.is_materializable:  # the inputs: observed (metadata), never computed
            continue
        name, profile = ComputeProfile.from_tags(dict(node.assets_def.op.tags))
        assert profile == PROFILES[name]
        assert node.assets_def.op.pool == "ocr_clusters"


def test_profile_table_in_the_docs_is_the_code_s():
    """The docs' performance page shows the profiles' own rendering, generated when the site is
    built (tools/docs_hooks.py), so it cannot be retyped."""
    import importlib.util

    root = Path(__file__).resolve().parents[2]
    spec = importlib.util.spec_from_file_location("docs_hooks", root / "tools" / "docs_hooks.py")
    hooks = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(hooks)
    page = (root / "docs" / "performance.md").read_text()
    assert "<!-- generated: profiles -->" in page.splitlines()
    assert profile_table_markdown() in hooks.render(page)


def test_profile_table_matches_design():
    """The design's table (docs/design.md §8) agrees too."""
    rows = {}
    for line in DESIGN.read_text().splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if (
            len(cells) == 5
            and cells[0].startswith("`")
            and ("m8g" in cells[4] or "c8g" in cells[4] or "r8g" in cells[4])
        ):
            rows[cells[0].split("`")[1]] = cells[4]
    assert set(rows) == set(PROFILES)
    for name, cell in rows.items():
        assert cell == PROFILES[name].describe(), name


def test_backends_are_selected_from_env_files(tmp_path, monkeypatch):
    from ocr_jobs.definitions import build_resources
    from ocr_resources.settings import load_settings

    for var in ("OCR_ENVIRONMENT", "OCR_STORAGE_ROOT", "OCR_COMPUTE_BACKEND", "OCR_ENV_FILE"):
        monkeypatch.delenv(var, raising=False)
    env = tmp_path / "hpc.env"
    env.write_text(
        "OCR_ENVIRONMENT=staging\nOCR_STORAGE_ROOT=/data\nOCR_COMPUTE_BACKEND=dask\n"
        'OCR_DASK_CLUSTER={"slurm": {"cores": 8}}\n'
        'OCR_COMPUTE_OVERRIDES={"risk_pyramid": {"disk_size_gb": 100}}\n'
    )
    compute = build_resources(load_settings(env))["compute"]
    assert compute.backend == "dask" and compute.dask_cluster == {"slurm": {"cores": 8}}
    assert compute.profile_for(PROFILES["risk_pyramid"].tags("risk_pyramid"))[1].disk_size_gb == 100
    env.write_text("OCR_ENVIRONMENT=qa\nOCR_STORAGE_ROOT=/data\nOCR_COMPUTE_BACKEND=coiled\n")
    assert build_resources(load_settings(env))["compute"].backend == "coiled"
    assert (
        build_resources(load_settings(Path(__file__).parents[2] / "envs" / "example.env"))[
            "compute"
        ].backend
        == "local"
    )


def test_coiled_software_env_is_a_setting(tmp_path, monkeypatch):
    """CI names the software environment in COILED_SOFTWARE_ENV_NAME (or OCR_COILED_SOFTWARE):
    read once into the settings, and from there into the compute resource."""
    from ocr_resources.settings import load_settings

    env = tmp_path / "coiled.env"
    env.write_text(f"OCR_STORAGE_ROOT={tmp_path}\nOCR_COMPUTE_BACKEND=coiled\n")
    monkeypatch.delenv("OCR_COILED_SOFTWARE", raising=False)
    monkeypatch.setenv("COILED_SOFTWARE_ENV_NAME", "ocr-pr-42")
    settings = load_settings(env)
    assert settings.coiled_software == "ocr-pr-42"
    assert OcrCompute.from_settings(settings).coiled_software == "ocr-pr-42"


def test_an_override_to_another_architecture_is_refused_before_coiled(fake_coiled):
    """The software environment is built for the profiles' arm64 VMs: an x86 override would
    start workers that cannot run it, so the step refuses before any cluster is created."""
    x86 = {"building_pmtiles": {"vm_type": "c7i.8xlarge"}}
    compute = OcrCompute(backend="coiled", overrides=x86)
    refused = pytest.raises(ValueError, match=r"c7i\.8xlarge is x86_64.*aarch64")
    with refused, compute.session(_Context("building_pmtiles")):
        pass
    assert fake_coiled.created == []
