"""Shared pieces of the ``test_reliability_*`` files: every optimizer of the project built
over the same small parameter groups, snapshots of an optimizer, and exact comparison.

Each optimizer kind is a ``reliability`` configuration of the optimizer catalogue
(``tests/optimizer_catalogue.py``): a name and a factory ``(params, nonfinite, backend) ->
optimizer``. The parameters are two groups (shapes ``(3,)`` and ``(2, 2)`` in group 0, a
0-d array in group 1 with its own learning rate), so that names, indices and group handling
are all exercised.
"""

from __future__ import annotations

from collections.abc import Callable
from functools import partial
from typing import Any

import numpy as np

from tests import optimizer_catalogue
from tests.optimizer_catalogue import OptimizerInfo, OptimizerInput, entries

PARAM_SHAPES: tuple[tuple[int, ...], ...] = ((3,), (2, 2), ())
#: Shapes per group, in ``params`` order.
GROUP_SIZES: tuple[int, ...] = (2, 1)
DTYPES: tuple[type, ...] = optimizer_catalogue.DTYPES
BACKENDS: tuple[str, ...] = optimizer_catalogue.BACKENDS


def make_groups(params: list[np.ndarray], second_lr: float) -> list[dict[str, Any]]:
    return [{"params": params[:2]}, {"params": params[2:], "lr": second_lr}]


def _factory(
    info: OptimizerInfo, configuration: OptimizerInput, params: list[np.ndarray], nonfinite: str, backend: str
):
    assert configuration.second_group_lr is not None, configuration.id
    groups = make_groups(params, configuration.second_group_lr)
    return info.make_input(configuration, groups, backend=backend, nonfinite=nonfinite)


OPTIMIZERS: dict[str, Callable[[list[np.ndarray], str, str], Any]] = {
    inp.id: partial(_factory, info, inp) for info, inp in entries("reliability")
}
#: The optimizer behind each kind.
INFOS: dict[str, OptimizerInfo] = {inp.id: info for info, inp in entries("reliability")}


def make_params(dtype: type, seed: int = 0) -> list[np.ndarray]:
    rng = np.random.default_rng(seed)
    return [np.asarray(rng.standard_normal(shape)).astype(dtype) for shape in PARAM_SHAPES]


def make_grads(dtype: type, rng: np.random.Generator, scale: float = 1.0) -> list[np.ndarray]:
    """Gradients with a common drift (so the CProp scales are neither all 0 nor all 1)."""
    return [np.asarray(scale * (0.3 + rng.standard_normal(shape))).astype(dtype) for shape in PARAM_SHAPES]


def build(kind: str, dtype: type, *, nonfinite: str = "raise", backend: str = "numpy", seed: int = 0):
    """The optimizer ``kind`` over fresh parameters; returns ``(optimizer, params)``."""
    params = make_params(dtype, seed)
    return OPTIMIZERS[kind](params, nonfinite, backend), params


def snapshot(optimizer: Any) -> tuple[list[np.ndarray], dict[str, Any]]:
    """Copies of the parameters and the optimizer's full state dict."""
    params = [np.array(p, copy=True) for group in optimizer.param_groups for p in group["params"]]
    return params, optimizer.state_dict()


def assert_identical(a: Any, b: Any, where: str = "") -> None:
    """Exact equality of two trees of dicts, lists, scalars and arrays: arrays must have the
    same dtype, shape and bytes (so ``-0.0 != 0.0`` and NaN payloads count)."""
    if isinstance(a, np.ndarray) or isinstance(b, np.ndarray):
        assert isinstance(a, np.ndarray) and isinstance(b, np.ndarray), f"{where}: {type(a)} vs {type(b)}"
        assert a.dtype == b.dtype and a.shape == b.shape, f"{where}: {a.dtype}{a.shape} vs {b.dtype}{b.shape}"
        assert a.tobytes() == b.tobytes(), f"{where}: arrays differ:\n{a!r}\n{b!r}"
    elif isinstance(a, dict):
        assert isinstance(b, dict) and set(a) == set(b), (
            f"{where}: keys {sorted(a)} vs {sorted(b) if isinstance(b, dict) else b}"
        )
        for key in a:
            assert_identical(a[key], b[key], f"{where}.{key}")
    elif isinstance(a, (list, tuple)):
        assert isinstance(b, (list, tuple)) and len(a) == len(b), f"{where}: {a!r} vs {b!r}"
        for i, (x, y) in enumerate(zip(a, b)):
            assert_identical(x, y, f"{where}[{i}]")
    else:
        assert type(a) is type(b) and a == b, f"{where}: {a!r} vs {b!r}"
