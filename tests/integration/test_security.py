"""Security: secrets stay out of logs, metadata and errors; user values stay out of SQL
text; ids, versions and environment names are checked before they become paths; a wipe
cannot leave its environment's prefix."""

import numpy as np
import pyarrow as pa
import pytest

from ocr_resources.layout import StorageLayout
from ocr_resources.storage import OcrStorage
from ocr_science import statistics
from ocr_science.regions import RegionIdError
from tests.e2e.test_deploy import _files_containing, deploy_with_blocked_region

pytestmark = pytest.mark.slow

SECRETS = {
    "AWS_ACCESS_KEY_ID": "AKIASECRETCANARY0001",
    "AWS_SECRET_ACCESS_KEY": "aws-secret-canary-9f8e7d",
    "AWS_SESSION_TOKEN": "aws-session-canary-1a2b3c",
    "OCR_DAGSTER_PG_URL": "postgresql+psycopg2://ocr:pg-password-canary@127.0.0.1:9/dagster",
    "COILED_TOKEN": "coiled-token-canary-4d5e6f",
}


def test_secrets_never_reach_logs_metadata_or_errors(tmp_path, sample_root):
    """A deploy with secrets in its environment, one region succeeding and one failing with
    an exception: no secret in the output, the run and event storage, the compute logs or
    the outputs. The failing region's id is found there (the search does read them)."""
    run, *_ = deploy_with_blocked_region(tmp_path, sample_root, retries=0, extra=SECRETS)
    assert run.returncode == 1, run.stdout + run.stderr
    for value in SECRETS.values():
        assert value not in run.stdout + run.stderr
    assert _files_containing(tmp_path, list(SECRETS.values())) == {}
    canary = _files_containing(tmp_path / "dagster-homes", ["y1_x2"])
    assert any(name.endswith(".db") for name in canary), canary


class _RecordingConnection:
    """A DuckDB connection that keeps the text of every statement it runs."""

    def __init__(self, con) -> None:
        self.con, self.statements = con, []

    def execute(self, sql, *args, **kwargs):
        self.statements.append(sql)
        return self.con.execute(sql, *args, **kwargs)

    def __getattr__(self, name):
        return getattr(self.con, name)


HOSTILE_GEOIDS = ["06'); DROP TABLE buildings_scan; --", '06" OR 1=1 --', "32$len;"]


def test_user_values_never_enter_sql_text():
    """GEOIDs are data: statistics over hostile GEOIDs run, count them as units, and none of
    them appears in any statement's text (values are parameters or registered scans)."""
    con = _RecordingConnection(statistics.connect())
    buildings = pa.table(
        {
            "GEOID": HOSTILE_GEOIDS,
            **{v: np.float32([0.5, 1.5, 0.0]) for v in statistics.STAT_VARIABLES},
        }
    )
    stats = statistics.level_statistics(con, buildings, "states")
    counts = dict(zip(stats["GEOID"], stats["building_count"], strict=True))
    assert counts == {"06": 2, "32": 1}  # the states of the hostile GEOIDs, counted
    assert con.statements
    for sql in con.statements:
        for geoid in HOSTILE_GEOIDS:
            assert geoid not in sql and "DROP" not in sql


@pytest.mark.parametrize(
    "region_id",
    ["../y1_x1", "y1_x1/../../etc", "y1_x1\n", "/y1_x1", "y1_x1 ", "Y1_X1", "y1_x1.parquet", ""],
)
def test_region_ids_are_checked_before_they_become_paths(region_id):
    with pytest.raises(RegionIdError, match="malformed"):
        StorageLayout("/data", "qa").region_buildings(region_id)


@pytest.mark.parametrize("environment", ["..", "../qa", "qa/../prod", "", "QA", "qa\n"])
def test_environment_names_are_checked_before_they_become_paths(environment):
    with pytest.raises(ValueError, match="not a plain name"):
        StorageLayout("/data", environment)


@pytest.mark.parametrize("version", ["../1.0.0", "1.0.0/../..", "1.0", "v1.0.0", "1.0.0\n"])
def test_versions_are_checked_before_they_become_paths(version):
    with pytest.raises(ValueError, match="not a semantic version"):
        StorageLayout("/data", "production", version)


@pytest.mark.parametrize("crafted", ["{base}/env/../other", "{base}//other", "{base}/./other"])
def test_wipe_cannot_escape_the_environment_prefix_with_crafted_roots(tmp_path, crafted):
    """A root that only looks like a folder (``..``, ``.``, doubled ``/``) is refused before
    anything is deleted; a plain root wipes only its environment's prefixes."""
    neighbour = tmp_path / "other" / "output" / "fire-risk" / "tensor" / "staging" / "keep"
    mine = tmp_path / "other" / "output" / "fire-risk" / "tensor" / "qa" / "mine"
    for path in (neighbour, mine):
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text("data")
    storage = OcrStorage(root=crafted.format(base=tmp_path), environment="qa")
    with pytest.raises(PermissionError, match="not this environment's prefix"):
        storage.files.wipe_environment()
    assert neighbour.exists() and mine.exists()
    wiped = OcrStorage(root=str(tmp_path / "other"), environment="qa").files.wipe_environment()
    assert wiped == [str(mine.parent)]
    assert neighbour.exists() and not mine.exists()
