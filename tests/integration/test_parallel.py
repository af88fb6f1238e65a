"""The thread helpers of ``ocr_science.parallel``, alone."""

import pytest


def test_ordered_map_keeps_the_order_and_a_bounded_window():
    """Results come in the items' order whatever finishes first; no more than ``ahead``
    items are taken from the iterator before their results are yielded; an error surfaces
    at its item."""
    import random
    import threading
    import time

    from ocr_science.parallel import ordered_map

    taken, lock, in_flight = [], threading.Lock(), []

    def items():
        for i in range(40):
            taken.append(i)
            yield i

    def slow_square(i: int) -> int:
        with lock:
            in_flight.append(len(taken))
        time.sleep(random.random() / 200)
        return i * i

    out = []
    for value in ordered_map(slow_square, items(), workers=3, ahead=4):
        out.append(value)
        assert len(taken) - len(out) <= 4  # the window, never the item count
    assert out == [i * i for i in range(40)]

    def fails_at_five(i: int) -> int:
        if i == 5:
            raise ValueError("item 5")
        return i

    seen = []
    with pytest.raises(ValueError, match="item 5"):
        for value in ordered_map(fails_at_five, range(20), workers=2):
            seen.append(value)
    assert seen == [0, 1, 2, 3, 4]
    assert list(ordered_map(str, range(3), workers=1)) == ["0", "1", "2"]


def _pid_and_square(i: int) -> tuple[int, int]:
    """Where an item ran and its result (module-level: a worker process imports it)."""
    import os

    return os.getpid(), i * i


def _reciprocal(i: int) -> float:
    return 1 / i


def _ran_in(processes: bool) -> tuple[int, bool, set[int], list[int]]:
    """On a Dask worker: its pid, whether it may start processes, where ``ordered_map`` ran
    eight items and their results."""
    import os

    from ocr_science.parallel import may_start_processes, ordered_map

    ran = list(ordered_map(_pid_and_square, range(8), workers=2, processes=processes))
    return os.getpid(), may_start_processes(), {pid for pid, _ in ran}, [r for _, r in ran]


def test_ordered_map_on_processes_keeps_the_order_and_errors():
    """Work that holds the GIL goes to worker processes: the items' order, and an error at
    its item, as on threads."""
    import os

    from ocr_science.parallel import ordered_map

    ran = list(ordered_map(_pid_and_square, range(12), workers=2, ahead=3, processes=True))
    assert [r for _, r in ran] == [i * i for i in range(12)]
    assert os.getpid() not in {pid for pid, _ in ran}
    with pytest.raises(ZeroDivisionError):
        list(ordered_map(_reciprocal, [1, 2, 0, 4], workers=2, processes=True))


@pytest.mark.parametrize("daemon", [True, False])
def test_a_dask_worker_starts_processes_only_when_it_is_not_daemonic(daemon, monkeypatch):
    """A Dask worker under its nanny is daemonic and may not start processes: the map runs on
    its threads there, with the same results; with ``DASK_DISTRIBUTED__WORKER__DAEMON=False``
    (what a Coiled cluster's VMs get, ``COILED_ENVIRON``) it runs on worker processes."""
    import dask
    from dask.distributed import Client, LocalCluster

    from ocr_resources.compute import COILED_ENVIRON

    if not daemon:
        for name, value in COILED_ENVIRON.items():
            monkeypatch.setenv(name, value)
    dask.config.refresh()
    try:
        with (
            LocalCluster(
                n_workers=1,
                threads_per_worker=1,
                processes=True,
                host="127.0.0.1",
                dashboard_address=None,
            ) as cluster,
            Client(cluster) as client,
        ):
            worker, may, pids, results = client.submit(_ran_in, True).result()
    finally:
        monkeypatch.undo()
        dask.config.refresh()
    assert results == [i * i for i in range(8)]
    assert may is not daemon
    assert (pids == {worker}) is daemon  # its own threads, or processes of its own


STARTS_WORKERS_THEN_WAITS = """
import time
from ocr_science.parallel import ordered_map

def forever(i):
    time.sleep(600)
    return i

if __name__ == "__main__":
    print("started", flush=True)
    next(ordered_map(forever, range(4), workers=2, processes=True))
"""


def test_worker_processes_die_with_the_process_that_started_them(tmp_path):
    """A step killed mid-map (SIGKILL: nothing of its own runs) leaves no worker processes
    behind waiting for work that will never come."""
    import subprocess
    import sys
    import time

    import psutil

    script = tmp_path / "starts_workers.py"
    script.write_text(STARTS_WORKERS_THEN_WAITS)
    proc = subprocess.Popen([sys.executable, str(script)], stdout=subprocess.PIPE, text=True)
    try:
        assert proc.stdout.readline().strip() == "started"
        parent = psutil.Process(proc.pid)
        deadline = time.monotonic() + 60
        workers = []
        while len(workers) < 2 and time.monotonic() < deadline:  # the two busy workers
            # (not multiprocessing's resource tracker, also a child)
            workers = [c for c in parent.children() if "spawn_main" in " ".join(c.cmdline())]
            time.sleep(0.2)
        assert len(workers) == 2, parent.children()
    finally:
        proc.kill()
        proc.wait()
    _, alive = psutil.wait_procs(workers, timeout=30)
    assert not alive, alive
