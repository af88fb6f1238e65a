"""``ocr deploy`` and ``ocr rollback``: one environment's deployment as Dagster runs.

- ``plan``: the checks made without I/O, the region selection and the ``--dry-run`` plan
- ``deployment``: the deployment itself (storage checks, lock, wipe, runs, production pointer)
- ``lock``: one deployment per environment
- ``runner``: Dagster runs in the environment's own instance, settings passed as arguments
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
    RegionWorkers,
    RunOutcome,
    execute,
    instance_home,
    instance_variables,
    open_instance,
    reconstructable_job,
)

__all__ = [
    "DeployError",
    "DeployOptions",
    "DeployPlan",
    "DeployProgress",
    "DeployRefused",
    "DeployResult",
    "DeploymentLock",
    "DryRun",
    "RegionReport",
    "RegionWorkers",
    "RunOutcome",
    "check_storage",
    "committed_materialized_regions",
    "dry_run",
    "execute",
    "instance_home",
    "instance_variables",
    "open_instance",
    "output_locations",
    "plan_deploy",
    "publish_pointer",
    "read_region_report",
    "reconstructable_job",
    "run_deploy",
    "wipe_records",
]
