"""One deployment per environment: a lock object in storage, kept alive by a heartbeat."""

from __future__ import annotations

import getpass
import json
import os
import socket
import threading
import time
import uuid
from datetime import UTC, datetime
from typing import Any

from ocr_jobs.deploy.plan import DeployError
from ocr_resources.storage import OcrStorage


class DeploymentLock:
    """An exclusively created object at ``storage.layout.deployment_lock`` (outside every
    environment prefix, so a wipe never deletes a running deploy's lock), refreshed by a
    heartbeat; a lock whose heartbeat is older than ``stale_seconds`` (a crashed deploy) is
    taken over."""

    def __init__(self, storage: OcrStorage, stale_seconds: int, description: str) -> None:
        self.storage = storage
        self.path = storage.layout.deployment_lock
        self.stale_seconds = stale_seconds
        self.owner = {
            "id": uuid.uuid4().hex,
            "description": description,
            "host": socket.gethostname(),
            "pid": os.getpid(),
            "user": getpass.getuser(),
            "started": datetime.now(UTC).isoformat(timespec="seconds"),
        }
        self._stop = threading.Event()
        self._beat: threading.Thread | None = None

    def _payload(self) -> bytes:
        return json.dumps({**self.owner, "heartbeat": time.time()}).encode()

    def holder(self) -> dict[str, Any] | None:
        try:
            return self.storage.read_json(self.path)
        except FileNotFoundError:
            return None

    def acquire(self) -> None:
        """Take the lock, or raise DeployError naming the deployment that holds it."""
        for _ in range(3):
            if self.storage.create_exclusive(self.path, self._payload()):
                self._beat = threading.Thread(target=self._heartbeat, daemon=True)
                self._beat.start()
                return
            holder = self.holder()
            if holder is None:
                continue  # released between our attempt and the read
            age = time.time() - float(holder.get("heartbeat", 0))
            if age <= self.stale_seconds:
                raise DeployError(
                    f"another deployment to {self.storage.environment!r} is running: "
                    f"{holder.get('description')} by {holder.get('user')}@{holder.get('host')} "
                    f"(pid {holder.get('pid')}, started {holder.get('started')}, "
                    f"heartbeat {age:.0f} s ago); lock {self.path}"
                )
            self.storage.delete(self.path)  # stale: its owner crashed
        raise DeployError(f"could not take the deployment lock {self.path}")

    def _heartbeat(self) -> None:
        interval = max(5.0, self.stale_seconds / 5)
        while not self._stop.wait(interval):
            holder = self.holder()
            if holder and holder.get("id") == self.owner["id"]:
                self.storage.write_bytes(self.path, self._payload())

    def release(self) -> None:
        """Stop the heartbeat and delete the lock if it is still ours."""
        self._stop.set()
        if self._beat:
            self._beat.join(timeout=5)
        holder = self.holder()
        if holder and holder.get("id") == self.owner["id"]:
            self.storage.delete(self.path)
