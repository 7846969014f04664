"""Checks that every cell of the implementation matrix (optimizer x dtype x cdf) must pass."""

from __future__ import annotations

import numpy as np
import pytest

from cprop_ref import SGD, Adam, AdamW, CPropAdam
from cprop_ref.cdf import CDF_NAMES
from cprop_ref.gradients import compute_dtype
from tests.optimizer_catalogue import BACKENDS, sweep_marks
from tests.optimizer_matrix import (
    CPROP_NAMES,
    DTYPES,
    FACTORIES,
    OPTIMIZER_NAMES,
    assert_tree_equal,
    make_grads,
    make_params,
)


def _matrix_cells() -> list:
    """Every backend x optimizer x dtype x CDF; the Numba kernels in a CDF other than the
    default one under ``-m slow`` (``optimizer_catalogue.sweep_marks``)."""
    return [
        pytest.param(backend, name, dtype, cdf, marks=sweep_marks(backend, dtype, cdf),
                     id=f"{backend}-{name}-{np.dtype(dtype).name}-{cdf}")
        for backend in BACKENDS
        for name in OPTIMIZER_NAMES
        for dtype in DTYPES
        for cdf in CDF_NAMES
    ]  # fmt: skip


@pytest.mark.parametrize(("backend", "name", "dtype", "cdf"), _matrix_cells())
def test_steps_keep_dtype_stay_finite_and_keep_state_in_compute_dtype(name, dtype, cdf, backend):
    params = make_params(dtype)
    ids = [id(p) for p in params]
    opt = FACTORIES[name](params, cdf, backend)
    rng = np.random.default_rng(1)
    for _ in range(25):
        opt.step(make_grads(params, rng))
    assert [id(p) for p in opt.params] == ids, "parameters must be updated in place"
    for p in params:
        assert p.dtype == dtype
        assert np.all(np.isfinite(p))
    state_dict = opt.state_dict()
    entries = list(zip(state_dict["state"], params))
    if "base" in state_dict:  # the wrapper: CProp's statistics, then the base optimizer's state
        entries += list(zip(state_dict["base"]["state"], params))
    for entry, p in entries:
        for value in entry.values():
            if isinstance(value, np.ndarray):
                assert value.dtype == compute_dtype(np.dtype(dtype)) and value.shape == p.shape
    if name in CPROP_NAMES:
        for s, p in zip(opt.scales(), params):
            assert s.shape == p.shape and s.dtype == compute_dtype(np.dtype(dtype))
            assert np.all((s >= 0) & (s <= 1))


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("name", OPTIMIZER_NAMES)
def test_none_gradient_skips_parameter_and_its_state(name, dtype, backend):
    params = make_params(dtype)
    opt = FACTORIES[name](params, "bft", backend)
    rng = np.random.default_rng(2)
    opt.step(make_grads(params, rng))
    frozen = params[3].copy()
    before = opt.state_dict()["state"][3]
    for _ in range(3):
        grads = make_grads(params, rng)
        grads[3] = None
        opt.step(grads)
    np.testing.assert_array_equal(params[3], frozen)
    assert_tree_equal(opt.state_dict()["state"][3], before)


@pytest.mark.parametrize("name", CPROP_NAMES)
def test_scales_are_none_before_the_first_gradient(name, backend):
    params = make_params(np.float64)
    opt = FACTORIES[name](params, "bft", backend)
    assert opt.scales() == [None] * len(params)
    grads = make_grads(params, np.random.default_rng(0))
    grads[0] = None
    opt.step(grads)
    scales = opt.scales()
    assert scales[0] is None and all(s is not None for s in scales[1:])


@pytest.mark.parametrize("cdf", CDF_NAMES)
@pytest.mark.parametrize("name", CPROP_NAMES)
def test_float16_zero_gradient_gives_no_nan(name, cdf, backend):
    """The authors' implementation computes in float16, where eps = 1e-8 underflows to 0 and a zero
    gradient gives 0/0; here float16 statistics are kept in float32 (eps = 1e-8 representable)."""
    params = [np.ones(4, np.float16), np.zeros((), np.float16)]
    opt = FACTORIES[name](params, cdf, backend)
    for _ in range(3):
        opt.step([np.zeros(4, np.float16), np.zeros((), np.float16)])
    for s in opt.scales():
        np.testing.assert_array_equal(s, 0.0)
    np.testing.assert_array_equal(params[0], np.ones(4, np.float16))


@pytest.mark.parametrize("cdf", [pytest.param(cdf, marks=sweep_marks("numba", np.float64, cdf)) for cdf in CDF_NAMES])
@pytest.mark.parametrize("betas", [(0.9, 0.999), (0.999, 0.999), (0.999, 0.9)])
def test_cprop_adam_shared_moments_equal_unshared_bit_for_bit(betas, cdf):
    """Sharing Adam's moment with CProp's is exact: a run that shares, and a run whose state was
    made unshared after the first step (its own copies of m and v), give identical numbers
    (on the default backend, the Numba kernels, float64)."""
    rng = np.random.default_rng(3)
    x0 = rng.standard_normal(16)
    shared = CPropAdam([x0.copy()], lr=0.01, betas=betas, cprop_cdf=cdf)
    private = CPropAdam([x0.copy()], lr=0.01, betas=betas, cprop_cdf=cdf)
    share_m, share_v = CPropAdam.sharing_allowed(shared.param_groups[0])
    assert (share_m, share_v) == (betas[0] == 0.999, betas[1] == 0.999)
    for step in range(40):
        g = 0.2 + rng.standard_normal(16)
        shared.step([g.copy()])
        private.step([g.copy()])
        if step == 0:
            state = private.state[0]
            state.setdefault("cprop_m", state["exp_avg"].copy())
            state.setdefault("cprop_v", state["exp_avg_sq"].copy())
        np.testing.assert_array_equal(shared.params[0], private.params[0])
        np.testing.assert_array_equal(shared.scales()[0], private.scales()[0])
    assert ("cprop_m" in shared.state[0]) == (not share_m)
    assert ("cprop_v" in shared.state[0]) == (not share_v)


def test_cprop_adam_stops_sharing_exactly_when_weight_decay_is_turned_on():
    rng = np.random.default_rng(4)
    x0 = rng.standard_normal(8)
    shared = CPropAdam([x0.copy()], lr=0.01, betas=(0.999, 0.999))
    private = CPropAdam([x0.copy()], lr=0.01, betas=(0.999, 0.999))
    for step in range(30):
        if step == 10:
            shared.param_groups[0]["weight_decay"] = 0.1
            private.param_groups[0]["weight_decay"] = 0.1
        g = rng.standard_normal(8)
        shared.step([g.copy()])
        private.step([g.copy()])
        if step == 0:
            private.state[0]["cprop_m"] = private.state[0]["exp_avg"].copy()
            private.state[0]["cprop_v"] = private.state[0]["exp_avg_sq"].copy()
        np.testing.assert_array_equal(shared.params[0], private.params[0])
    assert "cprop_m" in shared.state[0] and "cprop_v" in shared.state[0]


def test_cprop_statistics_use_the_raw_gradient_not_weight_decay():
    """CPropAdam's scale with weight decay equals the scale of a run without it on the same
    gradients (the authors' CPropAdam would fold wd * param into the statistics)."""
    rng = np.random.default_rng(5)
    with_wd = CPropAdam([np.full(6, 3.0)], lr=0.1, weight_decay=0.5, cprop_cdf="normal")
    without = CPropAdam([np.full(6, 3.0)], lr=0.1, cprop_cdf="normal")
    for _ in range(10):
        g = rng.standard_normal(6)
        with_wd.step([g.copy()])
        without.step([g.copy()])
    np.testing.assert_array_equal(with_wd.scales()[0], without.scales()[0])


def test_parameter_groups_have_their_own_hyperparameters():
    a, b = np.ones(3), np.ones(3)
    opt = CPropAdam([{"params": [a]}, {"params": [b], "lr": 0.0, "cprop_c": 0.0}], lr=0.1)
    assert opt.param_groups[1]["lr"] == 0.0 and opt.param_groups[0]["cprop_c"] == 1.0
    opt.step([np.ones(3), np.ones(3)])
    assert np.all(a < 1.0)
    np.testing.assert_array_equal(b, np.ones(3))
    np.testing.assert_array_equal(opt.scales()[1], 0.0)


def test_add_param_group_extends_the_optimizer():
    a, b = np.ones(2), np.ones(3)
    opt = SGD([a], lr=0.5)
    opt.add_param_group({"params": [b], "lr": 0.1})
    opt.step([np.ones(2), np.ones(3)])
    np.testing.assert_allclose(a, 0.5)
    np.testing.assert_allclose(b, 0.9)


# -- torch.optim semantics ---------------------------------------------------------------


def _torch_run(torch_cls, kwargs, x0, grads):
    torch = pytest.importorskip("torch")
    x = torch.tensor(x0, dtype=torch.float64, requires_grad=True)
    opt = torch_cls([x], **kwargs, foreach=False)
    out = []
    for g in grads:
        x.grad = torch.tensor(g, dtype=torch.float64)
        opt.step()
        out.append(x.detach().numpy().copy())
    return out


@pytest.mark.parametrize(
    "ours, theirs, kwargs",
    [
        (SGD, "SGD", dict(lr=0.1)),
        (SGD, "SGD", dict(lr=0.1, momentum=0.9, dampening=0.2, weight_decay=0.05)),
        (SGD, "SGD", dict(lr=0.1, momentum=0.9, nesterov=True, weight_decay=0.05)),
        (Adam, "Adam", dict(lr=0.01)),
        (Adam, "Adam", dict(lr=0.01, betas=(0.5, 0.9), eps=1e-6, weight_decay=0.1, amsgrad=True)),
        (AdamW, "AdamW", dict(lr=0.01)),
        (AdamW, "AdamW", dict(lr=0.01, weight_decay=0.3, amsgrad=True)),
    ],
)
def test_base_optimizers_follow_torch_optim(ours, theirs, kwargs):
    """Same formulas as torch.optim (float64), rounding aside: torch's Adam updates the first
    moment with lerp and may fuse multiply-adds, so each step's update may differ by ~10 u
    relative (u = 2^-53), plus one rounding of the parameter. The bound accumulates per step:
    |ours - torch| <= 16 u * sum_t (|p_t| + |update_t|)."""
    torch = pytest.importorskip("torch")
    rng = np.random.default_rng(6)
    x0 = rng.standard_normal(32)
    grads = [0.1 + rng.standard_normal(32) for _ in range(30)]
    reference = _torch_run(getattr(torch.optim, theirs), kwargs, x0, grads)
    x = x0.copy()
    opt = ours([x], **kwargs)
    bound = np.zeros(32)
    for g, expected in zip(grads, reference):
        before = x.copy()
        opt.step([g])
        bound += 16 * 2.0**-53 * (np.abs(before) + np.abs(x - before))
        assert np.all(np.abs(x - expected) <= bound)
