"""``ocr deploy`` and ``ocr rollback``: one environment's deployment as Dagster runs.

- ``plan``: the checks made without I/O, the region selection and the ``--dry-run`` plan
- ``deployment``: the deployment itself (storage checks, lock, wipe, runs, production pointer)
- ``lock``: one deployment per environment
- ``services``: the webserver (and daemon) the runs go through: Dagster's run coordinator
- ``runner``: the deployment's runs submitted and followed, its settings written for them
"""

from ocr_jobs.deploy.deployment import (
    DeployProgress,
    DeployResult,
    check_storage,
    committed_materialized_regions,
    publish_pointer,
    read_region_report,
    run_deploy,
    wipe_records,
)
from ocr_jobs.deploy.lock import DeploymentLock
from ocr_jobs.deploy.plan import (
    DeployError,
    DeployOptions,
    DeployPlan,
    DeployRefused,
    DryRun,
    RegionReport,
    dry_run,
    output_locations,
    plan_deploy,
)
from ocr_jobs.deploy.runner import (
    DeploymentRuns,
    RunOutcome,
    instance_home,
    instance_variables,
    open_instance,
)

__all__ = [
    "DeployError",
    "DeployOptions",
    "DeployPlan",
    "DeployProgress",
    "DeployRefused",
    "DeployResult",
    "DeploymentLock",
    "DeploymentRuns",
    "DryRun",
    "RegionReport",
    "RunOutcome",
    "check_storage",
    "committed_materialized_regions",
    "dry_run",
    "instance_home",
    "instance_variables",
    "open_instance",
    "output_locations",
    "plan_deploy",
    "publish_pointer",
    "read_region_report",
    "run_deploy",
    "wipe_records",
]
