"""The code location's executor: one step in the run's process; several steps each in a process
forked from a server that imported the code location once for the run (unless the run's
config names another start method)."""

from __future__ import annotations

import os

import dagster as dg
import psutil
import pytest

from ocr_jobs.executor import DEFAULT_START_METHOD, in_process_when_one_step


@dg.op
def where_first() -> dict:
    return _where()


@dg.op
def where_second(first: dict) -> dict:
    return {"first": first, "second": _where()}


def _where() -> dict:
    """This process and its parent's command line."""
    parent = psutil.Process(os.getppid()).cmdline()
    return {"pid": os.getpid(), "parent": " ".join(parent)}


@dg.job(executor_def=in_process_when_one_step)
def two_steps() -> None:
    where_second(where_first())


@dg.job(executor_def=in_process_when_one_step)
def one_step() -> None:
    where_first()


@pytest.mark.parametrize(
    ("start_method", "parent_part"),
    [(None, "multiprocessing.forkserver"), ({"spawn": {}}, "pytest")],
)
def test_several_steps_fork_from_a_server_unless_the_run_says_otherwise(
    start_method, parent_part, tmp_path
):
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
        assert parent_part in step["parent"], step["parent"]
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
