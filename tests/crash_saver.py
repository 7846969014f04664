"""A saving process to kill: the subprocess of ``test_reliability_crash_safety.py``.

``python tests/crash_saver.py points DIR`` forks, for ``N = 0, 1, 2, ...``, a child that
SIGKILLs itself at the ``N``-th event of :func:`cprop_ref.checkpoint.save` (a line of
``save`` or ``_fsync_directory``, or a call into or return from a C function there:
``write``, ``flush``, ``fsync``, ``os.replace``, ...), while saving generation 1 over
generation 0. The first ``N`` at which the child survives ends the loop.

``python tests/crash_saver.py timed DIR TRIALS SEED`` forks, per trial, a child that
steps and saves generations 1, 2, 3, ... in a loop, reporting each finished save on a
pipe, and SIGKILLs it after a random delay, uniform over the time of the first four
step-and-save cycles (measured first, so that a busy machine is taken into account).

After every kill the parent copies the checkpoint as the crash left it to
``DIR/after-<i>.npz`` and lists the temporary files left beside it, then restores
generation 0. It prints one JSON line: the outcomes, to be checked by the test, which
rebuilds each generation with :func:`generation` and compares exactly.
"""

from __future__ import annotations

import inspect
import json
import os
import random
import select
import shutil
import signal
import sys
import time
from pathlib import Path

import numpy as np

from cprop_ref import CPropAdam, checkpoint

CHECKPOINT_NAME = "c.npz"
#: Kills land uniformly in the first this-many step-and-save cycles of a trial.
CYCLES_PER_TRIAL = 4
#: Parameter size in the timed mode: about 2.4 MB of state, so that a save takes long
#: enough for a random kill to land inside it often.
TIMED_SIZE = 100_000
POINTS_SIZE = 16


def generation(k: int, size: int) -> CPropAdam:
    """The optimizer after ``k`` steps of a fixed gradient sequence (generation ``k``)."""
    param = np.linspace(-1.0, 1.0, size)
    # cprop_m private, v shared; the NumPy path (no compilation in every forked child)
    numpy_path = {"backend": "numpy"} if "backend" in inspect.signature(CPropAdam.__init__).parameters else {}
    optimizer = CPropAdam([param], lr=0.01, betas=(0.9, 0.999), **numpy_path)
    for step in range(k):
        optimizer.step([np.random.default_rng(step).standard_normal(size) + 0.1])
    return optimizer


def _leftovers(folder: Path) -> list[str]:
    return sorted(name for name in os.listdir(folder) if name.startswith(f".{CHECKPOINT_NAME}."))


def _collect(folder: Path, index: int, gen0: Path) -> dict:
    """Keep what the crash left, clean up, and put generation 0 back for the next trial."""
    target = folder / CHECKPOINT_NAME
    kept = folder / f"after-{index}.npz"
    if target.exists():
        shutil.copyfile(target, kept)
    leftovers = _leftovers(folder)
    for name in leftovers:
        (folder / name).unlink()
    shutil.copyfile(gen0, folder / "restore.tmp")
    os.replace(folder / "restore.tmp", target)
    return {"file": kept.name if kept.exists() else None, "leftovers": leftovers}


def _kill_at_event(limit: int) -> None:
    """Install tracing that SIGKILLs this process at the ``limit``-th save event."""
    count = 0
    watched = {checkpoint.save.__code__, checkpoint._fsync_directory.__code__}

    def tick() -> None:
        nonlocal count
        if count == limit:
            os.kill(os.getpid(), signal.SIGKILL)
        count += 1

    def local(frame, event, arg):
        if event == "line":
            tick()
        return local

    def global_trace(frame, event, arg):
        return local if frame.f_code in watched else None

    def profile(frame, event, arg):
        if event in ("c_call", "c_return") and frame.f_code in watched:
            tick()

    sys.settrace(global_trace)
    sys.setprofile(profile)


def run_points(folder: Path) -> dict:
    gen0 = folder / "gen0.npz"
    checkpoint.save(gen0, generation(0, POINTS_SIZE).state_dict())
    shutil.copyfile(gen0, folder / CHECKPOINT_NAME)
    tree = generation(1, POINTS_SIZE).state_dict()
    outcomes = []
    for limit in range(10_000):
        pid = os.fork()
        if pid == 0:  # the saving process
            _kill_at_event(limit)
            checkpoint.save(folder / CHECKPOINT_NAME, tree)
            sys.settrace(None)
            sys.setprofile(None)
            os._exit(0)
        _, status = os.waitpid(pid, 0)
        killed = os.WIFSIGNALED(status) and os.WTERMSIG(status) == signal.SIGKILL
        if not killed and not (os.WIFEXITED(status) and os.WEXITSTATUS(status) == 0):
            raise RuntimeError(f"child at point {limit} ended with status {status}")
        outcomes.append({"point": limit, "killed": killed, **_collect(folder, limit, gen0)})
        if not killed:
            break
    return {"mode": "points", "size": POINTS_SIZE, "outcomes": outcomes}


def _saving_loop(folder: Path, report_fd: int) -> None:
    optimizer = generation(0, TIMED_SIZE)
    os.write(report_fd, b"0\n")
    for k in range(1, 10_000):
        optimizer.step([np.random.default_rng(k - 1).standard_normal(TIMED_SIZE) + 0.1])
        optimizer.save(folder / CHECKPOINT_NAME)
        os.write(report_fd, f"{k}\n".encode())


def run_timed(folder: Path, trials: int, seed: int) -> dict:
    gen0 = folder / "gen0.npz"
    generation(0, TIMED_SIZE).save(gen0)
    shutil.copyfile(gen0, folder / CHECKPOINT_NAME)
    cycle = _cycle_seconds(folder)
    delays = random.Random(seed)
    outcomes = []
    for trial in range(trials):
        read_fd, write_fd = os.pipe()
        pid = os.fork()
        if pid == 0:
            os.close(read_fd)
            try:
                _saving_loop(folder, write_fd)
            finally:
                os._exit(0)
        os.close(write_fd)
        select.select([read_fd], [], [], 30.0)  # wait for "0": the child is running
        delay = delays.uniform(0.0, CYCLES_PER_TRIAL * cycle)
        time.sleep(delay)
        os.kill(pid, signal.SIGKILL)
        _, status = os.waitpid(pid, 0)
        reported = b""
        while chunk := os.read(read_fd, 65536):
            reported += chunk
        os.close(read_fd)
        finished = [int(line) for line in reported.split()]
        outcomes.append(
            {
                "trial": trial,
                "delay_ms": round(1000 * delay, 3),
                "killed": os.WIFSIGNALED(status) and os.WTERMSIG(status) == signal.SIGKILL,
                "last_finished": finished[-1],
                **_collect(folder, trial, gen0),
            }
        )
    return {"mode": "timed", "size": TIMED_SIZE, "cycle_ms": round(1000 * cycle, 3), "outcomes": outcomes}


def _cycle_seconds(folder: Path) -> float:
    """How long one step-and-save takes here and now (the machine may be busy)."""
    optimizer = generation(0, TIMED_SIZE)
    start = time.perf_counter()
    for k in range(3):
        optimizer.step([np.random.default_rng(k).standard_normal(TIMED_SIZE) + 0.1])
        optimizer.save(folder / "timing.npz")
    (folder / "timing.npz").unlink()
    return (time.perf_counter() - start) / 3


def main(argv: list[str]) -> int:
    mode, folder = argv[0], Path(argv[1])
    if mode == "points":
        result = run_points(folder)
    elif mode == "timed":
        result = run_timed(folder, int(argv[2]), int(argv[3]))
    else:
        raise SystemExit(f"unknown mode {mode!r}")
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
