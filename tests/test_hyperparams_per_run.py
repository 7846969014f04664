"""Hyperparameters per run: an optimizer whose numeric
hyperparameters are arrays of shape ``(R, 1)`` over a parameter of shape ``(R, dim)`` moves
each row exactly as the same optimizer built with that row's scalars, on both backends, in
float16, float32 and float64, through a checkpoint; invalid elements are refused by index.

The property is exact (bit for bit), not a tolerance: each class of rows is stepped by the
scalar rule itself (``cprop_ref.optim.rows``), and every rule is element-wise.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from cprop_ref.optim import SGD, Adam, AdamW, CProp, CPropAdam, CPropSGD
from tests.hypothesis_budget import examples

#: Valid values each per-run hyperparameter draws its rows from: the edges (0, a dampening
#: of 1, a beta of 0 that switches the EMA's memory off) and repeats (rows sharing a class).
VALUES: dict[str, list[float]] = {
    "lr": [0.0, 1e-3, 0.1, 0.5],
    "momentum": [0.0, 0.5, 0.9],
    "dampening": [0.0, 0.1, 1.0],
    "weight_decay": [0.0, 0.01, 0.3],
    "eps": [0.0, 1e-8, 1e-3],
    "beta1": [0.0, 0.5, 0.9, 0.999],
    "beta2": [0.0, 0.9, 0.999],
    "cprop_beta": [0.0, 0.5, 0.9, 0.999],
    "cprop_c": [0.0, 0.5, 1.0, 3.0],
    "cprop_eps": [0.0, 1e-8, 1e-3],
}
_SGD = ["lr", "momentum", "dampening", "weight_decay"]
_ADAM = ["lr", "beta1", "beta2", "eps", "weight_decay"]
_CPROP = ["cprop_beta", "cprop_c", "cprop_eps"]
OPTIMIZERS: dict[str, tuple[type, list[str]]] = {
    "sgd": (SGD, _SGD),
    "adam": (Adam, _ADAM),
    "adamw": (AdamW, _ADAM),
    "cprop-sgd": (CPropSGD, _SGD + _CPROP),
    "cprop-adam": (CPropAdam, _ADAM + _CPROP),
}
STEPS = 3


def _kwargs(values: dict[str, Any]) -> dict[str, Any]:
    """Constructor keywords from drawn values: ``beta1``/``beta2`` become the ``betas`` pair."""
    kw = dict(values)
    if "beta1" in kw or "beta2" in kw:
        kw["betas"] = (kw.pop("beta1", 0.9), kw.pop("beta2", 0.999))
    return kw


def _row(values: dict[str, Any], r: int) -> dict[str, Any]:
    return {k: (float(v[r, 0]) if isinstance(v, np.ndarray) else v) for k, v in values.items()}


@st.composite
def per_run_cases(draw: st.DrawFn) -> tuple[str, int, int, dict[str, Any], int]:
    name = draw(st.sampled_from(sorted(OPTIMIZERS)))
    runs = draw(st.integers(1, 4))
    dim = draw(st.integers(1, 3))
    names = OPTIMIZERS[name][1]
    chosen = draw(st.lists(st.sampled_from(names), min_size=1, max_size=3, unique=True))
    values: dict[str, Any] = {"lr": 0.1}
    for hp in chosen:
        rows = draw(st.lists(st.sampled_from(VALUES[hp]), min_size=runs, max_size=runs))
        values[hp] = np.array(rows, dtype=np.float64).reshape(runs, 1)
    return name, runs, dim, values, draw(st.integers(0, 2**32 - 1))


@pytest.mark.parametrize("dtype", [np.float16, np.float32, np.float64])
@pytest.mark.parametrize("backend", ["numpy", "numba"])
@settings(max_examples=examples(12))
@given(case=per_run_cases())
def test_each_row_steps_as_the_optimizer_with_its_scalars(backend: str, dtype: type, case: tuple) -> None:
    """Row r of the per-run optimizer equals, bit for bit, the optimizer built with row r's
    scalars (same backend, same dtype) after each of several steps, and so does its CProp scale."""
    name, runs, dim, values, seed = case
    cls = OPTIMIZERS[name][0]
    rng = np.random.default_rng(seed)
    x0 = rng.normal(size=(runs, dim)).astype(dtype)
    grads = [rng.normal(size=(runs, dim)).astype(dtype) for _ in range(STEPS)]
    x = x0.copy()
    together = cls([x], **_kwargs(values), backend=backend)
    singles = [(x0[r : r + 1].copy(), r) for r in range(runs)]
    alone = [(p, cls([p], **_kwargs(_row(values, r)), backend=backend)) for p, r in singles]
    for g in grads:
        together.step([g])
        for r, (_, opt) in enumerate(alone):
            opt.step([g[r : r + 1]])
        for r, (p, opt) in enumerate(alone):
            assert np.array_equal(x[r : r + 1], p, equal_nan=True), (name, r, x[r], p)
            if hasattr(opt, "scales"):
                assert np.array_equal(together.scales()[0][r : r + 1], opt.scales()[0], equal_nan=True)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("backend", ["numpy", "numba"])
@settings(max_examples=examples(6))
@given(
    lrs=st.lists(st.sampled_from(VALUES["lr"]), min_size=3, max_size=3),
    betas=st.lists(st.sampled_from(VALUES["cprop_beta"]), min_size=3, max_size=3),
    cs=st.lists(st.sampled_from(VALUES["cprop_c"]), min_size=3, max_size=3),
    seed=st.integers(0, 2**32 - 1),
)
def test_wrapper_rows_step_as_the_wrapper_with_their_scalars(
    backend: str, dtype: type, lrs: list, betas: list, cs: list, seed: int
) -> None:
    """The CProp wrapper with per-run ``beta`` and ``c`` around SGD with a per-run ``lr``: each row
    equals the wrapper built with its scalars on the same backend."""
    rng = np.random.default_rng(seed)
    x0 = rng.normal(size=(3, 2)).astype(dtype)
    grads = [rng.normal(size=(3, 2)).astype(dtype) for _ in range(STEPS)]
    column = lambda v: np.array(v, dtype=np.float64).reshape(3, 1)  # noqa: E731
    x = x0.copy()
    together = CProp(SGD([x], lr=column(lrs), backend=backend), beta=column(betas), c=column(cs), backend=backend)
    alone = []
    for r in range(3):
        p = x0[r : r + 1].copy()
        alone.append((p, CProp(SGD([p], lr=lrs[r], backend=backend), beta=betas[r], c=cs[r], backend=backend)))
    for g in grads:
        together.step([g])
        for r, (p, opt) in enumerate(alone):
            opt.step([g[r : r + 1]])
            assert np.array_equal(x[r : r + 1], p, equal_nan=True)
            assert np.array_equal(together.scales()[0][r : r + 1], opt.scales()[0])


@pytest.mark.parametrize(
    ("build", "message"),
    [
        (lambda x: SGD([x], lr=np.array([[0.1], [0.2], [-1.0]])), r"invalid lr\[2, 0\]=-1.0: must be >= 0"),
        (lambda x: SGD([x], lr=0.1, momentum=np.array([[0.1], [np.nan], [0.0]])), r"momentum\[1, 0\]=nan"),
        (lambda x: SGD([x], lr=0.1, dampening=np.array([[0.1], [1.5], [0.0]])), r"dampening\[1, 0\]=1.5"),
        (lambda x: Adam([x], betas=(0.9, np.array([[0.9], [0.99], [1.0]]))), r"betas\[1\]\[2, 0\]=1.0"),
        (lambda x: Adam([x], eps=np.array([[1e-8], [-1e-8], [0.0]])), r"eps\[1, 0\]=-1e-08"),
        (lambda x: CPropSGD([x], lr=0.1, cprop_beta=np.array([[1.0], [0.9], [0.0]])), r"cprop_beta\[0, 0\]=1.0"),
        (lambda x: CPropAdam([x], cprop_c=np.array([[1.0], [-2.0], [0.0]])), r"cprop_c\[1, 0\]=-2.0"),
        (lambda x: CPropAdam([x], cprop_eps=np.array([[np.inf], [0.0], [0.0]])), r"cprop_eps\[0, 0\]=inf"),
        (lambda x: SGD([x], lr=np.array([0.1, 0.2, 0.3])), r"lr has shape \(3,\), which does not broadcast"),
        (lambda x: SGD([x], lr=np.array([[0.1], [0.2]])), r"lr has shape \(2, 1\)"),
        (lambda x: SGD([x], lr=np.array([["a"], ["b"], ["c"]])), r"lr: an array of dtype <U1"),
        (lambda x: SGD([x], lr=np.array([[True], [False], [True]])), r"lr: an array of dtype bool"),
        (lambda x: SGD([x], lr=0.1, momentum=np.array([[0.9], [0.0], [0.9]]), nesterov=True), r"nesterov=True"),
        (
            lambda x: Adam([x.astype(np.float32)], lr=np.array([[0.1], [1e39], [0.1]])),
            r"invalid lr\[1, 0\]=1e\+39: not a finite float32",
        ),
        (lambda x: CProp(SGD([x], lr=0.1), c=np.array([[1.0], [2.0], [-1.0]])), r"CProp: invalid c\[2, 0\]=-1.0"),
        (lambda x: CProp(SGD([x], lr=0.1), beta=np.array([[0.9], [0.9]])), r"beta has shape \(2, 1\)"),
    ],
)
def test_invalid_elements_are_named_by_index(build: Any, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        build(np.zeros((3, 2)))


@pytest.mark.parametrize("backend", ["numpy", "numba"])
def test_a_bad_array_set_between_steps_changes_nothing(backend: str) -> None:
    """A per-run array swapped into a group is checked at the next step, which then raises
    naming the element and leaves parameters and state as they were."""
    x = np.ones((3, 2))
    opt = CPropAdam([x], lr=np.array([[0.1], [0.2], [0.3]]), backend=backend)
    opt.step([np.full((3, 2), 0.5)])
    before, state = x.copy(), opt.state_dict()["state"]
    opt.param_groups[0]["lr"] = np.array([[0.1], [-0.2], [0.3]])
    with pytest.raises(ValueError, match=r"lr\[1, 0\]=-0.2"):
        opt.step([np.full((3, 2), 0.5)])
    assert np.array_equal(x, before)
    for saved, now in zip(state, opt.state_dict()["state"]):
        assert saved.keys() == now.keys() and all(np.array_equal(saved[k], now[k]) for k in saved)


@pytest.mark.parametrize("backend", ["numpy", "numba"])
def test_per_run_hyperparameters_survive_a_checkpoint(backend: str, tmp_path: Any) -> None:
    """Save after two steps, load into an optimizer built with scalars: it gets the arrays back
    and continues exactly as the uninterrupted one."""
    rng = np.random.default_rng(7)
    grads = [rng.normal(size=(4, 3)) for _ in range(4)]
    values = dict(
        lr=np.array([[0.1], [0.01], [0.1], [0.3]]),
        betas=(np.array([[0.9], [0.999], [0.5], [0.0]]), 0.999),
        cprop_c=np.array([[1.0], [2.0], [0.5], [1.0]]),
    )
    x = np.zeros((4, 3))
    opt = CPropAdam([x], **values, backend=backend)
    wrapped = CProp(SGD([y := np.zeros((4, 3))], lr=values["lr"], backend=backend), c=values["cprop_c"])
    for g in grads[:2]:
        opt.step([g])
        wrapped.step([g])
    opt.save(tmp_path / "adam.npz")
    wrapped.save(tmp_path / "wrapped.npz")
    x2, y2 = x.copy(), y.copy()
    resumed = CPropAdam([x2], backend=backend)
    resumed.load(tmp_path / "adam.npz")
    resumed_wrapped = CProp(SGD([y2], lr=0.5, backend=backend))
    resumed_wrapped.load(tmp_path / "wrapped.npz")
    assert np.array_equal(resumed.param_groups[0]["lr"], values["lr"])
    assert np.array_equal(resumed.param_groups[0]["betas"][0], values["betas"][0])
    assert np.array_equal(resumed_wrapped.c, values["cprop_c"])
    for g in grads[2:]:
        opt.step([g])
        resumed.step([g])
        wrapped.step([g])
        resumed_wrapped.step([g])
    assert np.array_equal(x, x2) and np.array_equal(y, y2)
