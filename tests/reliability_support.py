"""Shared pieces of the ``test_reliability_*`` files: every optimizer of the project built
over the same small parameter groups, snapshots of an optimizer, and exact comparison.

Each optimizer kind is a name and a factory ``(params, nonfinite, backend) -> optimizer``.
The parameters are two groups (shapes ``(3,)`` and ``(2, 2)`` in group 0, a 0-d array
in group 1 with its own learning rate), so that names, indices and group handling are
all exercised.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable
from typing import Any

import numpy as np

from cprop_ref import SGD, Adam, AdamW, CProp, CPropAdam, CPropSGD

PARAM_SHAPES: tuple[tuple[int, ...], ...] = ((3,), (2, 2), ())
#: Shapes per group, in ``params`` order.
GROUP_SIZES: tuple[int, ...] = (2, 1)
DTYPES: tuple[type, ...] = (np.float16, np.float32, np.float64)


def available_backends() -> tuple[str, ...]:
    """``("numpy",)``, plus ``"numba"`` once the optimizers take a ``backend`` argument."""
    if "backend" in inspect.signature(SGD.__init__).parameters:
        return ("numpy", "numba")
    return ("numpy",)


BACKENDS = available_backends()


def backend_kwargs(backend: str) -> dict[str, Any]:
    """Always explicit once the argument exists (its default need not be NumPy)."""
    return {"backend": backend} if len(BACKENDS) > 1 else {}


def wrapper_backend_kwargs(backend: str) -> dict[str, Any]:
    if "backend" in inspect.signature(CProp.__init__).parameters:
        return {"backend": backend}
    return {}


def make_groups(params: list[np.ndarray], second_lr: float) -> list[dict[str, Any]]:
    return [{"params": params[:2]}, {"params": params[2:], "lr": second_lr}]


def _sgd(params, nonfinite, backend):
    return SGD(
        make_groups(params, 0.05),
        lr=0.1,
        momentum=0.9,
        weight_decay=0.01,
        **backend_kwargs(backend),
        nonfinite=nonfinite,
    )


def _sgd_nesterov(params, nonfinite, backend):
    return SGD(
        make_groups(params, 0.05), lr=0.1, momentum=0.5, nesterov=True, **backend_kwargs(backend), nonfinite=nonfinite
    )


def _adam(params, nonfinite, backend):
    return Adam(make_groups(params, 0.002), lr=0.01, weight_decay=0.01, **backend_kwargs(backend), nonfinite=nonfinite)


def _adamw_amsgrad(params, nonfinite, backend):
    return AdamW(make_groups(params, 0.002), lr=0.01, amsgrad=True, **backend_kwargs(backend), nonfinite=nonfinite)


def _cprop_sgd(params, nonfinite, backend):
    return CPropSGD(
        make_groups(params, 0.05), lr=0.1, momentum=0.9, cprop_beta=0.9, **backend_kwargs(backend), nonfinite=nonfinite
    )


def _cprop_adam(params, nonfinite, backend):
    # beta2 == cprop_beta: the second moment is shared (the default configuration).
    return CPropAdam(
        make_groups(params, 0.002), lr=0.01, cprop_cdf="normal", **backend_kwargs(backend), nonfinite=nonfinite
    )


def _cprop_adam_unshared(params, nonfinite, backend):
    return CPropAdam(
        make_groups(params, 0.002), lr=0.01, cprop_beta=0.99, weight_decay=0.01, amsgrad=True,
        **backend_kwargs(backend), nonfinite=nonfinite,
    )  # fmt: skip


def _wrapped_sgd(params, nonfinite, backend):
    base = SGD(make_groups(params, 0.05), lr=0.1, momentum=0.9, **backend_kwargs(backend), nonfinite=nonfinite)
    return CProp(base, beta=0.9, cdf="logistic", **wrapper_backend_kwargs(backend), nonfinite=nonfinite)


def _wrapped_adam(params, nonfinite, backend):
    base = Adam(make_groups(params, 0.002), lr=0.01, **backend_kwargs(backend), nonfinite=nonfinite)
    return CProp(base, beta=0.99, c=3.0, **wrapper_backend_kwargs(backend), nonfinite=nonfinite)


OPTIMIZERS: dict[str, Callable[[list[np.ndarray], str, str], Any]] = {
    "SGD": _sgd,
    "SGD-nesterov": _sgd_nesterov,
    "Adam": _adam,
    "AdamW-amsgrad": _adamw_amsgrad,
    "CPropSGD": _cprop_sgd,
    "CPropAdam": _cprop_adam,
    "CPropAdam-unshared": _cprop_adam_unshared,
    "CProp(SGD)": _wrapped_sgd,
    "CProp(Adam)": _wrapped_adam,
}


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
