"""The compute resource: where each asset's heavy work runs.

Backends: ``local`` (default; a ``LocalCluster`` sized to the machine, or in process for the
single-function steps), ``coiled`` (a Coiled cluster on the asset's documented VM type) and
``dask`` (an existing scheduler address, or any cluster dagster-dask can describe: SLURM, PBS,
Kubernetes, …). The VM profile of each asset comes from one table, ``PROFILES``, carried by
the asset as op tags; config can override it per asset.

(Just over 300 lines: the profile table, the session a step holds and the three backends that
open it are read together when a backend changes; split, each would need the others.)
"""

from __future__ import annotations

import logging
import os
import re
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import FIRST_COMPLETED, Future
from concurrent.futures import wait as wait_futures
from contextlib import contextmanager
from dataclasses import asdict, dataclass, replace
from functools import partial
from importlib import import_module
from typing import Any, Literal

import dask
import psutil
from dagster import ConfigurableResource
from pydantic import Field

from ocr_resources.settings import OcrSettings
from ocr_resources.storage import OcrStorage
from ocr_science.parallel import thread_limit, worker_threads

TAG_PREFIX = "ocr/"
COILED_SPOT_POLICY = "spot_with_fallback"
COILED_TAGS = {"Project": "OCR"}
# set before Dask starts on the VMs: worker processes that are not daemonic, so a step may
# start worker processes of its own (the tile steps' GeoJSON lines; a daemonic one may not)
COILED_ENVIRON = {"DASK_DISTRIBUTED__WORKER__DAEMON": "False"}


@dataclass(frozen=True)
class ComputeProfile:
    """A Coiled VM for the workers, one for the scheduler, the worker disk (GB), how many
    workers a step's cluster has and how many tasks each runs at once (None: one per vCPU).

    A scheduler VM of the workers' own type also runs a worker (Coiled's
    ``extra_worker_on_scheduler``): a one-worker step is one VM, not two of that size."""

    vm_type: str
    scheduler_vm_type: str | None = None
    disk_size_gb: int | None = None
    workers: int = 1
    tasks_per_worker: int | None = None

    @property
    def worker_on_scheduler(self) -> bool:
        return self.scheduler_vm_type == self.vm_type

    def vms(self, workers: int | None = None) -> int:
        """VMs of one cluster of this profile with ``workers`` workers (default: its own)."""
        workers = self.workers if workers is None else workers
        if self.worker_on_scheduler:
            return max(1, workers)
        return workers + 1  # the scheduler's VM (Coiled's default type when none is named)

    def describe(self) -> str:
        """As docs/design.md §2 writes it: ``vm / scheduler vm, N GB``."""
        text = self.vm_type + (f" / {self.scheduler_vm_type}" if self.scheduler_vm_type else "")
        return text + (f", {self.disk_size_gb} GB" if self.disk_size_gb else "")

    def tags(self, name: str) -> dict[str, str]:
        values = {"profile": name, **{k: v for k, v in asdict(self).items() if v is not None}}
        return {f"{TAG_PREFIX}{k}": str(v) for k, v in values.items()}

    @classmethod
    def from_tags(cls, tags: dict[str, str]) -> tuple[str, ComputeProfile]:
        if f"{TAG_PREFIX}profile" not in tags:
            raise KeyError("this step carries no compute profile (ocr/profile op tag)")
        disk = tags.get(f"{TAG_PREFIX}disk_size_gb")
        per_worker = tags.get(f"{TAG_PREFIX}tasks_per_worker")
        return tags[f"{TAG_PREFIX}profile"], cls(
            vm_type=tags[f"{TAG_PREFIX}vm_type"],
            scheduler_vm_type=tags.get(f"{TAG_PREFIX}scheduler_vm_type"),
            disk_size_gb=int(disk) if disk else None,
            workers=int(tags.get(f"{TAG_PREFIX}workers", 1)),
            tasks_per_worker=int(per_worker) if per_worker else None,
        )


_PMTILES = ComputeProfile("c8g.12xlarge", "c8g.12xlarge", 250)
# docs/design.md §2, "compute profile" column: the one source of truth (the docs' performance
# page renders it when the site is built, and a test compares it with docs/design.md). Worker
# counts and tasks per worker are the CONUS cost model's (bench/conus.py): a region run's 40
# regions (OCR_REGIONS_PER_RUN) in two rounds on four workers, five regions at a time on each
# (a region's 3–4 GiB peak ×5 stays under 75 % of an m8g.2xlarge's 32 GiB; its ~68 CPU-s in
# ~54 s keep the 8 vCPUs busy); the pyramid's graph over two m8g.4xlarge; every other step is
# one task on one VM.
PROFILES: dict[str, ComputeProfile] = {
    "region_risk_raster": ComputeProfile("m8g.2xlarge", workers=4, tasks_per_worker=5),
    "risk_pyramid": ComputeProfile("m8g.4xlarge", "m8g.4xlarge", workers=2),
    "buildings_geoparquet": ComputeProfile("c8g.12xlarge", "c8g.12xlarge"),
    "region_risk_summary_stats": ComputeProfile("m8g.16xlarge", "m8g.16xlarge"),
    "regional_analysis_files": ComputeProfile("r8g.4xlarge", "r8g.4xlarge"),
    "regional_pmtiles": _PMTILES,
    "building_centroid_pmtiles": _PMTILES,
    "building_pmtiles": _PMTILES,
}


# AWS Graviton instance families carry a "g" after their generation (m8g, c8g, r8g, m7gd, …)
_GRAVITON = re.compile(r"^[a-z]+\d+g[a-z]*\.")


def vm_architecture(vm_type: str) -> str:
    """The CPU architecture of an EC2 instance type, as Coiled names it."""
    return "aarch64" if _GRAVITON.match(vm_type) else "x86_64"


def software_architecture() -> str:
    """The one architecture of every VM in ``PROFILES`` (docs/design.md §2: all Graviton,
    arm64): what the Coiled software environment is built for, so the two cannot disagree."""
    found = {
        vm_architecture(vm)
        for p in PROFILES.values()
        for vm in (p.vm_type, p.scheduler_vm_type)
        if vm
    }
    if len(found) != 1:
        raise ValueError(f"the compute profiles mix CPU architectures {sorted(found)}")
    return found.pop()


def software_env_command(name: str, workspace: str, requirements: str) -> list[str]:
    """``coiled env create`` for the profiles' VMs: their architecture, the project's pinned
    dependencies (a pip requirements file) and the project's own code."""
    return [
        "coiled",
        "env",
        "create",
        "--name",
        name,
        "--workspace",
        workspace,
        "--architecture",
        software_architecture(),
        "--pip",
        requirements,
        "--include-local-code",
    ]


def profile_tags(name: str) -> dict[str, str]:
    """Op tags that carry an asset's profile from the table."""
    return PROFILES[name].tags(name)


def render_profile_table() -> str:
    """Markdown of the profile table, for the docs (docs/performance.md, generated)."""
    rows = [
        "| asset | Coiled VM | scheduler VM | disk | workers | tasks per worker | VMs |",
        "|---|---|---|---|---|---|---|",
    ]
    for name, p in PROFILES.items():
        disk = f"{p.disk_size_gb} GB" if p.disk_size_gb else "–"
        scheduler = p.scheduler_vm_type or "Coiled's default"
        tasks = p.tasks_per_worker or "one per vCPU"
        rows.append(
            f"| `{name}` | {p.vm_type} | {scheduler} | {disk} | {p.workers} | {tasks} | {p.vms()} |"
        )
    return "\n".join(rows)


def _limited(threads: int | None, fn: Callable[..., Any], *args: Any) -> Any:
    """``fn(*args)`` with its compiled loops capped at ``threads`` (where it runs)."""
    with thread_limit(threads):
        return fn(*args)


def _with_storage(spec: dict, fn: Callable[..., Any], *args: Any) -> Any:
    """``fn(storage, *args)`` with the storage rebuilt from ``spec``: Dagster resources do not
    pickle, so a remote worker receives plain values."""
    return fn(OcrStorage(**spec), *args)


def _graph_on_cluster(fn: Callable[..., Any], *args: Any) -> Any:
    """On a worker: ``fn(*args)`` with the cluster as the scheduler of the graph it computes
    (the task secedes from the worker's thread pool while it waits, so the worker's threads
    run the graph's tasks)."""
    from distributed import worker_client

    with worker_client() as client, dask.config.set(scheduler=client):
        return fn(*args)


@dataclass
class ComputeSession:
    """An open cluster (or none, in process) for one step."""

    backend: str
    profile_name: str
    profile: ComputeProfile
    client: Any = None
    workers: int = 0  # 0: no cluster, the work runs in this process
    started: float = 0.0
    threads: int | None = None  # cap on each task's compiled-loop threads (None: all CPUs)

    def submit(self, fn: Callable, *args: Any) -> Any:
        """Run ``fn(*args)`` on the cluster, or here when there is none; return its result."""
        task = partial(_limited, self.threads, fn)
        if self.client is None:
            return task(*args)
        return self.client.submit(task, *args, pure=False).result()

    def start(self, fn: Callable, *args: Any) -> Any:
        """Start ``fn(*args)`` and return its future at once (futures among ``args`` are
        waited for first, on the cluster); here, when there is no cluster, it runs now and
        returns a finished future."""
        task = partial(_limited, self.threads, fn)
        if self.client is not None:
            return self.client.submit(task, *args, pure=False)
        done: Future = Future()
        try:
            done.set_result(task(*(a.result() if isinstance(a, Future) else a for a in args)))
        except Exception as exc:  # handed to whoever waits on the future
            done.set_exception(exc)
        return done

    def first_done(self, futures: list[Any], timeout: float | None) -> set[Any]:
        """The futures of ``futures`` that are done, waiting up to ``timeout`` s for one."""
        if self.client is None:
            return set(wait_futures(futures, timeout, FIRST_COMPLETED).done)
        # done callbacks, not distributed.wait(): that needs a current client, and making
        # ours current sets dask's scheduler for the whole process, the in-process workers'
        # tasks too
        one_done = threading.Event()
        for future in futures:
            future.add_done_callback(lambda _: one_done.set())
        if futures and not any(f.done() for f in futures):
            one_done.wait(timeout)
        return {f for f in futures if f.done()}

    def run_graph(self, fn: Callable, *args: Any) -> Any:
        """``fn(*args)``, a function that builds and computes a dask graph: on the cluster, it
        runs as a task that hands its graph to the cluster's scheduler (``worker_client``:
        the graph is built and its data read and written on the workers, never on the
        machine running the step — a CONUS pyramid's graph has millions of tasks); here, on
        this process's threads, capped like every task's compiled loops."""
        if self.client is not None:
            return self.client.submit(_graph_on_cluster, fn, *args, pure=False).result()
        with self.graph_scheduler():
            return fn(*args)

    @contextmanager
    def graph_scheduler(self) -> Iterator[None]:
        """Dask graphs computed in this block run on this process's threads, capped like
        every task's compiled loops."""
        with (
            thread_limit(self.threads),
            dask.config.set(scheduler="threads", num_workers=worker_threads()),
        ):
            yield

    def map(self, fn: Callable, *iterables: Any) -> list[Any]:
        """Run ``fn`` over the arguments in parallel on the cluster (in order here)."""
        task = partial(_limited, self.threads, fn)
        if self.client is None:
            return [task(*a) for a in zip(*iterables, strict=True)]
        return self.client.gather(self.client.map(task, *iterables, pure=False))

    def metadata(self) -> dict[str, Any]:
        if self.backend == "coiled":
            vm = self.profile.vm_type
        elif self.workers:
            vm = f"{self.backend} ({self.workers} worker(s))"
        else:
            vm = f"{self.backend} (in process)"
        return {
            "compute_backend": self.backend,
            "compute_profile": self.profile_name,
            "vm_type": vm,
            "scheduler_vm_type": self.profile.scheduler_vm_type
            if self.backend == "coiled"
            else None,
            "compute_seconds": round(time.perf_counter() - self.started, 3),
        }


# resource field -> the setting it comes from
SETTINGS: dict[str, str] = {
    "backend": "compute_backend",
    "local_workers": "local_workers",
    "local_dashboard": "local_dashboard",
    "scheduler_address": "dask_scheduler_address",
    "dask_cluster": "dask_cluster",
    "coiled_region": "coiled_region",
    "coiled_workers": "coiled_workers",
    "threads": "threads",
    "coiled_software": "coiled_software",
    "overrides": "compute_overrides",
}


def _default(setting: str) -> Any:
    return OcrSettings.model_fields[setting].default


class OcrCompute(ConfigurableResource):
    """Opens a cluster for a step from the step's profile, and always closes it."""

    # Each field's default and meaning is the setting's (OCR_<SETTING>): stated there, once.
    backend: Literal["local", "coiled", "dask"] = _default("compute_backend")
    local_workers: int = Field(
        default=_default("local_workers"), description="0: sized to the machine"
    )
    local_dashboard: bool = _default("local_dashboard")
    local_processes: bool = False
    scheduler_address: str | None = _default("dask_scheduler_address")
    dask_cluster: dict[str, dict[str, Any]] | None = Field(
        default=_default("dask_cluster"),
        description='dagster-dask cluster config, e.g. {"slurm": {...}}',
    )
    coiled_region: str = _default("coiled_region")
    coiled_workers: int | None = Field(
        default=_default("coiled_workers"), description="None: each step's profile count"
    )
    coiled_software: str | None = _default("coiled_software")
    threads: int | None = _default("threads")
    overrides: dict[str, dict[str, Any]] = Field(
        default_factory=dict,
        description="per-asset profile fields, e.g. {building_pmtiles: {vm_type: …}}",
    )

    @classmethod
    def from_settings(cls, settings: OcrSettings) -> OcrCompute:
        """The environment's compute: each field from its setting (``SETTINGS`` maps them)."""
        return cls(**{field: getattr(settings, name) for field, name in SETTINGS.items()})

    def run(
        self, context: Any, fn: Callable[..., Any], storage: Any, *args: Any
    ) -> tuple[Any, dict]:
        """``fn(storage, *args)`` on the step's compute; (result, compute metadata)."""
        with self.session(context) as session:
            result = session.submit(_with_storage, storage.spec(), fn, *args)
            return result, session.metadata()

    def run_graph(
        self, context: Any, fn: Callable[..., Any], storage: Any, *args: Any
    ) -> tuple[Any, dict]:
        """``fn(storage, *args)``, which computes a dask graph, on every worker of the step's
        cluster (not as one task on one of them) or, without one, on this process's threads;
        (result, compute metadata)."""
        with self.session(context) as session:
            result = session.run_graph(_with_storage, storage.spec(), fn, *args)
            return result, session.metadata()

    def profile_for(self, tags: dict[str, str]) -> tuple[str, ComputeProfile]:
        name, profile = ComputeProfile.from_tags(tags)
        return name, replace(profile, **self.overrides.get(name, {}))

    @contextmanager
    def session(
        self, context: Any, tasks: int = 1, bytes_per_task: int = 0
    ) -> Iterator[ComputeSession]:
        """A cluster for this step: ``tasks`` parallel tasks of ``bytes_per_task`` each.

        ``tasks == 1`` on the local backend runs in process (no cluster to start)."""
        name, profile = self.profile_for(dict(context.op_execution_context.op_def.tags))
        session = ComputeSession(
            self.backend, name, profile, started=time.perf_counter(), threads=self.threads
        )
        cluster = None
        # dask computes inside a task run in the task's own threads, not through the cluster:
        # with no scheduler set, dask asks distributed for a client, and a worker thread of
        # an in-process cluster then makes its own client the default of this whole process
        # (one left behind by a closed cluster hung or failed every later compute here)
        with dask.config.set(scheduler="threads"):
            try:
                if self.backend == "local":
                    if tasks > 1:
                        cluster = self._local_cluster(tasks, bytes_per_task)
                        session.workers = len(cluster.workers)
                        if self.local_dashboard:
                            context.log.info(f"Dask dashboard: {cluster.dashboard_link}")
                elif self.backend == "coiled":
                    cluster = self._coiled_cluster(context, name, profile)
                    session.workers = self.workers_for(profile)
                else:
                    cluster = self._dask_cluster()
                if cluster is not None or self.backend == "dask":
                    from dask.distributed import Client

                    # not this process's default client: only the session sends it work, and
                    # closing it leaves dask's global config as it was
                    address = cluster.scheduler_address if cluster is not None else None
                    address = address or self.scheduler_address
                    session.client = Client(address, set_as_default=False)
                if self.backend == "dask":
                    session.workers = len(session.client.scheduler_info()["workers"])
                yield session
            finally:
                if session.client is not None:
                    session.client.close()
                if cluster is not None:
                    cluster.close()

    def _local_cluster(self, tasks: int, bytes_per_task: int):
        """As many single-threaded workers as tasks, cores and memory allow."""
        from dask.distributed import LocalCluster

        available = psutil.virtual_memory().available
        fit = max(1, int(available * 0.8 // bytes_per_task)) if bytes_per_task else tasks
        workers = self.local_workers or max(1, min(tasks, os.cpu_count() or 1, fit))
        # threads share this process (no start-up, no pickling); processes listen on loopback
        network = {"host": "127.0.0.1"} if self.local_processes else {}
        return LocalCluster(
            n_workers=workers,
            threads_per_worker=1,
            processes=self.local_processes,
            memory_limit=int(available * 0.8 / workers),
            # the scheduler's HTTP routes on loopback, any free port (no clashes); the Dask
            # dashboard on them only when asked for: it costs ~0.7 s a start
            dashboard_address="127.0.0.1:0",
            scheduler_kwargs={"dashboard": self.local_dashboard},
            silence_logs=logging.WARNING,
            **network,
        )

    def workers_for(self, profile: ComputeProfile) -> int:
        """A step's Coiled workers: OCR_COILED_WORKERS for every step when set, else the
        profile's own count."""
        return self.coiled_workers or profile.workers

    def coiled_cluster_kwargs(
        self, context: Any, name: str, profile: ComputeProfile
    ) -> dict[str, Any]:
        """Exactly what ``coiled.Cluster`` receives for a step."""
        if vm_architecture(profile.vm_type) != software_architecture():
            raise ValueError(
                f"{name}: VM {profile.vm_type} is {vm_architecture(profile.vm_type)}, but the "
                f"software environment is built for {software_architecture()} (the profiles' "
                "architecture); override with a VM of that architecture"
            )
        kwargs: dict[str, Any] = {
            "name": f"ocr-{name.replace('_', '-')}-{context.run.run_id[:8]}",
            "n_workers": self.workers_for(profile),
            "worker_vm_types": [profile.vm_type],
            "region": self.coiled_region,
            "spot_policy": COILED_SPOT_POLICY,
            "tags": dict(COILED_TAGS),
            "environ": dict(COILED_ENVIRON),
            "shutdown_on_close": True,
        }
        if profile.scheduler_vm_type:
            kwargs["scheduler_vm_types"] = [profile.scheduler_vm_type]
        if profile.worker_on_scheduler:
            # the scheduler's VM, of the workers' type, runs one of the n_workers
            kwargs["extra_worker_on_scheduler"] = True
        if profile.tasks_per_worker:
            kwargs["worker_options"] = {"nthreads": profile.tasks_per_worker}
        if profile.disk_size_gb:
            kwargs["worker_disk_size"] = profile.disk_size_gb
        if self.coiled_software:
            kwargs["software"] = self.coiled_software
        else:
            context.log.warning(
                "OCR_COILED_SOFTWARE / COILED_SOFTWARE_ENV_NAME is not set; package sync will be "
                "used"
            )
        return kwargs

    def _coiled_cluster(self, context: Any, name: str, profile: ComputeProfile):
        import coiled

        return coiled.Cluster(**self.coiled_cluster_kwargs(context, name, profile))

    def _dask_cluster(self):
        """A cluster described the dagster-dask way, or none when an address is given."""
        if self.scheduler_address:
            return None
        if not self.dask_cluster or len(self.dask_cluster) != 1:
            raise ValueError(
                "the dask backend needs OCR_DASK_SCHEDULER_ADDRESS or one cluster type in "
                'OCR_DASK_CLUSTER, e.g. {"slurm": {"cores": 8}}'
            )
        from dagster_dask.resources import DaskClusterTypes

        kind, options = next(iter(self.dask_cluster.items()))
        if kind not in DaskClusterTypes:
            raise ValueError(
                f"unknown dask cluster type {kind!r}; expected one of {sorted(DaskClusterTypes)}"
            )
        meta = DaskClusterTypes[kind]
        return getattr(import_module(meta["module"]), meta["class"])(**options)
