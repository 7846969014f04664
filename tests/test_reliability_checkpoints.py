"""Well-formed checkpoints that do not fit the optimizer: a checkpoint for a
different optimizer, a different number of parameters, other shapes or dtypes, or with
an invalid hyperparameter gets a ``ValueError`` that says what is wrong, and the
optimizer is unchanged. Also: a checkpoint round trip is exact, and a failed save
leaves the previous file and no temporary file behind.
"""

from __future__ import annotations

import itertools
import json
import os

import numpy as np
import pytest

from cprop_ref import SGD, CheckpointError, CProp, checkpoint
from tests.reliability_support import (
    BACKENDS,
    DTYPES,
    OPTIMIZERS,
    PARAM_SHAPES,
    assert_identical,
    build,
    make_grads,
    make_groups,
    snapshot,
)


def _stepped(kind: str, dtype=np.float64, steps: int = 3, seed: int = 0, backend: str = "numpy"):
    optimizer, params = build(kind, dtype, seed=seed, backend=backend)
    rng = np.random.default_rng(seed + 10)
    for _ in range(steps):
        optimizer.step(make_grads(dtype, rng))
    return optimizer, params


def _class_name(kind: str) -> str:
    optimizer, _ = build(kind, np.float64)
    base = getattr(optimizer, "base_optimizer", None)
    return type(optimizer).__name__ + (f"({type(base).__name__})" if base is not None else "")


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("kind", OPTIMIZERS)
@pytest.mark.parametrize("dtype", DTYPES)
def test_round_trip_is_exact_and_the_run_continues_identically(kind, dtype, backend, tmp_path):
    """Save after 3 steps, load into a fresh optimizer built with other hyperparameters:
    state, hyperparameters, and the next 3 steps are identical, byte for byte."""
    original, params = _stepped(kind, dtype, backend=backend)
    original.save(tmp_path / "c.npz")
    restored, restored_params = build(kind, dtype, seed=0, backend=backend)
    for group in restored.param_groups:
        group["lr"] = 0.5  # overwritten by the load
    for restored_param, param in zip(restored_params, params):
        restored_param[...] = param  # a checkpoint holds the optimizer, not the parameters
    restored.load(tmp_path / "c.npz")
    assert_identical(snapshot(restored), snapshot(original))
    rng_a, rng_b = np.random.default_rng(7), np.random.default_rng(7)
    for _ in range(3):
        original.step(make_grads(dtype, rng_a))
        restored.step(make_grads(dtype, rng_b))
    assert_identical(snapshot(restored), snapshot(original))
    assert [p.name for p in tmp_path.iterdir()] == ["c.npz"]  # no temporary file left


@pytest.mark.skipif(len(BACKENDS) < 2, reason="one backend only")
@pytest.mark.parametrize("kind", OPTIMIZERS)
@pytest.mark.parametrize("dtype", DTYPES)
def test_a_checkpoint_loads_into_the_other_backend_exactly(kind, dtype, tmp_path):
    """Saved by one backend, loaded into an optimizer on the other: the same state, byte
    for byte (continuing may then differ by the backends' rounding, not checked here)."""
    for source, target in (BACKENDS, BACKENDS[::-1]):
        original, params = _stepped(kind, dtype, backend=source)
        original.save(tmp_path / "c.npz")
        restored, restored_params = build(kind, dtype, backend=target)
        for restored_param, param in zip(restored_params, params):
            restored_param[...] = param
        restored.load(tmp_path / "c.npz")
        assert_identical(snapshot(restored), snapshot(original), f"{source} -> {target}")


def test_a_checkpoint_for_another_optimizer_is_refused(tmp_path):
    """Every ordered pair of optimizer classes (the kinds that share a class load each
    other's checkpoints: that is a change of hyperparameters, not of optimizer)."""
    refused = 0
    for saved_kind, target_kind in itertools.permutations(OPTIMIZERS, 2):
        saved_class, target_class = _class_name(saved_kind), _class_name(target_kind)
        if saved_class == target_class:
            continue
        saved, _ = _stepped(saved_kind)
        saved.save(tmp_path / "other.npz")
        target, _ = _stepped(target_kind, seed=1)
        before = snapshot(target)
        with pytest.raises(ValueError, match=r"the state dict is for '\w+', not \w+"):
            target.load(tmp_path / "other.npz")
        assert_identical(snapshot(target), before)
        refused += 1
    assert refused == 68  # 9 kinds, 72 ordered pairs, 4 of them within a class


PARAM_MISMATCHES = {
    "one parameter more": (lambda: [np.zeros(3), np.zeros((2, 2)), np.zeros(()), np.zeros(5)], "parameters saved"),
    "shape (4,) for (3,)": (lambda: [np.zeros(4), np.zeros((2, 2)), np.zeros(())], "was saved as"),
    "shape (4,) for (2, 2)": (lambda: [np.zeros(3), np.zeros(4), np.zeros(())], "was saved as"),
    "shape (1,) for ()": (lambda: [np.zeros(3), np.zeros((2, 2)), np.zeros(1)], "was saved as"),
    "float32 for float64": (lambda: [np.zeros(3, np.float32), np.zeros((2, 2)), np.zeros(())], "was saved as"),
    "float16 for float64": (lambda: [np.zeros(3), np.zeros((2, 2)), np.zeros((), np.float16)], "was saved as"),
}


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("mismatch", PARAM_MISMATCHES)
@pytest.mark.parametrize("kind", OPTIMIZERS)
def test_a_checkpoint_for_other_parameters_is_refused(kind, mismatch, backend, tmp_path):
    saved, _ = _stepped(kind)
    saved.save(tmp_path / "c.npz")
    make_params, expected = PARAM_MISMATCHES[mismatch]
    params = make_params()
    target = OPTIMIZERS[kind](params, "raise", backend)  # a fourth parameter joins group 1
    rng = np.random.default_rng(3)
    target.step([np.asarray(0.3 + rng.standard_normal(p.shape)).astype(p.dtype) for p in params])
    before = snapshot(target)
    with pytest.raises(ValueError) as info:
        target.load(tmp_path / "c.npz")
    message = str(info.value)
    # The wrapper checks its own state first: "state entry 'cprop_m' must be a (4,) float64 array, got (3,) float64".
    assert any(reason in message for reason in (expected, "parameters saved", "parameter states saved", "must be a")), (
        message
    )
    assert_identical(snapshot(target), before)


def _rewrite(path, edit) -> None:
    """Load the tree of checkpoint ``path``, apply ``edit`` to it, save it back."""
    tree = checkpoint.load(path)
    edit(tree)
    checkpoint.save(path, tree)


def _base(tree):
    return tree["base"] if tree["optimizer"] == "CProp" else tree


TREE_EDITS = {
    "lr = -1": (lambda t: _base(t)["param_groups"][0].update(lr=-1.0), "invalid lr=-1.0"),
    "lr missing": (lambda t: _base(t)["param_groups"][1].pop("lr"), "['lr'] missing"),
    "a group too many": (lambda t: _base(t)["param_groups"].append(dict(_base(t)["param_groups"][1])), "groups saved"),
    "params renumbered": (lambda t: _base(t)["param_groups"][1].update(params=[0]), "saved with parameters [0]"),
    "unknown state entry": (lambda t: t["state"][0].update(extra=np.zeros(3)), "unknown state entries ['extra']"),
    "state of the wrong shape": (lambda t: _first_array(t["state"], np.zeros(4)), "must be a (3,) float64 array"),
    "state of the wrong dtype": (lambda t: _first_array(t["state"], np.zeros(3, np.float32)), "float64 array, got"),
    "negative step count": (lambda t: _first_count(t["state"], -1), "must be a count >= 0"),
    "fractional step count": (lambda t: _first_count(t["state"], 1.5), "must be a count >= 0"),
    "unknown nonfinite policy": (lambda t: t.update(nonfinite="ignore"), "invalid nonfinite='ignore'"),
    "state list too short": (lambda t: t["state"].pop(), "one entry per parameter|parameter states saved"),
}


def _first_array(states, value) -> None:
    for name, entry in states[0].items():
        if isinstance(entry, np.ndarray):
            states[0][name] = value
            return
    raise AssertionError("no array in the first parameter's state")


def _first_count(states, value) -> None:
    for name in ("step",):
        if name in states[0]:
            states[0][name] = value
            return
    states[0]["step"] = value  # SGD has no count: then it is an unknown entry, also refused


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("edit", TREE_EDITS)
@pytest.mark.parametrize("kind", OPTIMIZERS)
def test_an_invalid_state_is_refused_with_the_reason(kind, edit, backend, tmp_path):
    saved, _ = _stepped(kind)
    path = tmp_path / "c.npz"
    saved.save(path)
    change, expected = TREE_EDITS[edit]
    _rewrite(path, change)
    target, _ = _stepped(kind, seed=1, backend=backend)
    before = snapshot(target)
    with pytest.raises(ValueError) as info:
        target.load(path)
    message = str(info.value)
    alternatives = expected.split("|") + (["unknown state entries ['step']"] if "count" in edit else [])
    assert any(a in message for a in alternatives), message
    assert_identical(snapshot(target), before)


def test_wrong_format_version_is_refused(tmp_path):
    optimizer, _ = _stepped("CPropSGD")
    path = tmp_path / "c.npz"
    optimizer.save(path)
    entries = dict(np.load(path))
    meta = json.loads(str(entries["__meta__"]))
    meta["version"] = checkpoint.FORMAT_VERSION + 1
    entries["__meta__"] = np.array(json.dumps(meta))
    with open(path, "wb") as handle:
        np.savez(handle, **entries)
    before = snapshot(optimizer)
    with pytest.raises(CheckpointError, match=f"format version {checkpoint.FORMAT_VERSION + 1}, this cprop-ref reads"):
        optimizer.load(path)
    assert_identical(snapshot(optimizer), before)


def test_a_failed_save_leaves_the_old_file_and_no_temporary(tmp_path):
    """A state that cannot be encoded (a NaN hyperparameter slipped in after
    construction) fails before anything is written: the old checkpoint stays."""
    params = [np.zeros(3)]
    optimizer = SGD(params, lr=0.1)
    path = tmp_path / "c.npz"
    optimizer.save(path)
    old = path.read_bytes()
    optimizer.param_groups[0]["lr"] = float("nan")  # unchecked until the next step or save
    with pytest.raises(ValueError):
        optimizer.save(path)
    assert path.read_bytes() == old
    assert sorted(os.listdir(tmp_path)) == ["c.npz"]
    optimizer.param_groups[0]["lr"] = 0.1
    with pytest.raises(FileNotFoundError):
        optimizer.save(tmp_path / "missing-folder" / "c.npz")
    assert sorted(os.listdir(tmp_path)) == ["c.npz"]


def test_wrapper_checkpoint_into_a_wrapper_around_another_base(tmp_path):
    params = [np.zeros(3), np.zeros((2, 2)), np.zeros(())]
    sgd = CProp(SGD(make_groups(params, 0.05), lr=0.1))
    sgd.step([np.ones(s) for s in PARAM_SHAPES])
    sgd.save(tmp_path / "c.npz")
    other, _ = _stepped("CProp(Adam)")
    before = snapshot(other)
    with pytest.raises(ValueError, match="the state dict is for 'SGD', not Adam"):
        other.load(tmp_path / "c.npz")
    assert_identical(snapshot(other), before)


@pytest.mark.skipif(os.name != "posix", reason="POSIX permission bits")
def test_a_save_keeps_the_permissions_of_the_file_it_replaces(tmp_path):
    """The temporary file starts owner-only (mkstemp); replacing a checkpoint must not
    silently change who can read it."""
    optimizer, _ = _stepped("CPropSGD")
    path = tmp_path / "c.npz"
    optimizer.save(path)
    assert os.stat(path).st_mode & 0o777 == 0o600  # a new checkpoint: owner only
    for mode in (0o644, 0o640, 0o600):
        os.chmod(path, mode)
        optimizer.save(path)
        assert os.stat(path).st_mode & 0o777 == mode
