"""Crash safety of saves: a process killed with SIGKILL at any moment of a save leaves
the previous checkpoint or the new one, complete, never a truncated or mixed file.

The saving processes are real (forked by ``tests/crash_saver.py``, itself a subprocess)
and are killed with a real SIGKILL:

- at every *event* of ``checkpoint.save`` in turn (each line, and each call into and
  return from a C function such as ``write``, ``fsync``, ``os.replace``), and
- at random moments of a loop that steps and saves a 2.4 MB state again and again.

Each file a crash left is loaded and compared exactly with the optimizer state of the
generation it must hold. A crash between the creation of the temporary file and the
rename leaves that temporary file (``.c.npz.XXXX.tmp``) beside the checkpoint: it is
never the checkpoint, and ``docs/reliability.md`` says it can be deleted.
"""

from __future__ import annotations

import functools
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from cprop_ref import checkpoint
from tests.crash_saver import POINTS_SIZE, TIMED_SIZE, generation
from tests.reliability_support import assert_identical

pytestmark = pytest.mark.skipif(not hasattr(os, "fork"), reason="needs fork and SIGKILL (POSIX)")

HELPER = Path(__file__).with_name("crash_saver.py")
TIMED_TRIALS = 40


def _run_helper(*args: str) -> dict:
    env = dict(os.environ, OPENBLAS_NUM_THREADS="1", OMP_NUM_THREADS="1")
    done = subprocess.run(
        [sys.executable, str(HELPER), *args], capture_output=True, text=True, env=env, timeout=300, check=False
    )
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout.splitlines()[-1])


@functools.cache
def _expected_tree(k: int, size: int) -> dict:
    """Generation ``k`` as a checkpoint holds it (through the same JSON / .npz round trip)."""
    return checkpoint.decode(checkpoint.encode(generation(k, size).state_dict()))


def _which_generation(path: Path, candidates: tuple[int, ...], size: int) -> int:
    """Load ``path`` (it must load) and return which candidate generation it holds exactly."""
    tree = checkpoint.load(path)
    for k in candidates:
        try:
            assert_identical(tree, _expected_tree(k, size))
        except AssertionError:
            continue
        return k
    raise AssertionError(f"{path.name} holds none of the generations {candidates}")


def test_kill_at_every_point_of_a_save(tmp_path):
    result = _run_helper("points", str(tmp_path))
    outcomes = result["outcomes"]
    held = []
    for outcome in outcomes:
        assert outcome["file"] is not None, f"point {outcome['point']}: the checkpoint vanished"
        held.append(_which_generation(tmp_path / outcome["file"], (0, 1), POINTS_SIZE))
    killed = [o["killed"] for o in outcomes]
    assert killed == [True] * (len(outcomes) - 1) + [False]  # the loop ends at the first survivor
    # Old checkpoint up to the rename, new one from it on: exactly one switch.
    switch = held.index(1)
    assert held == [0] * switch + [1] * (len(held) - switch)
    assert 0 < switch < len(held) - 1
    # The temporary file exists only in the window of kill points before the rename.
    with_leftover = [i for i, o in enumerate(outcomes) if o["leftovers"]]
    assert with_leftover == list(range(with_leftover[0], switch))
    assert all(len(o["leftovers"]) <= 1 for o in outcomes)
    assert len(outcomes) >= 30  # the figure in docs/reliability.md: every event of save


def test_kill_at_random_moments_of_a_save_loop(tmp_path):
    result = _run_helper("timed", str(tmp_path), str(TIMED_TRIALS), "20260601")
    assert result["size"] == TIMED_SIZE
    outcomes = result["outcomes"]
    assert len(outcomes) == TIMED_TRIALS
    for outcome in outcomes:
        assert outcome["killed"], outcome
        last = outcome["last_finished"]
        # Finished saves are never lost; the save in progress is all there or not at all.
        held = _which_generation(tmp_path / outcome["file"], (last, last + 1), TIMED_SIZE)
        assert held in (last, last + 1)
        assert all(name.endswith(".tmp") for name in outcome["leftovers"])


def test_save_writes_flushes_and_syncs_before_the_rename_and_syncs_the_folder_after(tmp_path):
    """The order of the built-in calls ``checkpoint.save`` makes: the data reaches the disk
    (``write``, ``flush``, ``fsync``) before ``os.replace`` puts it in place, and the
    folder is synced after, so that the rename itself survives a power cut."""
    calls: list[str] = []
    watched = {checkpoint.save.__code__, checkpoint._fsync_directory.__code__}

    def profile(frame, event, arg):
        if event == "c_call" and frame.f_code in watched:
            calls.append(getattr(arg, "__name__", repr(arg)))

    sys.setprofile(profile)
    try:
        checkpoint.save(tmp_path / "c.npz", generation(1, POINTS_SIZE).state_dict())
    finally:
        sys.setprofile(None)
    expected = ["write", "flush", "fsync", "replace", "open", "fsync", "close"]
    positions = []
    for name in expected:  # an ordered subsequence of the calls
        start = positions[-1] + 1 if positions else 0
        assert name in calls[start:], f"{name} missing after {expected[: len(positions)]}: {calls}"
        positions.append(calls.index(name, start))
