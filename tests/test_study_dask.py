"""Sweeps on Dask: a real ``distributed.LocalCluster``, and a real ``dask scheduler`` with two
``dask worker`` processes started here on 127.0.0.1 (free ports) and stopped by pid; one
worker is killed with SIGKILL while it computes a unit. The dataset is the in-process one."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

pytest.importorskip("xarray")
pytest.importorskip("zarr")
distributed = pytest.importorskip("distributed")

from cprop_ref.study import sweep  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
DASK = Path(sys.executable).parent / "dask"
#: 4 units (one learning rate each, 2 seeds) of about a second: long enough to kill a worker in one.
SWEEP = dict(
    problem="rosenbrock",
    optimizers=["cprop-sgd"],
    grid={"lr": [1e-4, 2e-4, 4e-4, 8e-4]},
    seeds=2,
    steps=1000,
    problem_options={"noise": 1.0},
    chunk_rows=2,
)


def run_sweep(**where):
    arguments = dict(SWEEP)
    return sweep(
        arguments.pop("problem"),
        arguments.pop("optimizers"),
        arguments.pop("grid"),
        arguments.pop("seeds"),
        arguments.pop("steps"),
        progress=False,
        **arguments,
        **where,
    )


@pytest.fixture(scope="module")
def in_process():
    return run_sweep()


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_local_cluster_gives_the_in_process_dataset(in_process):
    assert run_sweep(workers=2).equals(in_process)
    with pytest.raises(ValueError, match="No clients found"):
        distributed.default_client()  # the sweep's client did not become the process's default


def wait_for_workers(address: str, count: int, timeout: float = 120.0) -> None:
    with distributed.Client(address, timeout=30, set_as_default=False) as client:
        client.wait_for_workers(count, timeout=timeout)


@pytest.mark.skipif(not DASK.exists(), reason="the dask command line is not installed next to python")
def test_scheduler_and_workers_a_killed_worker_changes_nothing(in_process, tmp_path):
    port = free_port()
    address = f"tcp://127.0.0.1:{port}"
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1", "OPENBLAS_NUM_THREADS": "1"}
    common = dict(cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    processes = [
        subprocess.Popen(
            [str(DASK), "scheduler", "--host", "127.0.0.1", "--port", str(port), "--no-dashboard"], **common
        )
    ]
    try:
        worker_args = ["--nthreads", "1", "--no-nanny", "--no-dashboard", "--host", "127.0.0.1"]
        workers = {
            name: subprocess.Popen([str(DASK), "worker", address, *worker_args, "--name", name], **common)
            for name in ("worker-a", "worker-b")
        }
        processes += list(workers.values())
        wait_for_workers(address, 2)
        killed = {}

        def kill_a_busy_worker() -> None:
            """Kill the worker process that is computing a unit, once one is."""
            with distributed.Client(address, timeout=30, set_as_default=False) as client:
                deadline = time.monotonic() + 120
                while time.monotonic() < deadline:
                    busy = [w for w, tasks in client.processing().items() if tasks]
                    if busy:
                        name = client.scheduler_info()["workers"][busy[0]]["name"]
                        workers[name].send_signal(signal.SIGKILL)
                        killed["tasks"] = client.processing()[busy[0]]
                        return
                    time.sleep(0.02)

        killer = threading.Thread(target=kill_a_busy_worker)
        killer.start()
        result = run_sweep(scheduler=address)
        killer.join()
        assert killed.get("tasks"), "no worker was killed while computing"
        assert result.equals(in_process)
        assert sum(w.poll() is not None for w in workers.values()) == 1  # one worker is gone, the other did the rest
    finally:
        for process in reversed(processes):
            if process.poll() is None:
                process.send_signal(signal.SIGTERM)
        for process in processes:
            try:
                process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()


def test_an_unreachable_scheduler_is_a_clear_error():
    address = f"tcp://127.0.0.1:{free_port()}"  # nothing listens there
    with pytest.raises(OSError, match=f"cannot reach the Dask scheduler at {address} within 5 s"):
        run_sweep(scheduler=address)
