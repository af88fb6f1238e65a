"""The deployment lock: atomic takeover by exactly one of many, a dead local holder taken over at
once, a live holder's refusal (who, when it goes stale, how to break it), heartbeats that never
overwrite a lock taken over, and ``ocr unlock``."""

import getpass
import json
import multiprocessing
import os
import re
import signal
import socket
import threading
import time
import uuid
from datetime import datetime
from pathlib import Path

import psutil
import pytest
from typer.testing import CliRunner

from ocr_jobs.deploy import DeployError, DeploymentLock
from ocr_resources.storage import OcrStorage
from tests.serial_s3 import serial_s3_server

BUCKET = "ocr-lock-test"


@pytest.fixture(scope="module")
def s3_endpoint():
    """A moto S3 server on 127.0.0.1 with the test bucket (credentials are fake)."""
    with serial_s3_server(BUCKET) as endpoint:
        yield endpoint


@pytest.fixture(params=["local", "s3"])
def storage(request, tmp_path) -> OcrStorage:
    """The qa environment's storage on a local folder, or on S3 (a fresh prefix)."""
    if request.param == "local":
        return OcrStorage(root=str(tmp_path), environment="qa")
    endpoint = request.getfixturevalue("s3_endpoint")
    root = f"s3://{BUCKET}/{uuid.uuid4().hex}"
    return OcrStorage(root=root, environment="qa", endpoint_url=endpoint)


def lock_record(storage: OcrStorage) -> dict | None:
    """The lock as stored, read as any reader would."""
    path = storage.layout.deployment_lock
    if not storage.files.exists(path):
        return None
    with storage.files.open(path) as f:
        return json.load(f)


def leave_lock(storage: OcrStorage, **fields) -> dict:
    """A lock record as a deployment of this process leaves it (``fields`` change it), written
    as a plain file."""
    record = {
        **DeploymentLock(storage, 60, "crashed deploy").owner,
        "user": "ci",
        "started": "2025-01-01T00:00:00+00:00",
        "heartbeat": time.time(),
        **fields,
    }
    storage.files.write_bytes(storage.layout.deployment_lock, json.dumps(record).encode())
    return record


def race_threads(storage: OcrStorage, takers: int) -> tuple[list, list[BaseException]]:
    """``takers`` threads acquire at once (a barrier); the winners' locks and the others'
    exceptions."""
    barrier = threading.Barrier(takers)
    winners: list = []
    errors: list[BaseException] = []

    def take(i: int) -> None:
        lock = DeploymentLock(storage, 60, f"taker {i}")
        barrier.wait()
        try:
            lock.acquire()
            winners.append(lock)
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=take, args=(i,)) for i in range(takers)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    return winners, errors


def _take_in_process(root: str, i: int, barrier, results, hold) -> None:
    """One taker in its own process: acquire at the barrier, report, then hold until every
    taker has reported (a winner's process must live while the others look at its lock)."""
    lock = DeploymentLock(OcrStorage(root=root, environment="qa"), 60, f"process {i}")
    barrier.wait()
    try:
        lock.acquire()
        results.put("won")
    except DeployError:
        results.put("refused")
    except BaseException as exc:
        results.put(f"{type(exc).__name__}: {exc}")
    hold.wait(60)


def race_processes(root: str, takers: int) -> list[str]:
    ctx = multiprocessing.get_context("fork")  # the parent's imports: each starts at once
    barrier, results, hold = ctx.Barrier(takers), ctx.Queue(), ctx.Event()
    procs = [
        ctx.Process(target=_take_in_process, args=(root, i, barrier, results, hold))
        for i in range(takers)
    ]
    for p in procs:
        p.start()
    outcomes = [results.get(timeout=60) for _ in procs]
    hold.set()
    for p in procs:
        p.join(30)
    return outcomes


def test_concurrent_takeover_of_a_stale_lock_has_exactly_one_winner(storage):
    """Many deployments find the same stale lock at once: in every trial exactly one takes it
    over, every other one refuses with a DeployError naming a live holder (never a traceback)."""
    # S3 costs ~50 ms a request on the test server: fewer there (the old code failed 12 of 12)
    takers, trials = (10, 6) if storage.files.is_s3 else (16, 30)
    bad = []
    for trial in range(trials):
        leave_lock(storage, heartbeat=time.time() - 3600)
        winners, errors = race_threads(storage, takers)
        unexpected = [repr(e) for e in errors if not isinstance(e, DeployError)]
        if len(winners) != 1 or unexpected or len(errors) != takers - 1:
            bad.append((trial, len(winners), unexpected[:2]))
        else:
            holder = lock_record(storage)
            assert holder["description"] == winners[0].owner["description"]
            assert all("another deployment to 'qa' is running" in str(e) for e in errors)
        for lock in winners:
            lock.release()
        storage.files.delete(storage.layout.deployment_lock)
    assert not bad, f"{len(bad)} of {trials} trials went wrong (trial, winners, errors): {bad}"


def test_concurrent_takeover_by_processes_has_exactly_one_winner(tmp_path):
    """The same race with separate processes on a local root (each its own pid)."""
    storage = OcrStorage(root=str(tmp_path), environment="qa")
    bad = []
    for trial in range(6):
        leave_lock(storage, heartbeat=time.time() - 3600)
        outcomes = race_processes(str(tmp_path), 8)
        if sorted(outcomes) != ["refused"] * 7 + ["won"]:
            bad.append((trial, outcomes))
        storage.files.delete(storage.layout.deployment_lock)
    assert not bad, f"{len(bad)} of 6 trials went wrong: {bad}"


def test_a_dead_holder_on_this_host_is_taken_over_at_once(tmp_path):
    """A deploy killed with SIGKILL (no release, heartbeat fresh, 15 minutes from stale): the
    next deploy on this host sees its pid is gone and takes the lock at once, saying so."""
    storage = OcrStorage(root=str(tmp_path), environment="qa")
    pid = os.fork()
    if pid == 0:  # the deploy: takes the lock, then is killed (no release, no more heartbeats)
        try:
            DeploymentLock(storage, 900, "killed deploy").acquire()
        finally:
            os.kill(os.getpid(), signal.SIGKILL)
    _, status = os.waitpid(pid, 0)
    assert os.WIFSIGNALED(status) and os.WTERMSIG(status) == signal.SIGKILL
    left = lock_record(storage)
    assert left["pid"] == pid
    lines: list[str] = []
    taker = DeploymentLock(storage, 900, "next deploy", say=lines.append)
    taker.acquire()
    assert lock_record(storage)["id"] == taker.owner["id"]
    host = socket.gethostname()
    assert lines == [
        f"took over the deployment lock of killed deploy by {getpass.getuser()}@{host} "
        f"(pid {pid}, started {left['started']}): its process {pid} on this host ({host}) is gone"
    ]
    taker.release()
    assert lock_record(storage) is None


def test_a_reused_pid_is_not_the_holder(tmp_path):
    """The holder's pid now belongs to another process (its start time differs): taken over;
    with the holder's own start time the same pid refuses."""
    storage = OcrStorage(root=str(tmp_path), environment="qa")
    leave_lock(storage)
    with pytest.raises(DeployError, match="runs on this host as pid"):
        DeploymentLock(storage, 900, "next deploy", say=print).acquire()
    leave_lock(storage, pid_started=psutil.Process().create_time() - 1000)
    lines: list[str] = []
    taker = DeploymentLock(storage, 900, "next deploy", say=lines.append)
    taker.acquire()
    gone = f"its process {os.getpid()} on this host ({socket.gethostname()}) is gone"
    assert len(lines) == 1 and lines[0].endswith(gone)
    taker.release()


def stale_in(message: str) -> tuple[float, int]:
    """When the refusal says the lock goes stale: the time, and the seconds from now."""
    found = re.search(r"it goes stale at (\S+) \(in (\d+) s, OCR_LOCK_STALE_SECONDS=", message)
    assert found, message
    return datetime.fromisoformat(found[1]).timestamp(), int(found[2])


def test_a_live_holder_is_named_with_when_it_goes_stale_and_how_to_break_it(tmp_path):
    """A running deploy on this host: its user, host and pid, its heartbeat's age, when it goes
    stale (time and seconds from now), how to stop it and the command that breaks the lock."""
    storage = OcrStorage(root=str(tmp_path), environment="qa")
    first = DeploymentLock(storage, 900, "first deploy", env_file="/cfg/qa.env")
    first.acquire()
    try:
        with pytest.raises(DeployError) as refused:
            DeploymentLock(storage, 900, "second", env_file="/cfg/qa.env").acquire()
    finally:
        first.release()
    message = str(refused.value)
    assert message.startswith(
        f"another deployment to 'qa' is running: first deploy by {getpass.getuser()}@"
        f"{socket.gethostname()} (pid {os.getpid()}, started {first.owner['started']})"
    )
    assert "its last heartbeat was 0 s ago" in message
    at, seconds = stale_in(message)
    assert abs(at - (time.time() + 900)) < 5 and 895 <= seconds <= 900
    assert f"runs on this host as pid {os.getpid()}" in message
    assert f"kill {os.getpid()}" in message
    assert "`ocr unlock --env-file /cfg/qa.env --force`" in message


def test_a_holder_on_another_host_is_named_with_when_it_goes_stale_and_how_to_break_it(tmp_path):
    """A holder elsewhere (its process cannot be checked) blocks until stale; the refusal says
    where it runs, since when it beats, when it goes stale and the command that breaks it."""
    storage = OcrStorage(root=str(tmp_path), environment="qa")
    leave_lock(storage, host="runner-7.ci.example", pid=4242, heartbeat=time.time() - 100)
    with pytest.raises(DeployError) as refused:
        DeploymentLock(storage, 900, "second", env_file="/cfg/qa.env").acquire()
    message = str(refused.value)
    assert "crashed deploy by ci@runner-7.ci.example (pid 4242" in message
    assert "its last heartbeat was 100 s ago" in message
    at, seconds = stale_in(message)
    assert abs(at - (time.time() + 800)) < 5 and 795 <= seconds <= 800
    assert "it runs on runner-7.ci.example (another machine or container)" in message
    assert message.endswith("break the lock now: ocr unlock --env-file /cfg/qa.env")


def test_a_heartbeat_never_overwrites_a_lock_taken_over(storage):
    """A stalled deploy's heartbeat fires right after another deploy took its lock over
    (between the heartbeat's decision and its write): the lock stays the new holder's, the old
    one learns it lost the lock and its release leaves the new holder's lock alone."""
    lines: list[str] = []
    stalled = DeploymentLock(storage, 900, "stalled deploy", say=lines.append)
    stalled.acquire()
    before = lock_record(storage)["heartbeat"]
    assert stalled.beat() and lock_record(storage)["heartbeat"] > before  # a heartbeat beats
    taker = DeploymentLock(storage, 0, "taker", say=lines.append)  # anything is stale to it
    payload = stalled._payload

    def taken_over_meanwhile() -> bytes:
        taker.acquire()
        return payload()

    stalled._payload = taken_over_meanwhile
    assert not stalled.beat()
    assert lock_record(storage)["id"] == taker.owner["id"]
    assert stalled.lost and "taker" in stalled.lost
    assert lines[-1].startswith("this deployment lost its lock")
    with pytest.raises(DeployError, match="lost its lock and stopped"):
        stalled.check()  # the deploy stops at its next phase instead of writing beside another
    taker.check()
    stalled.release()
    assert lock_record(storage)["id"] == taker.owner["id"]
    taker.release()
    assert lock_record(storage) is None


def test_an_unreadable_lock_is_refused_by_name_and_unlock_removes_it(storage):
    """An empty lock object (a writer that died mid-write) is a DeployError naming the lock and
    what was expected, not a traceback; ``break_lock`` removes it."""
    from ocr_jobs.deploy import lock as lock_module

    path = storage.layout.deployment_lock
    storage.files.write_bytes(path, b"")
    with pytest.raises(DeployError) as refused:
        DeploymentLock(storage, 900, "next", env_file="/cfg/qa.env").acquire()
    assert str(refused.value).startswith(f"the deployment lock {path} is not a lock record")
    assert "expected a JSON object with id, host, pid and heartbeat" in str(refused.value)
    assert lock_module.break_lock(storage).startswith("broke the deployment lock of an unread")
    assert lock_record(storage) is None


def test_ocr_unlock_breaks_a_remote_holder_and_refuses_a_running_one(tmp_path):
    """``ocr unlock`` removes a lock whose holder runs elsewhere, naming it; a deployment
    running on this host is refused (exit 1) unless --force; no lock is a plain message."""
    from ocr_jobs.cli import app

    root = tmp_path / "root"
    root.mkdir()
    env = tmp_path / "qa.env"
    env.write_text(f"OCR_ENVIRONMENT=qa\nOCR_STORAGE_ROOT={root}\n")
    storage = OcrStorage(root=str(root), environment="qa")
    runner = CliRunner()

    def unlock(*flags: str):
        clean = {k: None for k in os.environ if k.startswith("OCR_")}
        return runner.invoke(app, ["unlock", "--env-file", str(env), *flags], env=clean)

    leave_lock(storage, host="runner-7.ci.example", pid=4242)
    broke = unlock()
    assert broke.exit_code == 0, broke.output
    assert "broke the deployment lock of crashed deploy by ci@runner-7.ci.example" in broke.output
    assert lock_record(storage) is None
    nothing = unlock()
    assert nothing.exit_code == 0 and "no deployment to 'qa' holds the lock" in nothing.output
    running = DeploymentLock(storage, 900, "running deploy", say=print)
    running.acquire()
    refused = unlock()
    assert refused.exit_code == 1 and "is running on this host" in refused.output
    assert lock_record(storage)["id"] == running.owner["id"]
    forced = unlock("--force")
    assert forced.exit_code == 0 and lock_record(storage) is None
    running.release()


def test_a_lock_path_keeps_no_temporary_files(tmp_path):
    """Creating, taking over, beating and releasing leave only the lock (and its guard)."""
    storage = OcrStorage(root=str(tmp_path), environment="qa")
    leave_lock(storage, heartbeat=time.time() - 3600)
    lock = DeploymentLock(storage, 60, "tidy", say=print)
    lock.acquire()
    lock.beat()
    lock.release()
    folder = Path(storage.layout.deployment_lock).parent
    assert sorted(p.name for p in folder.iterdir()) == [".qa.json.cas"]
