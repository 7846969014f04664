"""State dicts, checkpoint files and bit-identical resumption, on every optimizer and dtype."""

from __future__ import annotations

import json
import zipfile

import numpy as np
import pytest

from cprop_ref import Adam, CheckpointError, CPropAdam, CPropSGD
from cprop_ref.checkpoint import FORMAT_VERSION, META_KEY
from tests.optimizer_matrix import DTYPES, FACTORIES, OPTIMIZER_NAMES, assert_tree_equal, make_grads, make_params


def grad_stream(params, seed, steps):
    """Gradients for ``steps`` steps; every third step one parameter receives none."""
    rng = np.random.default_rng(seed)
    stream = []
    for step in range(steps):
        grads = make_grads(params, rng)
        if step % 3 == 2:
            grads[step % len(grads)] = None
        stream.append(grads)
    return stream


# The CDF under test in the resume: ``normal`` on NumPy; on Numba ``bft``, whose kernels the
# other default tests compile anyway (a ``normal`` kernel per optimizer and dtype would be
# compiled for this test alone; the checkpoint code does not depend on the CDF).
RESUME_CDF = {"numpy": "normal", "numba": "bft"}


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("name", OPTIMIZER_NAMES)
def test_save_load_resume_is_bit_identical(tmp_path, name, dtype, backend):
    """Save after k steps, load into a fresh optimizer over copies of the parameters, continue:
    parameters and state equal the uninterrupted run bit for bit, at every later step."""
    params = make_params(dtype)
    stream = grad_stream(params, seed=7, steps=20)
    cdf = RESUME_CDF[backend]
    uninterrupted = FACTORIES[name](params, cdf, backend)
    for grads in stream[:8]:
        uninterrupted.step(grads)
    path = tmp_path / "opt.npz"
    uninterrupted.save(path)
    resumed_params = [np.zeros_like(p) for p in params]
    resumed = FACTORIES[name](resumed_params, cdf, backend)
    resumed.load(path)
    for p, q in zip(resumed_params, params):
        p[...] = q  # the parameters are the user's arrays; the checkpoint holds optimizer state
    for grads in stream[8:]:
        uninterrupted.step(grads)
        resumed.step(grads)
        for p, q in zip(resumed.params, uninterrupted.params):
            np.testing.assert_array_equal(p, q)
        assert_tree_equal(resumed.state_dict(), uninterrupted.state_dict())


@pytest.mark.parametrize("name", OPTIMIZER_NAMES)
def test_state_dict_round_trip_and_independence(name, backend):
    """A state dict is plain JSON besides its arrays, loads into an optimizer built with another
    CDF (which only loads, so compiles nothing), and is a copy in both directions."""
    params = make_params(np.float32)
    opt = FACTORIES[name](params, "bft", backend)
    for grads in grad_stream(params, seed=8, steps=5):
        opt.step(grads)
    saved = opt.state_dict()
    json.dumps(_without_arrays(saved))  # everything but the arrays is plain JSON
    other = FACTORIES[name]([p.copy() for p in params], "bfo", backend)
    other.load_state_dict(saved)
    assert_tree_equal(other.state_dict(), saved)
    # The state dict is a copy: changing it does not reach the optimizer, nor the other way.
    reference = opt.state_dict()
    for array in _arrays(saved):
        array[...] = 123
    assert_tree_equal(opt.state_dict(), reference)


def _arrays(tree):
    if isinstance(tree, np.ndarray):
        yield tree
    elif isinstance(tree, dict):
        for v in tree.values():
            yield from _arrays(v)
    elif isinstance(tree, list):
        for v in tree:
            yield from _arrays(v)


def _without_arrays(tree):
    if isinstance(tree, np.ndarray):
        return None
    if isinstance(tree, dict):
        return {k: _without_arrays(v) for k, v in tree.items()}
    if isinstance(tree, list):
        return [_without_arrays(v) for v in tree]
    return tree


def test_checkpoint_file_holds_no_objects_and_a_format_version(tmp_path):
    opt = CPropAdam([np.ones(3), np.ones(())], lr=0.1, amsgrad=True)
    opt.step([np.ones(3), np.ones(())])
    path = tmp_path / "c.npz"
    opt.save(path)
    with np.load(path, allow_pickle=False) as npz:
        for key in npz.files:
            assert npz[key].dtype != object
        meta = json.loads(str(npz[META_KEY][()]))
    assert meta["format"] == "cprop-ref-checkpoint" and meta["version"] == FORMAT_VERSION
    assert meta["tree"]["optimizer"] == "CPropAdam"


def test_checkpoint_of_another_version_is_refused_and_changes_nothing(tmp_path):
    opt = CPropSGD([np.ones(3)], lr=0.1)
    opt.step([np.ones(3)])
    path = tmp_path / "c.npz"
    opt.save(path)
    with np.load(path) as npz:
        entries = {k: npz[k] for k in npz.files}
    meta = json.loads(str(entries[META_KEY][()]))
    meta["version"] = FORMAT_VERSION + 1
    entries[META_KEY] = np.array(json.dumps(meta))
    np.savez(path, **entries)
    fresh = CPropSGD([np.ones(3)], lr=0.5)
    before = fresh.state_dict()
    with pytest.raises(CheckpointError, match=f"version {FORMAT_VERSION + 1}"):
        fresh.load(path)
    assert_tree_equal(fresh.state_dict(), before)


def test_loading_a_damaged_file_names_it(tmp_path):
    path = tmp_path / "broken.npz"
    path.write_bytes(b"PK\x03\x04 definitely not a zip")
    opt = Adam([np.ones(2)])
    with pytest.raises(CheckpointError, match="broken.npz"):
        opt.load(path)
    with pytest.raises(FileNotFoundError, match="missing.npz"):
        opt.load(tmp_path / "missing.npz")
    assert zipfile.is_zipfile(path) is False


def test_saving_replaces_the_file_atomically(tmp_path):
    path = tmp_path / "c.npz"
    opt = CPropSGD([np.ones(3)], lr=0.1)
    opt.save(path)
    opt.step([np.ones(3)])
    opt.save(path)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["c.npz"]  # no temporary left behind
    fresh = CPropSGD([np.ones(3)], lr=0.1)
    fresh.load(path)
    assert fresh.state[0]["step"] == 1
