"""Fault injection for tests/e2e/test_faults.py: put this folder on PYTHONPATH and set
``OCR_TEST_FAULT`` and every Python process started (deploy, its run processes, Dagster's
step processes) kills itself with SIGKILL in the middle of one kind of write, as a crash,
an OOM kill or a lost VM would. Nothing here is imported when the variable is unset.

- ``raster_write``: region ``OCR_TEST_FAULT_REGION`` (default y1_x1) written into its
  Icechunk session, killed just before its commit
- ``region_commit_fails``: that region's commit raises ``OSError`` (as a full disk or a
  denied permission would) while the file ``OCR_TEST_FAULT_BLOCKER`` exists; remove the file
  and the next attempt succeeds
- ``parquet_write``: that region's GeoParquet file, half written
- ``pmtiles_build``: the buildings PMTiles archive, half written by "tippecanoe"
- ``after_region_event``: a region run's process, just after its ``region_buildings``
  materialization is recorded (before the run ends)
- ``deploy_during_consolidation``: the deploy process, killed by the step process that
  consolidates the buildings; that step lives on as an orphan for ``OCR_TEST_ORPHAN_SECONDS``
  (every inherited file closed), doing nothing more
- ``model_constant_changed``: the fire model's along-wind kernel length, 1 m longer (a code
  change that moves the model's code version)
- ``stall_regions``: a region run's step waits ``OCR_TEST_STALL_SECONDS`` (default 120)
  before computing its regions, so a test can interrupt it mid-run, never after it is done
"""

import os
import signal

FAULT = os.environ.get("OCR_TEST_FAULT", "")
# the region whose writes die
REGION = os.environ.get("OCR_TEST_FAULT_REGION", "y1_x1")
REGION_COMMIT = f"wrote region_id ({REGION})"


def _die() -> None:
    os.kill(os.getpid(), signal.SIGKILL)


def _on_region_commit(action) -> None:
    """Runs ``action`` in place of the raster store's commit of ``REGION``."""
    import icechunk

    original = icechunk.Session.commit

    def commit(self, message, *args, **kwargs):
        if message == REGION_COMMIT:
            action()
        return original(self, message, *args, **kwargs)

    icechunk.Session.commit = commit


def _raster_write() -> None:
    _on_region_commit(_die)


def _region_commit_fails() -> None:
    import errno

    blocker = os.environ["OCR_TEST_FAULT_BLOCKER"]

    def fail() -> None:
        if os.path.exists(blocker):
            raise OSError(errno.ENOSPC, "No space left on device (injected)", blocker)

    _on_region_commit(fail)


def _parquet_write() -> None:
    import geopandas

    original = geopandas.GeoDataFrame.to_parquet

    def to_parquet(self, path, *args, **kwargs):
        original(self, path, *args, **kwargs)
        if "geoparquet-regions" in str(path) and str(path).endswith(f"{REGION}.parquet"):
            size = os.path.getsize(path)
            with open(path, "r+b") as f:
                f.truncate(size // 2)
            _die()

    geopandas.GeoDataFrame.to_parquet = to_parquet


def _pmtiles_build() -> None:
    import subprocess

    original = subprocess.run

    def run(argv, *args, **kwargs):
        if str(argv[0]).endswith("tippecanoe") and "buildings.pmtiles" in " ".join(argv):
            # tippecanoe runs in its scratch folder on relative names
            output = os.path.join(kwargs.get("cwd") or "", argv[argv.index("-o") + 1])
            with open(output, "wb") as f:
                f.write(b"PMTiles\x03" + b"\0" * 1000)  # a header and nothing else
            _die()
        return original(argv, *args, **kwargs)

    subprocess.run = run


def _after_region_event() -> None:
    import dagster as dg

    original = dg.DagsterInstance.handle_new_event

    def handle_new_event(self, event, *args, **kwargs):
        original(self, event, *args, **kwargs)
        data = event.dagster_event
        if (
            data is not None
            and data.event_type == dg.DagsterEventType.ASSET_MATERIALIZATION
            and data.asset_key == dg.AssetKey("region_buildings")
        ):
            _die()

    dg.DagsterInstance.handle_new_event = handle_new_event


class _WrapOnImport:
    """Wraps ``module.name`` with ``wrap`` as soon as ``module`` is imported."""

    def __init__(self, module: str, name: str, wrap) -> None:
        self.module, self.name, self.wrap = module, name, wrap

    def find_spec(self, fullname, path=None, target=None):
        import importlib.util
        import sys

        if fullname != self.module:
            return None
        sys.meta_path.remove(self)
        spec = importlib.util.find_spec(fullname)
        original = spec.loader.exec_module

        def exec_module(module):
            original(module)
            setattr(module, self.name, self.wrap(getattr(module, self.name)))

        spec.loader.exec_module = exec_module
        return spec


def _deploy_during_consolidation() -> None:
    import sys
    import time

    def wrap(consolidate):
        def consolidate_as_orphan(*args, **kwargs):
            import psutil

            # the ``ocr deploy`` process this step runs under (deploy → dagster dev → code
            # server → run worker → this step), never the test runner
            ancestors = psutil.Process().parents()
            deploys = [
                p
                for p in ancestors
                if "deploy" in p.cmdline() and "ocr_jobs.cli" in " ".join(p.cmdline())
            ]
            if not deploys:
                raise RuntimeError("deploy_during_consolidation needs a deploy's step process")
            os.kill(deploys[0].pid, signal.SIGKILL)
            # an orphan holding no pipe of the test's (so the killed deploy's output ends) and
            # doing nothing more: only the next deploy's recovery ends it
            null = os.open(os.devnull, os.O_RDWR)
            for fd in (0, 1, 2):
                os.dup2(null, fd)
            os.closerange(3, 65536)
            time.sleep(float(os.environ.get("OCR_TEST_ORPHAN_SECONDS", "60")))
            os._exit(1)

        return consolidate_as_orphan

    sys.meta_path.insert(0, _WrapOnImport("ocr_assets.buildings", "consolidate_buildings", wrap))


def _stall_regions() -> None:
    import sys
    import time

    def wrap(run_regions):
        def stalled(*args, **kwargs):
            time.sleep(float(os.environ.get("OCR_TEST_STALL_SECONDS", "120")))
            return run_regions(*args, **kwargs)

        return stalled

    sys.meta_path.insert(0, _WrapOnImport("ocr_assets.regions", "run_regions", wrap))


def _model_constant_changed() -> None:
    import sys

    sys.meta_path.insert(
        0, _WrapOnImport("ocr_science.kernels", "ALONG_WIND_M", lambda metres: metres + 1)
    )


INJECT = {
    "after_region_event": _after_region_event,
    "deploy_during_consolidation": _deploy_during_consolidation,
    "raster_write": _raster_write,
    "region_commit_fails": _region_commit_fails,
    "parquet_write": _parquet_write,
    "pmtiles_build": _pmtiles_build,
    "stall_regions": _stall_regions,
    "model_constant_changed": _model_constant_changed,
}
if FAULT:
    INJECT[FAULT]()
