"""One deployment per environment: a lock object in storage, kept alive by a heartbeat.

The lock is created exclusively; every later change (a takeover, a heartbeat, the release) is
conditional on the version that was read: a compare-and-swap on S3's ETag (``If-Match``), or
on the content's hash under a file lock on a local root. So of any number of deployments that
take over one stale lock exactly one wins and the others see the winner and refuse, and a
heartbeat or a release never overwrites or deletes a lock someone else took over.
"""

from __future__ import annotations

import getpass
import json
import sys
import threading
import time
import uuid
from collections.abc import Callable
from datetime import UTC, datetime

from ocr_jobs.deploy.plan import DeployError
from ocr_resources.deployment_lock import Holder, ProcessOwner, unlock_command
from ocr_resources.storage import OcrStorage
from ocr_resources.storage.files import Versioned

# every failed attempt means the lock changed between our read and our write: someone else won
ATTEMPTS = 5


def _say_on_stderr(line: str) -> None:
    print(line, file=sys.stderr)


class DeploymentLock:
    """An exclusively created object at ``storage.layout.deployment_lock`` (outside every
    environment prefix, so a wipe never deletes a running deploy's lock), refreshed by a
    heartbeat. It is taken over when its holder's process is gone (same host, pid not running
    or reused) or its heartbeat is older than ``stale_seconds`` (a holder on another host);
    ``say`` gets the line that reports a takeover or a lost lock."""

    def __init__(
        self,
        storage: OcrStorage,
        stale_seconds: int,
        description: str,
        *,
        env_file: str | None = None,
        say: Callable[[str], None] = _say_on_stderr,
    ) -> None:
        self.storage = storage
        self.path = storage.layout.deployment_lock
        self.stale_seconds = stale_seconds
        self.interval = max(5.0, stale_seconds / 5)
        self.unlock = unlock_command(env_file, storage.environment)
        me = ProcessOwner.current()
        self.owner = {
            "id": uuid.uuid4().hex,
            "description": description,
            "host": me.host,
            "pid": me.pid,
            "pid_started": me.started,
            "pid_namespace": me.namespace,
            "user": getpass.getuser(),
            "started": datetime.now(UTC).isoformat(timespec="seconds"),
        }
        self.lost: str | None = None  # why the lock is no longer ours, once it is not
        self._say = say
        self._token: str | None = None  # the version of the lock we wrote last
        self._stop = threading.Event()
        self._beat: threading.Thread | None = None

    def _payload(self) -> bytes:
        return json.dumps({**self.owner, "heartbeat": time.time()}).encode()

    def acquire(self) -> None:
        """Take the lock (creating it, or taking over a dead or stale holder's: the one line
        ``say`` gets names it), or raise DeployError naming the deployment that holds it, when
        it goes stale and how to break it."""
        for _ in range(ATTEMPTS):
            self._token = self.storage.files.create_exclusive(self.path, self._payload())
            if self._token:
                break
            current = self.storage.files.read_versioned(self.path)
            if current is None:
                continue  # released between our attempt and the read
            holder = self._parse(current)
            alive = holder.owner.alive()
            reason = holder.stale_reason(alive, time.time(), self.stale_seconds)
            if reason is None:
                raise DeployError(self._refusal(holder, alive, time.time()))
            self._token = self.storage.files.replace_if(self.path, current.token, self._payload())
            if self._token:
                self._say(f"took over the deployment lock of {holder.who()}: {reason}")
                break
        else:
            raise DeployError(
                f"could not take the deployment lock {self.path}: it changed {ATTEMPTS} times "
                "while we tried; deploy again"
            )
        self._beat = threading.Thread(target=self._heartbeat, daemon=True)
        self._beat.start()

    def _parse(self, current: Versioned) -> Holder:
        try:
            return Holder.parse(current.data)
        except ValueError as exc:
            raise DeployError(
                f"the deployment lock {self.path} is not a lock record ({exc}); expected a JSON "
                "object with id, host, pid and heartbeat. If no deployment to "
                f"{self.storage.environment!r} is running, remove it: {self.unlock}"
            ) from None

    def _refusal(self, holder: Holder, alive: bool | None, now: float) -> str:
        """Who holds the lock, since when it beats, when it goes stale and how to break it."""
        pid, host = holder.owner.pid, holder.owner.host
        if alive:
            how = (
                f"it runs on this host as pid {pid}: wait for it, or stop it (kill {pid}) and "
                "deploy again (the lock of a process that is gone is taken over at once); "
                f"`{self.unlock} --force` breaks the lock of a running deployment"
            )
        else:
            how = (
                f"it runs on {host} (another machine or container), so this one cannot check "
                f"its process; if it is no longer running, break the lock now: {self.unlock}"
            )
        held = holder.held(self.storage.environment, self.path, self.stale_seconds, now)
        return f"{held}\n  {how}"

    def _ours(self) -> Versioned | None:
        """The lock's current version if it is still ours (whatever our last token says: a
        write whose answer was lost still wrote our record)."""
        current = self.storage.files.read_versioned(self.path)
        if current is None:
            return None
        try:
            return current if Holder.parse(current.data).record["id"] == self.owner["id"] else None
        except ValueError:
            return None

    def check(self) -> None:
        """Raise DeployError when the lock is no longer ours (broken or taken over): a
        deployment must not go on writing beside another one."""
        if self.lost:
            raise DeployError(f"this deployment lost its lock and stopped: {self.lost}")

    def beat(self) -> bool:
        """One heartbeat: a fresh time in the lock, written only over our own last version.
        False (``lost`` says why, ``say`` too) when someone else holds the lock now."""
        if self.lost:
            return False
        token = self.storage.files.replace_if(self.path, self._token, self._payload())
        if token is None and (ours := self._ours()) is not None:
            token = ours.token  # still ours: the next beat refreshes it
        if token is None:
            self.lost = f"{self.path} was taken over or removed: {self._holder_now()}"
            self._say(f"this deployment lost its lock: {self.lost}")
            return False
        self._token = token
        return True

    def _holder_now(self) -> str:
        """Who holds the lock now, in words."""
        current = self.storage.files.read_versioned(self.path)
        if current is None:
            return "nobody holds it now"
        try:
            return f"held by {Holder.parse(current.data).who()}"
        except ValueError as exc:
            return f"an unreadable record: {exc}"

    def _heartbeat(self) -> None:
        while not self._stop.wait(self.interval):
            try:
                if not self.beat():
                    return
            except Exception as exc:  # a storage hiccup must not end the heartbeat for good
                self._say(f"deployment lock heartbeat failed ({exc}); next in {self.interval} s")

    def release(self) -> None:
        """Stop the heartbeat and delete the lock if it is still ours."""
        self._stop.set()
        if self._beat:
            self._beat.join(timeout=self.interval)
        if self._token is None or self.lost:
            return
        if not self.storage.files.delete_if(self.path, self._token) and (ours := self._ours()):
            self.storage.files.delete_if(self.path, ours.token)


def break_lock(storage: OcrStorage, *, force: bool = False) -> str:
    """``ocr unlock``: delete this environment's lock (the version read, never a newer one) and
    say whose it was. A holder running on this host is refused unless ``force``: stop it."""
    path = storage.layout.deployment_lock
    current = storage.files.read_versioned(path)
    if current is None:
        return f"no deployment to {storage.environment!r} holds the lock ({path})"
    try:
        holder: Holder | None = Holder.parse(current.data)
    except ValueError:
        holder = None  # an unreadable record holds nothing: remove it
    who = holder.who() if holder else "an unreadable lock record"
    if holder and holder.owner.alive() and not force:
        raise DeployError(
            f"{who} is running on this host: stop it (kill {holder.owner.pid}) and its lock is "
            "taken over at once by the next deploy; --force breaks it anyway"
        )
    if not storage.files.delete_if(path, current.token):
        raise DeployError(f"the lock {path} changed while it was being broken; run this again")
    return f"broke the deployment lock of {who}: {path}"
