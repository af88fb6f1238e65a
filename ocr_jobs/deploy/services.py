"""The Dagster services a deployment's runs go through: the webserver its runs are submitted
to, Dagster's queued run coordinator, and the daemon that launches them.

``ocr deploy`` is not an orchestrator of its own: it submits runs over the webserver's GraphQL
API (what the UI does), the daemon dequeues them within the pools' limits and launches each in
a process of the code server, run monitoring and run retries look after them. When a daemon
already serves the environment's instance (``ocr dev`` open on it), the deploy starts only a
webserver and that daemon launches its runs; else it starts ``dagster dev`` (webserver, daemon,
one code server) for its own lifetime.
"""

from __future__ import annotations

import contextlib
import ctypes
import fcntl
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import IO, Any

import requests

from ocr_jobs.deploy.plan import DeployError
from ocr_resources.settings import packaged_file

START_TIMEOUT_SECONDS = 300  # the code location's import is most of it (~10 s on 2 cores)
STOP_GRACE_SECONDS = 30
LOCATION = "ocr"  # the workspace's code location name (workspace.yaml)


class ServicesError(DeployError):
    """The webserver did not start, or refused a request: the message says which and why."""


def workspace_file() -> Path:
    """The workspace every door loads (the top-level ``workspace.yaml`` links to it)."""
    return packaged_file("workspace.yaml")


UI_LOCK = ".ocr-dev.lock"  # in the instance home: held by ``ocr dev`` while its UI runs


@contextlib.contextmanager
def ui_running(home: Path) -> Iterator[None]:
    """Held by ``ocr dev`` while its webserver and daemon serve the instance at ``home``: an
    exclusive ``flock``, which the kernel releases however ``ocr dev`` ends."""
    fd = os.open(home / UI_LOCK, os.O_CREAT | os.O_RDWR, 0o644)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise ServicesError(
                f"an ocr dev already serves the instance at {home}: use its UI, or stop it "
                "first (two daemons on one instance would both launch its queued runs)"
            ) from None
        yield
    finally:
        os.close(fd)


def ui_daemon_runs(home: Path) -> bool:
    """Whether ``ocr dev`` serves the instance at ``home`` now (its daemon launches the runs
    submitted to it). A daemon's heartbeat cannot tell: it stays fresh for up to a minute
    after the daemon stopped."""
    fd = os.open(home / UI_LOCK, os.O_CREAT | os.O_RDWR, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        return True
    finally:
        os.close(fd)
    return False


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


# prctl(2), looked up before any child is forked (a child runs nothing but the call itself)
_PRCTL = ctypes.CDLL(None, use_errno=True).prctl if sys.platform.startswith("linux") else None
PR_SET_PDEATHSIG = 1


def _end_with_parent() -> None:
    """In the child before it runs: SIGTERM when the deploy's process ends, however it ends
    (Linux), so a killed deploy leaves no webserver or daemon behind; its runs finish in the
    code server, which outlives it until they end."""
    if _PRCTL is not None:
        _PRCTL(PR_SET_PDEATHSIG, signal.SIGTERM)


class DagsterServices:
    """A webserver on a free loopback port (with a daemon unless one serves the instance) for
    the ``with`` block; ``graphql`` sends it requests. ``env`` is the children's environment
    (``DAGSTER_HOME`` = the environment's instance home, the settings' env file); their output
    goes to ``output`` (a log file, or None: the terminal)."""

    def __init__(self, env: dict[str, str], own_daemon: bool, output: IO[str] | None) -> None:
        self.port = _free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.own_daemon = own_daemon
        self._env = env
        self._output = output
        self._process: subprocess.Popen | None = None

    def __enter__(self) -> DagsterServices:
        program = "dagster" if self.own_daemon else "dagster-webserver"
        command = ["dev"] if self.own_daemon else []
        host = ["--host", "127.0.0.1", "--port", str(self.port)]
        argv = [str(Path(sys.executable).parent / program), *command, "-w", str(workspace_file())]
        self._process = subprocess.Popen(
            [*argv, *host],
            env=self._env,
            stdout=self._output,
            stderr=subprocess.STDOUT if self._output else None,
            stdin=subprocess.DEVNULL,
            start_new_session=True,  # the terminal's Ctrl-C is the deploy's to handle
            preexec_fn=_end_with_parent,
        )
        try:
            self._wait_ready()
        except BaseException:
            self.close()
            raise
        return self

    def __exit__(self, *_: Any) -> None:
        self.close()

    def _wait_ready(self) -> None:
        deadline = time.monotonic() + START_TIMEOUT_SECONDS
        assert self._process is not None
        while time.monotonic() < deadline:
            if self._process.poll() is not None:
                said = getattr(self._output, "name", "the console above")
                raise ServicesError(
                    f"the Dagster webserver exited with code {self._process.returncode} while "
                    f"starting; its output: {said}"
                )
            with contextlib.suppress(requests.RequestException):
                if requests.get(f"{self.url}/server_info", timeout=2).ok and self._loaded():
                    return
            time.sleep(0.25)
        raise ServicesError(f"the Dagster webserver did not answer in {START_TIMEOUT_SECONDS} s")

    def _loaded(self) -> bool:
        """Whether the code location is loaded (the webserver answers before it is)."""
        data = self.graphql(
            "{ workspaceOrError { ... on Workspace { locationEntries { name loadStatus "
            "locationOrLoadError { __typename ... on PythonError { message } } } } } }"
        )
        entries = data["workspaceOrError"].get("locationEntries", [])
        entry = next((e for e in entries if e["name"] == LOCATION), None)
        if entry is None or entry["loadStatus"] != "LOADED":
            return False
        error = entry["locationOrLoadError"]
        if error and error["__typename"] == "PythonError":
            raise ServicesError(f"the code location failed to load: {error['message']}")
        return True

    def close(self) -> None:
        """Stop what was started (``dagster dev`` stops its daemon and code server)."""
        process, self._process = self._process, None
        if process is None or process.poll() is not None:
            return
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, signal.SIGTERM)
        try:
            process.wait(STOP_GRACE_SECONDS)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(process.pid, signal.SIGKILL)
            process.wait()

    def graphql(self, query: str, variables: dict[str, Any] | None = None) -> dict[str, Any]:
        """The ``data`` of a GraphQL request; ServicesError with the server's errors."""
        response = requests.post(
            f"{self.url}/graphql", json={"query": query, "variables": variables or {}}, timeout=60
        )
        body = response.json()
        if body.get("errors"):
            raise ServicesError("; ".join(e["message"] for e in body["errors"]))
        return body["data"]

    def mutate(self, query: str, variables: dict[str, Any], field: str, success: str) -> Any:
        """A mutation's result when its type is ``success``, else ServicesError with what the
        server said (a config error, a missing job, a Python error)."""
        result = self.graphql(query, variables)[field]
        if result["__typename"] != success:
            said = result.get("message") or "; ".join(
                e.get("message", "") for e in result.get("errors", [])
            )
            raise ServicesError(f"{field}: {result['__typename']}: {said}")
        return result


def _launch_mutation(field: str, argument: str, params_type: str) -> str:
    """A mutation that launches a run: the new run's id, or what the server refused."""
    return f"""
mutation($params: {params_type}!) {{
  {field}({argument}: $params) {{
    __typename
    ... on LaunchRunSuccess {{ run {{ runId }} }}
    ... on Error {{ message }}
    ... on RunConfigValidationInvalid {{ errors {{ message }} }}
  }}
}}"""


LAUNCH_RUN = _launch_mutation("launchRun", "executionParams", "ExecutionParams")
REEXECUTE_FROM_FAILURE = _launch_mutation(
    "launchRunReexecution", "reexecutionParams", "ReexecutionParams"
)

TERMINATE_RUNS = """
mutation($runIds: [String!]!, $policy: TerminateRunPolicy) {
  terminateRuns(runIds: $runIds, terminatePolicy: $policy) {
    __typename
    ... on Error { message }
  }
}"""

SET_POOL_LIMIT = """
mutation($key: String!, $limit: Int!) {
  setConcurrencyLimit(concurrencyKey: $key, limit: $limit)
}"""


def launch_run(
    services: DagsterServices,
    job_name: str,
    tags: dict[str, str],
    run_config: dict[str, Any],
    asset_keys: list[str] | None = None,
) -> str:
    """Submit one run of a job (or of some of its assets) to the run coordinator; its id."""
    selector: dict[str, Any] = {
        "repositoryLocationName": LOCATION,
        "repositoryName": "__repository__",
        "jobName": job_name,
    }
    if asset_keys:
        selector["assetSelection"] = [{"path": [key]} for key in asset_keys]
    params = {
        "selector": selector,
        "runConfigData": run_config,
        "executionMetadata": {"tags": [{"key": k, "value": v} for k, v in tags.items()]},
    }
    result = services.mutate(LAUNCH_RUN, {"params": params}, "launchRun", "LaunchRunSuccess")
    return result["run"]["runId"]


def reexecute_from_failure(services: DagsterServices, run_id: str, tags: dict[str, str]) -> str:
    """Submit a re-execution of a failed run's failed and not-yet-run steps; its id."""
    params = {
        "parentRunId": run_id,
        "strategy": "FROM_FAILURE",
        "extraTags": [{"key": k, "value": v} for k, v in tags.items()],
    }
    result = services.mutate(
        REEXECUTE_FROM_FAILURE, {"params": params}, "launchRunReexecution", "LaunchRunSuccess"
    )
    return result["run"]["runId"]


def terminate_runs(services: DagsterServices, run_ids: list[str], mark_canceled: bool) -> None:
    """Ask Dagster to terminate these runs (their launcher interrupts their processes); with
    ``mark_canceled``, they are recorded canceled at once, reached or not."""
    if run_ids:
        policy = "MARK_AS_CANCELED_IMMEDIATELY" if mark_canceled else "SAFE_TERMINATE"
        services.graphql(TERMINATE_RUNS, {"runIds": run_ids, "policy": policy})


def set_pool_limit(services: DagsterServices, pool: str, limit: int) -> None:
    """The instance's limit of a pool: how many of its steps run at once, whoever launched
    them (the UI's Concurrency page shows it)."""
    services.graphql(SET_POOL_LIMIT, {"key": pool, "limit": limit})
