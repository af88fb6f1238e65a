"""Shared fixtures: the embedded sample, generated once per session into a temp root."""

from __future__ import annotations

import pytest

from ocr_resources.sample_data import SampleSpec, write_sample_data
from ocr_resources.storage import OcrStorage


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
    return sample_storage.region_grid()


@pytest.fixture
def env_root(tmp_path, sample_root) -> str:
    """A fresh storage root whose inputs are the session's sample (linked, read only)."""
    import os

    os.symlink(os.path.join(sample_root, "input"), tmp_path / "input")
    return str(tmp_path)


@pytest.fixture
def local_settings(env_root):
    from ocr_resources.settings import OcrSettings

    return OcrSettings(storage_root=env_root, environment="local")
