"""Which process, on which machine, owns something (a deployment lock), and whether that process
is still alive: a lock whose process died (Ctrl-C, out of memory, a closed laptop) is then known
at once instead of after a timeout."""

from __future__ import annotations

import os
import socket
from dataclasses import dataclass

import psutil


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
