"""Checkpoints under hostile use: file kinds, unsaveable values, memory, hostile values, paths.

Loading reads only regular files (a named pipe must not hang), only the entries the
metadata refers to, within a limit that defaults to what the optimizer's own checkpoint can
hold, and validates the values as the constructor and a step would produce them. Saving
writes only plain numeric arrays and JSON scalars, and a path that names no file is refused
naming the path. Every refused call changes nothing (byte-identical snapshots).
"""

from __future__ import annotations

import errno
import os
import struct
import threading
import zipfile
from pathlib import Path

import numpy as np
import pytest

from cprop_ref import SGD, Adam, CheckpointError, CProp, checkpoint
from tests.reliability_support import BACKENDS, DTYPES, OPTIMIZERS, assert_identical, build, make_grads, snapshot


def stepped(kind: str = "Adam", dtype: type = np.float32, backend: str = "numpy", nonfinite: str = "raise"):
    opt, params = build(kind, dtype, backend=backend, nonfinite=nonfinite)
    rng = np.random.default_rng(0)
    for _ in range(2):
        opt.step(make_grads(dtype, rng))
    return opt, params


def refused_load(opt, path, error, match: str) -> None:
    before = snapshot(opt)
    with pytest.raises(error, match=match):
        opt.load(path)
    assert_identical(snapshot(opt), before, "after a refused load")


# -- 8. only regular files are read ---------------------------------------------------------


@pytest.mark.skipif(not hasattr(os, "mkfifo"), reason="no named pipes on this platform")
def test_a_named_pipe_is_refused_at_once_instead_of_hanging(tmp_path):
    """``load()`` of a FIFO used to wait forever for a writer. The load runs in a thread; if it
    is still blocked after 60 s the test fails (and opens the pipe for writing to release it)."""
    opt, _ = stepped()
    fifo = tmp_path / "pipe.npz"
    os.mkfifo(fifo)
    before = snapshot(opt)
    outcome: list[BaseException | None] = []

    def load() -> None:
        try:
            opt.load(fifo)
            outcome.append(None)
        except BaseException as err:  # noqa: BLE001 - handed to the test thread
            outcome.append(err)

    worker = threading.Thread(target=load, daemon=True)
    worker.start()
    worker.join(timeout=60)
    if worker.is_alive():
        fd = os.open(fifo, os.O_WRONLY | os.O_NONBLOCK)
        os.close(fd)
        worker.join(timeout=10)
        pytest.fail("load() of a named pipe blocked")
    assert len(outcome) == 1 and isinstance(outcome[0], CheckpointError)
    assert str(fifo) in str(outcome[0]) and "named pipe (FIFO)" in str(outcome[0])
    assert_identical(snapshot(opt), before)


@pytest.mark.parametrize("target", ["directory", "device"])
def test_other_file_kinds_are_refused_by_kind(tmp_path, target):
    opt, _ = stepped()
    path = tmp_path if target == "directory" else Path(os.devnull)
    if target == "device" and not os.path.exists(os.devnull):
        pytest.skip("no null device")
    kind = "a directory" if target == "directory" else "a character device"
    refused_load(opt, path, CheckpointError, f"cannot be read: it is {kind}")


# -- 9. only plain numeric arrays are saved ---------------------------------------------------


class ProtocolOptimizer:
    """A minimal optimizer of the protocol whose state dict is whatever the test puts there."""

    def __init__(self, params: list[np.ndarray], state: dict) -> None:
        self.param_groups = [{"params": params}]
        self.saved = state

    def step(self, grads) -> None:
        for p, g in zip(self.param_groups[0]["params"], grads):
            if g is not None:
                p -= 0.1 * g

    def state_dict(self) -> dict:
        return self.saved

    def load_state_dict(self, state_dict: dict) -> None:
        self.saved = state_dict


UNSAVEABLE = {
    "object array": (np.array([object()], dtype=object), r"\['x'\]: a dtype object array"),
    "string array": (np.array(["a", "b"]), r"\['x'\]: a dtype <U1 array"),
    "structured array": (np.zeros(2, dtype=[("a", "f8")]), r"\['x'\]: a dtype .* array"),
    "masked array": (np.ma.ones(2), r"\['x'\]: a MaskedArray array"),
    "NaN": (float("nan"), r"\['x'\]: the value nan is not finite"),
    "an object": (object(), r"\['x'\]: a object is not a checkpoint value"),
    "a set": ({1, 2}, r"\['x'\]: a set is not a checkpoint value"),
    "an int key": ({1: 2.0}, r"\['x'\]: the key 1 is not text"),
}


@pytest.mark.parametrize("name", list(UNSAVEABLE))
def test_save_refuses_what_load_would_refuse_naming_the_place(tmp_path, name):
    """A ``CProp`` wrapper around a protocol optimizer whose state dict holds an object array
    used to *save* a pickled member, a file that ``load`` then refused. The save is refused
    before the file is touched: an existing checkpoint stays as it was."""
    value, message = UNSAVEABLE[name]
    params = [np.ones(3)]
    wrapper = CProp(ProtocolOptimizer(params, {"x": np.ones(2)}))
    wrapper.step([np.ones(3)])
    path = tmp_path / "state.npz"
    wrapper.save(path)
    good = path.read_bytes()
    wrapper.base_optimizer.saved = {"x": value}
    with pytest.raises(ValueError, match=rf"cannot save state_dict\['base'\]{message}"):
        wrapper.save(path)
    assert path.read_bytes() == good
    assert sorted(p.name for p in tmp_path.iterdir()) == ["state.npz"]  # no temporary file left


def test_plain_numeric_arrays_of_every_kind_round_trip(tmp_path):
    tree = {
        k: np.arange(3).astype(t)
        for k, t in {"b": bool, "i": np.int16, "u": np.uint32, "f": np.float16, "c": np.complex64}.items()
    }
    checkpoint.save(tmp_path / "x.npz", tree)
    assert_identical(checkpoint.load(tmp_path / "x.npz"), tree)


# -- 10. memory: a limit from the optimizer's own size, no unreferenced entries -------------


@pytest.mark.parametrize("kind", list(OPTIMIZERS))
@pytest.mark.parametrize("dtype", DTYPES)
def test_every_optimizer_loads_its_own_checkpoint_within_the_default_limit(tmp_path, kind, dtype):
    opt, _ = stepped(kind, dtype)
    path = tmp_path / "state.npz"
    opt.save(path)
    with zipfile.ZipFile(path) as archive:
        declared = sum(info.file_size for info in archive.infolist())
    budget = opt.checkpoint_bytes()
    assert declared <= budget <= declared + 2 * (1 << 20)  # the state, and a margin of about 1 MiB
    fresh, _ = stepped(kind, dtype)
    fresh.load(path)
    assert_identical(fresh.state_dict(), opt.state_dict())


def _with_extra_member(path: Path, size: int) -> None:
    with zipfile.ZipFile(path, "a", compression=zipfile.ZIP_DEFLATED) as archive:
        archive.writestr("extra.npy", b"\0" * size)


def test_an_extra_member_is_refused_by_the_default_limit(tmp_path):
    """A small checkpoint plus a 64 MiB entry of zeros (64 KiB compressed): the default limit,
    the optimizer's own state plus about 1 MiB, refuses it unread (the old default, the
    physical memory, let a 23 MiB file claim 23 GiB)."""
    opt, _ = stepped()
    path = tmp_path / "state.npz"
    opt.save(path)
    _with_extra_member(path, 64 << 20)
    assert path.stat().st_size < 1 << 20
    refused_load(
        opt,
        path,
        CheckpointError,
        rf"more than this optimizer's checkpoint can hold \({opt.checkpoint_bytes()} bytes\); nothing was read",
    )


def test_an_unreferenced_member_is_refused_before_it_is_decompressed(tmp_path):
    """Even within a generous limit: the entry the metadata does not name is refused before
    it is read. Its CRC is damaged, so reading it would have said "CRC-32 mismatch" instead."""
    opt, _ = stepped()
    path = tmp_path / "state.npz"
    opt.save(path)
    _with_extra_member(path, 1 << 20)
    data = bytearray(path.read_bytes())
    central = data.rindex(b"PK\x01\x02")  # the last central-directory record: the extra entry
    struct.pack_into("<I", data, central + 16, 0xDEADBEEF)  # its CRC-32
    path.write_bytes(bytes(data))
    before = snapshot(opt)
    with pytest.raises(CheckpointError, match=r"1 entry the metadata does not refer to \('extra.npy'\)"):
        opt.load(path, max_bytes=1 << 30)
    assert_identical(snapshot(opt), before)


def test_the_bare_function_defaults_to_at_most_1_gib():
    assert checkpoint.default_max_bytes() <= 1 << 30


# -- 11. values validated as a step would produce them; unknown keys refused --------------


def _hostile(opt, tmp_path: Path, edit) -> Path:
    """The optimizer's checkpoint with ``edit`` applied to its state dict (written directly)."""
    state_dict = opt.state_dict()
    edit(state_dict)
    path = tmp_path / "hostile.npz"
    checkpoint.save(path, state_dict)
    return path


HOSTILE_VALUES = {
    "NaN in exp_avg": (
        "Adam",
        lambda sd: sd["state"][0]["exp_avg"].__setitem__(1, np.nan),
        r"parameter 0 \(group 0, index 0\): state entry 'exp_avg' holds NaN \(element \(1,\)\)",
    ),
    "negative exp_avg_sq": (
        "Adam",
        lambda sd: sd["state"][1]["exp_avg_sq"].__setitem__((0, 1), -1.0),
        r"parameter 1 \(group 0, index 1\): state entry 'exp_avg_sq' is a second moment .* -1.0 < 0",
    ),
    "negative max_exp_avg_sq": (
        "AdamW-amsgrad",
        lambda sd: sd["state"][2]["max_exp_avg_sq"].__setitem__((), -2.0),
        r"state entry 'max_exp_avg_sq' is a second moment",
    ),
    "NaN in a momentum buffer": (
        "SGD",
        lambda sd: sd["state"][0]["momentum_buffer"].__setitem__(0, np.nan),
        r"state entry 'momentum_buffer' holds NaN",
    ),
    "negative cprop_v": (
        "CPropSGD",
        lambda sd: sd["state"][0]["cprop_v"].__setitem__(0, -1e-30),
        r"state entry 'cprop_v' is a second moment",
    ),
    "NaN in the wrapper's cprop_m": (
        "CProp(SGD)",
        lambda sd: sd["state"][0]["cprop_m"].__setitem__(0, np.nan),
        r"CProp.load_state_dict parameter 0 .*state entry 'cprop_m' holds NaN",
    ),
    "a group's learning_rate": (
        "Adam",
        lambda sd: sd["param_groups"][0].__setitem__("learning_rate", 5.0),
        r"param group 0: unknown key\(s\) \['learning_rate'\]",
    ),
    "an extra top-level key": (
        "SGD",
        lambda sd: sd.__setitem__("extra", 1),
        r"SGD.load_state_dict: unknown key\(s\) \['extra'\]",
    ),
    "an extra key in a parameter spec": (
        "CPropAdam",
        lambda sd: sd["param_specs"][0].__setitem__("strides", [4]),
        r"parameter 0 \(group 0, index 0\) spec: unknown key\(s\) \['strides'\]",
    ),
    "an extra wrapper hyperparameter": (
        "CProp(Adam)",
        lambda sd: sd["hyperparams"].__setitem__("gamma", 0.5),
        r"CProp.load_state_dict hyperparams: unknown key\(s\) \['gamma'\]",
    ),
    "an extra top-level key in the wrapper": (
        "CProp(Adam)",
        lambda sd: sd.__setitem__("scales", [1.0]),
        r"CProp.load_state_dict: unknown key\(s\) \['scales'\]",
    ),
    "lr past float32 in a group": (
        "SGD",
        lambda sd: sd["param_groups"][1].__setitem__("lr", 1e39),
        r"param group 1: invalid lr=1e\+39: not a finite float32",
    ),
}


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("name", list(HOSTILE_VALUES))
def test_hostile_values_and_unknown_keys_are_refused(tmp_path, name, backend):
    """NaN in ``exp_avg`` and a negative ``exp_avg_sq`` used to load, and the next finite step
    made the parameters non-finite; unknown keys were dropped without a word."""
    kind, edit, message = HOSTILE_VALUES[name]
    opt, _ = stepped(kind, backend=backend)
    path = _hostile(opt, tmp_path, edit)
    refused_load(opt, path, ValueError, message)


@pytest.mark.parametrize("backend", BACKENDS)
def test_nan_state_loads_under_propagate_and_inf_always(tmp_path, backend):
    """NaN gradients enter the state under ``nonfinite="propagate"``, so such a checkpoint is
    valid there; +inf in a second moment comes from finite input (an overflowed square)."""
    opt, _ = stepped("Adam", backend=backend, nonfinite="propagate")
    path = _hostile(opt, tmp_path, lambda sd: sd["state"][0]["exp_avg"].__setitem__(1, np.nan))
    opt.load(path)
    assert np.isnan(opt.state[0]["exp_avg"][1])
    strict, _ = stepped("Adam", backend=backend)
    path = _hostile(strict, tmp_path, lambda sd: sd["state"][0]["exp_avg_sq"].__setitem__(1, np.inf))
    strict.load(path)
    assert np.isinf(strict.state[0]["exp_avg_sq"][1])


# -- 12. paths that name no file ------------------------------------------------------------


def test_a_path_ending_in_a_separator_is_refused_and_writes_nothing(tmp_path):
    """``save("x.npz/")`` used to write ``x.npz``."""
    opt, _ = stepped()
    target = str(tmp_path / "x.npz") + "/"
    with pytest.raises(IsADirectoryError, match=r"names a folder, not a file: '.*x.npz/'"):
        opt.save(target)
    assert not any(tmp_path.iterdir())
    with pytest.raises(OSError, match="x.npz/"):
        opt.load(target)


def test_an_existing_directory_is_refused_as_a_save_target(tmp_path):
    opt, _ = stepped()
    (tmp_path / "d.npz").mkdir()
    with pytest.raises(IsADirectoryError, match="d.npz"):
        opt.save(tmp_path / "d.npz")
    assert list((tmp_path / "d.npz").iterdir()) == []


def test_an_empty_path_is_a_value_error():
    """``save("")`` used to raise EBUSY from the rename."""
    opt, _ = stepped()
    for call in (opt.save, opt.load, lambda p: checkpoint.load(p)):
        with pytest.raises(ValueError, match="checkpoint path is empty"):
            call("")


@pytest.mark.skipif(not hasattr(os, "symlink"), reason="no symbolic links")
def test_a_loop_of_symbolic_links_is_an_os_error_naming_the_path(tmp_path):
    """A symlink loop used to raise ``RuntimeError`` from ``Path.resolve``."""
    opt, _ = stepped()
    a, b = tmp_path / "a.npz", tmp_path / "b.npz"
    os.symlink(b, a)
    os.symlink(a, b)
    with pytest.raises(OSError, match="a.npz") as info:
        opt.save(a)
    assert info.value.errno == errno.ELOOP
    refused_load(opt, a, OSError, "a.npz")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.npz", "b.npz"]


def test_a_missing_folder_is_named(tmp_path):
    opt, _ = stepped()
    with pytest.raises(FileNotFoundError, match="the checkpoint's folder does not exist: '.*missing'"):
        opt.save(tmp_path / "missing" / "x.npz")


def test_a_missing_file_is_named(tmp_path):
    opt, _ = stepped()
    refused_load(opt, tmp_path / "nope.npz", FileNotFoundError, "checkpoint file not found: '.*nope.npz'")


def test_the_wrapper_of_a_cprop_ref_optimizer_budgets_both(tmp_path):
    params = [np.ones(1000, np.float32)]
    base = Adam(params)
    wrapper = CProp(base)
    assert wrapper.checkpoint_bytes() > base.checkpoint_bytes() + 2 * 4000
    # A wrapper around a foreign protocol optimizer falls back to the module's default limit.
    assert CProp(ProtocolOptimizer([np.ones(2)], {})).checkpoint_bytes() is None
    assert SGD([np.ones(2)], lr=0.1).checkpoint_bytes() > 0
