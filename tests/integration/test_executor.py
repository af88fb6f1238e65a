"""The code location's executor: one step in the run's process; several steps each in a process
forked from a server that imported the code location once for the run (unless the run's
config names another start method)."""

from __future__ import annotations

import os

import dagster as dg
import psutil
import pytest

from ocr_jobs.executor import (
    DEFAULT_START_METHOD,
    in_process_when_one_step,
    in_process_when_one_step_executor,
)


@dg.op
def where_first() -> dict:
    return _where()


@dg.op
def where_second(first: dict) -> dict:
    return {"first": first, "second": _where()}


def _where() -> dict:
    """This process, its parent and the parent's command line."""
    parent = psutil.Process(os.getppid())
    return {"pid": os.getpid(), "ppid": parent.pid, "parent": " ".join(parent.cmdline())}


@dg.job(executor_def=in_process_when_one_step)
def two_steps() -> None:
    where_second(where_first())


@dg.job(executor_def=in_process_when_one_step)
def one_step() -> None:
    where_first()


@pytest.mark.parametrize("start_method", [None, {"spawn": {}}])
def test_several_steps_fork_from_a_server_unless_the_run_says_otherwise(start_method, tmp_path):
    config = (
        {} if start_method is None else {"execution": {"config": {"start_method": start_method}}}
    )
    with (
        dg.DagsterInstance.local_temp(str(tmp_path)) as instance,
        dg.execute_job(dg.reconstructable(two_steps), instance, config) as result,
    ):
        assert result.success
        seen = result.output_for_node("where_second")
    for step in (seen["first"], seen["second"]):
        assert step["pid"] != os.getpid()
        if start_method is None:  # children of the forkserver
            assert "multiprocessing.forkserver" in step["parent"], step["parent"]
        else:  # spawned by this (the run's) process
            assert step["ppid"] == os.getpid(), step["parent"]
    assert seen["first"]["pid"] != seen["second"]["pid"]  # a process per step


def test_one_step_runs_in_the_runs_own_process(tmp_path):
    with (
        dg.DagsterInstance.local_temp(str(tmp_path)) as instance,
        dg.execute_job(dg.reconstructable(one_step), instance) as result,
    ):
        assert result.success
        assert result.output_for_node("where_first")["pid"] == os.getpid()


def test_the_default_preloads_the_code_location_module():
    assert DEFAULT_START_METHOD == {"forkserver": {"preload_modules": ["ocr_jobs.definitions"]}}


WINDOW_S = 1.5


@dg.op(out=dg.Out(dict))
def waits_for_its_cluster() -> dict:
    """A step whose work runs elsewhere: it only waits (as a step waits for its cluster)."""
    import time

    start = time.time()
    time.sleep(WINDOW_S)
    return {"start": start, "end": time.time()}


@dg.graph
def four_waiting_steps() -> None:
    for i in range(4):
        waits_for_its_cluster.alias(f"wait_{i}")()


def limited_by_cpus() -> dg.JobDefinition:
    return four_waiting_steps.to_job("limited_by_cpus", executor_def=in_process_when_one_step)


def limited_by_clusters() -> dg.JobDefinition:
    return four_waiting_steps.to_job(
        "limited_by_clusters", executor_def=in_process_when_one_step_executor(4)
    )


def _most_at_once(spans: list[dict]) -> int:
    return max(sum(s["start"] <= t["start"] < s["end"] for s in spans) for t in spans)


@pytest.mark.parametrize("job", ["limited_by_cpus", "limited_by_clusters"])
def test_a_step_limit_lets_waiting_steps_run_past_the_cpu_count(job, tmp_path):
    """Dagster's default runs at most the CPU count of steps at once; the limit the code
    location sets for cluster backends (``step_concurrency``: the cluster limit) runs all
    four waiting steps together."""
    with (
        dg.DagsterInstance.local_temp(str(tmp_path)) as instance,
        dg.execute_job(dg.reconstructable(globals()[job]), instance) as result,
    ):
        assert result.success
        spans = [result.output_for_node(f"wait_{i}") for i in range(4)]
    expected = 4 if job == "limited_by_clusters" else min(4, os.cpu_count() or 1)
    assert _most_at_once(spans) == expected
