"""The optimizers under hostile use, on both backends: read-only, subclassed, overlapping and
swapped-in arrays, hyperparameters the dtype cannot hold, aliased gradients, in-place changes.

Every refused call must raise ``ValueError`` naming the parameter, group or hyperparameter
and change nothing: parameters and every state array byte-identical to a deep copy taken
before (``snapshot`` / ``assert_identical``). The arrays a step may touch are checked in one
place (``cprop_ref.gradients``: plain ``ndarray``, writeable, no memory shared between two
parameters, a dtype that holds every hyperparameter), at construction and at every step.
"""

from __future__ import annotations

import math
import warnings

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from cprop_ref import SGD, Adam, CProp, CPropAdam
from cprop_ref.gradients import first_overlap
from tests.reliability_support import BACKENDS, INFOS, OPTIMIZERS, assert_identical, build, make_grads, snapshot

KINDS = list(OPTIMIZERS)
WRAPPERS = [kind for kind in KINDS if INFOS[kind].wraps]
#: float32 and float64 go through the Numba kernels on ``backend="numba"``; float16 never does.
KERNEL_DTYPES = (np.float32, np.float64)


def stepped(kind: str, backend: str, dtype: type = np.float32, steps: int = 2):
    """``kind`` over fresh parameters after ``steps`` good steps: state exists everywhere."""
    opt, params = build(kind, dtype, backend=backend)
    rng = np.random.default_rng(1)
    for _ in range(steps):
        opt.step(make_grads(dtype, rng))
    return opt, params


def as_matrix(a: np.ndarray) -> np.ndarray:
    """``np.asmatrix(a)`` without its PendingDeprecationWarning (the subclass is the point here)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", PendingDeprecationWarning)
        return np.asmatrix(a)


def refused(opt, grads, match: str) -> None:
    """``opt.step(grads)`` raises a ValueError matching ``match`` and changes nothing."""
    before = snapshot(opt)
    with pytest.raises(ValueError, match=match):
        opt.step(grads)
    assert_identical(snapshot(opt), before, "after a refused step")


# -- 1. a parameter made read-only after construction -------------------------------------


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("kind", KINDS)
def test_a_parameter_made_read_only_later_is_refused_before_anything_moves(kind, backend):
    """The Numba backend used to step it anyway, the NumPy backend to fail half-way (other
    parameters and the step count already changed) with NumPy's message."""
    opt, params = stepped(kind, backend)
    params[2].setflags(write=False)  # the last parameter: a careless step changes the others first
    refused(opt, make_grads(np.float32, np.random.default_rng(2)), r"parameter 2 \(group 1, index 0\).*read-only")
    params[2].setflags(write=True)
    opt.step(make_grads(np.float32, np.random.default_rng(2)))  # and it steps again once writeable


# -- 2. ndarray subclasses -------------------------------------------------------------------


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("fresh", [True, False], ids=["fresh", "stepped"])
def test_masked_and_matrix_gradients_are_refused(kind, backend, fresh):
    """A NaN under a ``MaskedArray``'s mask passed the finiteness check, then Numba wrote it
    into the parameter (NumPy skipped the element); an ``np.matrix`` made ``g * g`` a matrix
    product. Both are subclasses of ``ndarray`` and refused by name."""
    opt, _ = stepped(kind, backend, steps=0 if fresh else 2)
    grads = make_grads(np.float32, np.random.default_rng(3))
    masked = list(grads)
    masked[0] = np.ma.MaskedArray(np.array([1.0, np.nan, 1.0], np.float32), mask=[False, True, False])
    refused(opt, masked, r"gradient of parameter 0 \(group 0, index 0\).*MaskedArray")
    matrix = list(grads)
    matrix[1] = as_matrix(grads[1])
    refused(opt, matrix, r"gradient of parameter 1 \(group 0, index 1\).*matrix")


@pytest.mark.parametrize("backend", BACKENDS)
def test_subclass_parameters_are_refused(backend):
    with pytest.raises(ValueError, match="parameter 0: parameters must be numpy.ndarray.*matrix"):
        Adam([as_matrix(np.ones((2, 2)))], backend=backend)
    with pytest.raises(ValueError, match="parameter 1: parameters must be numpy.ndarray.*MaskedArray"):
        SGD([np.ones(2), np.ma.ones(2)], lr=0.1, backend=backend)


# -- 3. hyperparameters that the parameters' dtype cannot hold ----------------------------

#: (kind, hyperparameter, value past float32's largest value 3.4028235e38)
HUGE = [
    ("SGD", "lr", 1e39),
    ("SGD", "weight_decay", 1e39),
    ("Adam", "lr", 1e39),
    ("Adam", "eps", 1e39),
    ("CPropSGD", "lr", 1e39),
    ("CPropSGD", "cprop_c", 1e39),
    ("CPropAdam", "cprop_eps", 1e39),
    ("AdamW-amsgrad", "weight_decay", 3.5e38),
]


@pytest.mark.parametrize("backend", BACKENDS)
def test_sgd_lr_1e39_on_float32_is_refused_at_construction(backend):
    """``[1, 0, -1]`` with gradient ``[0, 0, 1]`` gave ``[nan, nan, -inf]`` when 1e39 was accepted."""
    with pytest.raises(ValueError, match=r"SGD param group 0: invalid lr=1e\+39: not a finite float32"):
        SGD([np.array([1.0, 0.0, -1.0], np.float32)], lr=1e39, backend=backend)
    # float64 holds it, and the result is what IEEE float64 gives: no NaN from finite input.
    w = np.array([1.0, 0.0, -1.0])
    SGD([w], lr=1e39, backend=backend).step([np.array([0.0, 0.0, 1.0])])
    assert w.tolist() == [1.0, 0.0, -1e39]


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("kind, name, value", HUGE)
def test_a_hyperparameter_past_the_dtype_is_refused_between_steps(kind, name, value, backend):
    opt, params = stepped(kind, backend)
    opt.param_groups[1][name] = value
    refused(opt, make_grads(np.float32, np.random.default_rng(4)), rf"param group 1: invalid {name}=.*float32")


@pytest.mark.parametrize("backend", BACKENDS)
def test_float16_parameters_compute_in_float32_so_take_float32_hyperparameters(backend):
    w = np.ones(2, np.float16)
    Adam([w], lr=1e30, backend=backend)  # past float16's 65504, but the step computes in float32
    with pytest.raises(ValueError, match="invalid lr=1e\\+39: not a finite float32"):
        Adam([w], lr=1e39, backend=backend)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("name", ["c", "eps"])
def test_wrapper_hyperparameter_past_the_dtype_is_refused(name, backend):
    params = [np.ones(3, np.float32)]
    with pytest.raises(ValueError, match=rf"CProp: invalid {name}=1e\+39: not a finite float32"):
        CProp(SGD(params, lr=0.1, backend=backend), backend=backend, **{name: 1e39})
    opt = CProp(SGD(params, lr=0.1, backend=backend), backend=backend)
    opt.step([np.ones(3, np.float32)])
    before = snapshot(opt)
    setattr(opt, name, 1e39)
    with pytest.raises(ValueError, match=rf"CProp: invalid {name}=1e\+39: not a finite float32"):
        opt.step([np.ones(3, np.float32)])
    setattr(opt, name, before[1]["hyperparams"][name])
    assert_identical(snapshot(opt), before)


def test_a_float32_group_added_later_is_checked_against_its_own_dtype():
    opt = SGD([np.ones(2)], lr=1e39)  # float64: fine
    with pytest.raises(ValueError, match="param group 1: invalid lr=1e\\+39"):
        opt.add_param_group({"params": [np.ones(2, np.float32)]})
    assert len(opt.param_groups) == 1 and len(opt.state) == 1


# -- 4. overlapping parameters -------------------------------------------------------------


@pytest.mark.parametrize("backend", BACKENDS)
def test_overlapping_views_as_two_parameters_are_refused(backend):
    """``Adam([m[:4], m[2:]])`` was accepted, and the backends then disagreed by 0.14."""
    m = np.arange(6.0)
    with pytest.raises(ValueError, match=r"parameter 1: shares memory with parameter 0 of this group"):
        Adam([m[:4], m[2:]], backend=backend)
    opt = Adam([m[:3]], backend=backend)
    with pytest.raises(ValueError, match=r"param group 1, parameter 0: shares memory with parameter 0 \(group 0"):
        opt.add_param_group({"params": [m[2:]]})
    assert len(opt.param_groups) == 1
    with pytest.raises(ValueError, match="shares memory"):
        SGD([m.reshape(2, 3), m[::2]], lr=0.1, backend=backend)


@pytest.mark.parametrize("backend", BACKENDS)
def test_interleaved_views_share_no_element_and_are_allowed(backend):
    """``a[::2]`` and ``a[1::2]`` span the same bytes but share no element: exactness
    (``np.shares_memory``) keeps them allowed, and they step as two separate arrays would."""
    a = np.linspace(-1, 1, 8)
    separate = [a[::2].copy(), a[1::2].copy()]
    views = Adam([a[::2], a[1::2]], lr=0.1, backend=backend)
    twin = Adam(separate, lr=0.1, backend=backend)
    g = [np.array([1.0, -2.0, 3.0, 0.5]), np.array([0.1, 0.2, -0.3, 4.0])]
    for _ in range(3):
        views.step(g)
        twin.step(g)
    assert a[::2].tobytes() == separate[0].tobytes() and a[1::2].tobytes() == separate[1].tobytes()


@st.composite
def views_of_one_buffer(draw):
    size = draw(st.integers(1, 24))
    buffer = np.zeros(size)
    views = []
    for _ in range(draw(st.integers(2, 6))):
        start = draw(st.integers(0, size - 1))
        stop = draw(st.integers(start + 1, size))
        step = draw(st.integers(1, 3))
        views.append(buffer[start:stop:step])
    return views


@given(views_of_one_buffer())
def test_first_overlap_finds_a_shared_element_exactly_when_there_is_one(views):
    """Against the brute force over all pairs (``np.shares_memory``, exact)."""
    pairs = [(i, j) for j in range(len(views)) for i in range(j) if np.shares_memory(views[i], views[j])]
    found = first_overlap(views)
    assert (found is None) == (not pairs)
    if found is not None:
        assert np.shares_memory(views[found[0]], views[found[1]])


# -- 5. arrays swapped into param_groups after construction -----------------------------------

SWAPS = {
    "int64": (lambda p: p.astype(np.int64), r"dtype int64 is not supported"),
    "complex": (lambda p: p.astype(np.complex64), r"dtype complex64 is not supported"),
    "list": (lambda p: p.reshape(-1).tolist(), r"must be numpy.ndarray, got list"),
    "read-only": (lambda p: _read_only(p.copy()), r"read-only"),
    "masked": (lambda p: np.ma.MaskedArray(p.copy()), r"MaskedArray"),
    "other shape": (lambda p: np.ones(p.shape + (2,), p.dtype), r"state entry .* must have the shape and dtype"),
    "other dtype": (lambda p: p.astype(np.float64), r"state entry .* must have the shape and dtype"),
}


def _read_only(a):
    a.setflags(write=False)
    return a


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("kind", ["SGD", "Adam", "CPropSGD", "CPropAdam", "CProp(Adam)"])
@pytest.mark.parametrize("swap", list(SWAPS))
def test_a_bad_array_swapped_into_param_groups_is_refused_at_the_next_step(kind, swap, backend):
    """An int64 array was truncated to zeros, a complex one accepted, a list gave AttributeError."""
    opt, params = stepped(kind, backend)
    before = snapshot(opt)
    make, message = SWAPS[swap]
    group = opt.param_groups[1]
    original = group["params"][0]
    group["params"][0] = make(original)
    with pytest.raises(ValueError, match=rf"parameter 2 \(group 1, index 0\).*{message}"):
        opt.step(make_grads(np.float32, np.random.default_rng(5)))
    group["params"][0] = original
    assert_identical(snapshot(opt), before, "after a refused step")


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("kind", KINDS)
def test_an_array_swapped_in_with_the_same_shape_and_dtype_continues_the_state(kind, backend):
    """Replacing a parameter by a fresh array of its shape and dtype is allowed: the state goes on
    (as after ``p[...] = new``), on both backends the same."""
    opt, params = stepped(kind, backend)
    twin, twin_params = stepped(kind, backend)
    replacement = params[0] + 1
    opt.param_groups[0]["params"][0] = replacement
    twin_params[0] += 1
    grads = make_grads(np.float32, np.random.default_rng(6))
    opt.step(grads)
    twin.step(grads)
    assert replacement.tobytes() == twin_params[0].tobytes()
    assert_identical(opt.state_dict(), twin.state_dict())


@pytest.mark.parametrize("backend", BACKENDS)
def test_parameters_appended_to_a_group_list_are_refused(backend):
    opt, params = stepped("Adam", backend)
    before = snapshot(opt)
    opt.param_groups[0]["params"].append(np.ones(5, np.float32))
    with pytest.raises(ValueError, match="parameters were added to or removed from.*add_param_group"):
        opt.step(
            [*make_grads(np.float32, np.random.default_rng(7))[:2], np.ones(5, np.float32), np.ones((), np.float32)]
        )
    opt.param_groups[0]["params"].pop()
    assert_identical(snapshot(opt), before)


@pytest.mark.parametrize("backend", BACKENDS)
def test_overlapping_arrays_swapped_in_are_refused(backend):
    buffer = np.zeros(6, np.float32)
    opt = Adam([buffer[:3], np.zeros(3, np.float32)], backend=backend)
    opt.step([np.ones(3, np.float32)] * 2)
    before = snapshot(opt)
    original = opt.param_groups[0]["params"][1]
    opt.param_groups[0]["params"][1] = buffer[2:5]
    with pytest.raises(ValueError, match=r"parameter 1 .*shares memory with parameter 0"):
        opt.step([np.ones(3, np.float32)] * 2)
    opt.param_groups[0]["params"][1] = original
    assert_identical(snapshot(opt), before)


# -- 6. a gradient that shares memory with a parameter or the state --------------------------


def _aliased_twins(kind: str, backend: str, dtype: type):
    """Two copies of the stepped optimizer ``kind``: the first is to get aliased gradients."""
    a, pa = stepped(kind, backend, dtype)
    b, pb = stepped(kind, backend, dtype)
    return (a, pa), (b, pb)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("dtype", KERNEL_DTYPES)
def test_a_gradient_that_is_the_parameter_steps_as_its_copy(kind, dtype, backend):
    """``opt.step([w])``: the step uses the gradient's values at the call, as ``step([w.copy()])``
    (the Numba wrapper used to compute its statistics from the already stepped parameter, 0.024
    off the NumPy backend). Bit for bit the same as the copy, on each backend."""
    (a, pa), (b, pb) = _aliased_twins(kind, backend, dtype)
    for _ in range(3):
        a.step(list(pa))
        b.step([p.copy() for p in pb])
    assert_identical(pa, pb, "parameters")
    assert_identical(a.state_dict(), b.state_dict(), "state")


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("kind", ["CPropAdam", "CProp(Adam)", "CProp(SGD)", "CPropSGD"])
@pytest.mark.parametrize("shift", [0, 1, 4099])
def test_large_shifted_aliases_step_as_copies(kind, shift, backend):
    """10^5 elements (the parallel, chunked and pipelined kernels; CProp(Adam) was 0.0083 off at
    this size): the gradient is the parameter's own buffer, shifted by ``shift`` elements."""
    n = 100_000
    rng = np.random.default_rng(8)
    start = rng.standard_normal(n + shift)
    buffer, twin = start.copy(), start[:n].copy()
    param = buffer[:n]
    factory = OPTIMIZERS[kind]
    a = factory([param, np.zeros(3), np.zeros(())], "raise", backend)
    b = factory([twin, np.zeros(3), np.zeros(())], "raise", backend)
    for step in range(3):
        g = buffer[shift : shift + n]
        values = g.copy()  # what the gradient holds when the step is called
        a.step([g, None, None])
        b.step([values, None, None])
        assert param.tobytes() == twin.tobytes(), f"step {step}"


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("kind", ["Adam", "CPropAdam-unshared", "CPropSGD", "CProp(Adam)"])
def test_a_gradient_that_is_a_state_array_steps_as_its_copy(kind, backend):
    """The state dicts hold views into the Numba backend's flat buffer, which its kernels write
    while they read the gradient: such a gradient is copied too."""
    (a, pa), (b, pb) = _aliased_twins(kind, backend, np.float32)
    for _ in range(2):
        grads_a = [next(v for v in s.values() if isinstance(v, np.ndarray)) for s in a.state]
        grads_b = [g.copy() for g in grads_a]
        a.step(grads_a)
        b.step(grads_b)
    assert_identical(pa, pb, "parameters")
    assert_identical(a.state_dict(), b.state_dict(), "state")


# -- 7. hyperparameters changed in place -------------------------------------------------------


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("kind", ["Adam", "CPropAdam", "CPropAdam-unshared"])
def test_betas_changed_in_place_are_seen_by_the_next_step(kind, backend):
    """An ndarray ``betas`` changed in place was ignored by the Numba backend's cache of the
    validated hyperparameters: ``betas[1] = 0.5`` must act as on the NumPy backend, and
    ``betas[1] = nan`` be refused."""
    opt, params = stepped(kind, backend, steps=0)
    twin, twin_params = stepped(kind, backend, steps=0)
    betas = np.array(opt.param_groups[0]["betas"])
    opt.param_groups[0]["betas"] = betas
    rng = np.random.default_rng(9)
    for change in (None, 0.5, 0.25):
        if change is not None:
            betas[1] = change
            twin.param_groups[0]["betas"] = (float(betas[0]), change)
        grads = make_grads(np.float32, rng)
        opt.step(grads)
        twin.step(grads)
        assert_identical(params, twin_params, f"betas[1] = {change}")
    before = snapshot(opt)
    betas[1] = math.nan
    with pytest.raises(ValueError, match=r"param group 0: invalid betas\[1\]=nan"):
        opt.step(make_grads(np.float32, rng))
    betas[1] = 0.25
    assert_identical(snapshot(opt), before, "after a refused step")


@pytest.mark.parametrize("backend", BACKENDS)
def test_the_tiny_path_sees_in_place_changes_too(backend):
    """One small float32 tensor: the Numba backend's fastest path (a plan reused step after
    step) must notice an in-place change, a read-only parameter and an aliased gradient."""
    w = np.array([0.5, -1.0], np.float32)
    twin = w.copy()
    betas = np.array([0.9, 0.999])
    opt = CPropAdam([w], betas=betas, cprop_beta=0.999, backend=backend)
    opt.param_groups[0]["betas"] = betas
    ref = CPropAdam([twin], backend=backend)
    g = np.array([1.0, 2.0], np.float32)
    for _ in range(3):
        opt.step([g])
        ref.step([g])
    betas[0] = 0.5
    ref.param_groups[0]["betas"] = (0.5, 0.999)
    opt.step([g])
    ref.step([g])
    assert w.tobytes() == twin.tobytes()
    opt.step([w])
    ref.step([twin.copy()])
    assert w.tobytes() == twin.tobytes()
    w.setflags(write=False)
    refused(opt, [g], r"parameter 0 \(group 0, index 0\).*read-only")
