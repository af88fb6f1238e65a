"""What a run needs to judge a deployment's lock: the lock record, its holder's process, when it
is in force, and the run tags that name a deployment's own runs.

``ocr deploy`` takes the lock (``ocr_jobs.deploy.lock``); every Dagster run of the environment,
whichever door launched it (the UI, ``dagster asset materialize``, the deploy), checks it when
its storage resource starts (:func:`refuse_beside_deployment`), so no run writes beside a
running deployment that is not its own.
"""

from __future__ import annotations

import json
import os
import socket
import time
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

import psutil

if TYPE_CHECKING:
    from ocr_resources.storage import OcrStorage

# a run's environment, and the deployment (its lock record's id) that submitted it
ENVIRONMENT_TAG = "ocr/environment"
DEPLOYMENT_TAG = "ocr/deployment"
STALE_SETTING = "OCR_LOCK_STALE_SECONDS"


class LockHeldError(RuntimeError):
    """A run refused: another deployment holds its environment's lock."""


def unlock_command(env_file: str | None, environment: str) -> str:
    """The command that breaks this environment's lock."""
    return f"ocr unlock --env-file {env_file or f'<the env file of {environment!r}>'}"


def _utc(timestamp: float) -> str:
    return datetime.fromtimestamp(timestamp, UTC).isoformat(timespec="seconds")


def pid_namespace() -> str | None:
    """This process's pid namespace on Linux (containers that share a host name have their own
    pids), None where there is none to read."""
    try:
        return os.readlink("/proc/self/ns/pid")
    except OSError:
        return None


@dataclass(frozen=True)
class ProcessOwner:
    """A process as other processes can recognise it later: host, pid, the pid's start time (a
    reused pid is another process) and pid namespace."""

    host: str
    pid: int
    started: float | None = None
    namespace: str | None = None

    @classmethod
    def current(cls) -> ProcessOwner:
        return cls(
            socket.gethostname(), os.getpid(), psutil.Process().create_time(), pid_namespace()
        )

    def alive(self) -> bool | None:
        """Whether the process is still running; None when this machine cannot tell (another
        host, or another pid namespace on this one)."""
        if self.host != socket.gethostname() or self.namespace != pid_namespace():
            return None
        try:
            process = psutil.Process(self.pid)
            if process.status() == psutil.STATUS_ZOMBIE:  # exited, not yet reaped
                return False
            return self.started is None or abs(process.create_time() - self.started) < 1
        except psutil.NoSuchProcess:
            return False
        except psutil.AccessDenied:  # another user's process: it exists
            return True


@dataclass(frozen=True)
class Holder:
    """The deployment a lock record names."""

    record: dict[str, Any]
    owner: ProcessOwner
    heartbeat: float

    @classmethod
    def parse(cls, data: bytes) -> Holder:
        """The holder of a lock record; ValueError saying what is wrong with anything else."""
        try:
            record = json.loads(data)
        except (UnicodeDecodeError, json.JSONDecodeError) as exc:
            raise ValueError(f"not JSON ({exc})") from None
        if not isinstance(record, dict):
            raise ValueError(f"not a JSON object but {type(record).__name__}")
        fields = {"id": str, "host": str, "pid": int, "heartbeat": (int, float)}
        wrong = [k for k, kind in fields.items() if not isinstance(record.get(k), kind)]
        if wrong or isinstance(record["pid"], bool):
            raise ValueError(f"missing or malformed {', '.join(wrong) or 'pid'}")
        started = record.get("pid_started")
        owner = ProcessOwner(
            record["host"],
            record["pid"],
            float(started) if isinstance(started, int | float) else None,
            record.get("pid_namespace"),
        )
        return cls(record, owner, float(record["heartbeat"]))

    @property
    def id(self) -> str:
        return self.record["id"]

    def who(self) -> str:
        r = self.record
        return (
            f"{r.get('description')} by {r.get('user')}@{r['host']} "
            f"(pid {r['pid']}, started {r.get('started')})"
        )

    def stale_reason(self, alive: bool | None, now: float, stale_seconds: int) -> str | None:
        """Why this holder no longer holds the lock (``alive``: whether its process runs, None
        when this host cannot tell), or None while it does."""
        if alive is False:
            return f"its process {self.owner.pid} on this host ({self.owner.host}) is gone"
        age = now - self.heartbeat
        if age > stale_seconds:
            return f"its heartbeat is {age:.0f} s old ({STALE_SETTING}={stale_seconds})"
        return None

    def held(self, environment: str, path: str, stale_seconds: int, now: float) -> str:
        """Who holds the lock, since when it beats and when it goes stale: the start of every
        refusal, a deploy's or a run's."""
        stale_at = self.heartbeat + stale_seconds
        return (
            f"another deployment to {environment!r} is running: {self.who()}; lock {path}\n"
            f"  its last heartbeat was {now - self.heartbeat:.0f} s ago; it goes stale at "
            f"{_utc(stale_at)} (in {max(0.0, stale_at - now):.0f} s, {STALE_SETTING}="
            f"{stale_seconds}), when the next deploy takes it over"
        )


def blocking_holder(
    storage: OcrStorage, stale_seconds: int, deployment: str | None = None
) -> Holder | None:
    """The deployment that holds ``storage``'s environment lock, live and not stale, unless it
    is ``deployment`` (a run's ``ocr/deployment`` tag: the deploy's own runs); None when no
    lock is in force. An unreadable record holds nothing (``ocr unlock`` removes it too)."""
    current = storage.files.read_versioned(storage.layout.deployment_lock)
    if current is None:
        return None
    try:
        holder = Holder.parse(current.data)
    except ValueError:
        return None
    if holder.id == deployment:
        return None
    if holder.stale_reason(holder.owner.alive(), time.time(), stale_seconds) is not None:
        return None
    return holder


def refuse_beside_deployment(
    storage: OcrStorage, stale_seconds: int, run_tags: Mapping[str, str]
) -> None:
    """Raise LockHeldError naming the deployment that holds the run's environment, unless the
    run is that deployment's own: a run from the UI or the command line must not write beside
    a running deploy."""
    holder = blocking_holder(storage, stale_seconds, run_tags.get(DEPLOYMENT_TAG))
    if holder is None:
        return
    environment = storage.environment
    held = holder.held(environment, storage.layout.deployment_lock, stale_seconds, time.time())
    raise LockHeldError(
        f"this run was refused: {held}\n"
        "  launch the run again once that deployment has finished; if it is no longer running, "
        f"`{unlock_command(None, environment)}` breaks its lock"
    )
