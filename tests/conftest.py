"""Shared fixtures: the embedded sample, generated once per session into a temp root."""

from __future__ import annotations

import pytest

from ocr_jobs.process_env import disable_telemetry
from ocr_resources.sample_data import SampleSpec, write_sample_data
from ocr_resources.storage import OcrStorage

# every process a test starts (ocr, dg dev, the webserver, the daemon) inherits it
disable_telemetry()


@pytest.fixture(scope="session")
def sample_root(tmp_path_factory) -> str:
    root = tmp_path_factory.mktemp("ocr-sample")
    write_sample_data(OcrStorage(root=str(root)), SampleSpec())
    return str(root)


@pytest.fixture(scope="session")
def sample_storage(sample_root) -> OcrStorage:
    """Read access to the sample; tests that write use their own environment name."""
    return OcrStorage(root=sample_root, environment="local")


@pytest.fixture(scope="session")
def sample_grid(sample_storage):
    return sample_storage.regions.region_grid()


@pytest.fixture
def env_root(tmp_path, sample_root) -> str:
    """A fresh storage root whose inputs are the session's sample: its default input root
    (the sibling ``<root>-inputs``) links to the sample's, read only."""
    import os

    os.symlink(f"{sample_root}-inputs", f"{tmp_path}-inputs")
    return str(tmp_path)


@pytest.fixture
def local_settings(env_root):
    from ocr_resources.settings import OcrSettings

    return OcrSettings(storage_root=env_root, environment="local")


# The tests are in folders by what they test: unit/ (pure functions, no I/O of the project's
# own), integration/ (resources, assets and Dagster in process, with real parts: a LocalCluster,
# an S3 API server on loopback) and e2e/ (the ``ocr`` command, Dagster's services, the UI, a
# browser). Each test carries its folder's marker (``pytest -m unit``). A module that runs
# whole deploys, a daemon, a browser or a long computation marks itself ``slow``
# (``make test-fast`` leaves those out). Slow modules start first, end-to-end ones first among
# them, so that the test workers (make test: one module per worker at a time) do not end the
# suite with one long module each.
KINDS = ("e2e", "integration", "unit")


def _kind(item: pytest.Item) -> str:
    folder = item.path.parent.name
    if folder not in KINDS:
        raise pytest.UsageError(f"{item.path}: a test module belongs in one of tests/{KINDS}")
    return folder


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        item.add_marker(getattr(pytest.mark, _kind(item)))
    items.sort(key=lambda item: (item.get_closest_marker("slow") is None, KINDS.index(_kind(item))))


@pytest.fixture(autouse=True)
def _dask_config_left_as_found():
    """A test that leaves dask's global scheduler at "dask.distributed" with no client to serve
    it fails itself: every later dask compute in its worker process would fail instead (the
    order-dependent failures a default client once caused)."""
    yield
    import dask

    if dask.config.get("scheduler", None) not in ("dask.distributed", "distributed"):
        return
    from distributed import Client

    try:
        Client.current(allow_global=True)
    except ValueError:
        dask.config.refresh()  # the next test starts clean
        pytest.fail("dask's scheduler was left at dask.distributed with no client active")
