"""The implementation matrix: every optimizer configuration the core tests run through.

``FACTORIES[name](params, cdf, backend)`` builds a fresh optimizer over ``params`` (a list of
arrays); non-CProp optimizers ignore ``cdf``. Parametrise tests over ``OPTIMIZER_NAMES`` x
``DTYPES`` x ``CDF_NAMES`` and take the ``backend`` fixture (``tests/conftest.py``: "numpy"
and "numba") so that each check runs on every cell.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np

from cprop_ref import SGD, Adam, AdamW, CProp, CPropAdam, CPropSGD

Factory = Callable[[list[np.ndarray], str, str], Any]

FACTORIES: dict[str, Factory] = {
    "sgd": lambda ps, cdf, backend: SGD(ps, backend=backend, lr=0.1, momentum=0.9, weight_decay=0.01),
    "adam": lambda ps, cdf, backend: Adam(ps, backend=backend, lr=0.01, weight_decay=0.01, amsgrad=True),
    "adamw": lambda ps, cdf, backend: AdamW(ps, backend=backend, lr=0.01),
    "cprop_sgd": lambda ps, cdf, backend: CPropSGD(
        ps, backend=backend, lr=0.1, momentum=0.9, nesterov=True, weight_decay=0.01, cprop_cdf=cdf
    ),
    "cprop_sgd_plain": lambda ps, cdf, backend: CPropSGD(
        ps, backend=backend, lr=0.1, cprop_cdf=cdf, cprop_c=3.0, cprop_beta=0.9
    ),
    "cprop_adam": lambda ps, cdf, backend: CPropAdam(ps, backend=backend, lr=0.01, cprop_cdf=cdf),
    "cprop_adam_shared_m": lambda ps, cdf, backend: CPropAdam(
        ps, backend=backend, lr=0.01, betas=(0.999, 0.999), cprop_cdf=cdf
    ),
    "cprop_adam_unshared": lambda ps, cdf, backend: CPropAdam(
        ps, backend=backend, lr=0.01, weight_decay=0.01, amsgrad=True, cprop_beta=0.99, cprop_cdf=cdf
    ),
    "cprop_wrapper_sgd": lambda ps, cdf, backend: CProp(
        SGD(ps, lr=0.1, momentum=0.5, backend=backend), cdf=cdf, backend=backend
    ),
    "cprop_wrapper_adamw": lambda ps, cdf, backend: CProp(
        AdamW(ps, lr=0.01, backend=backend), beta=0.99, c=2.0, cdf=cdf, backend=backend
    ),
}
OPTIMIZER_NAMES = sorted(FACTORIES)
CPROP_NAMES = [name for name in OPTIMIZER_NAMES if name.startswith("cprop")]
DTYPES = [np.float16, np.float32, np.float64]
SHAPES = [(), (0,), (3,), (2, 3)]


def make_params(dtype: Any, seed: int = 0) -> list[np.ndarray]:
    """One parameter of each shape in ``SHAPES`` (0-d and empty included)."""
    rng = np.random.default_rng(seed)
    return [rng.standard_normal(shape).astype(dtype) for shape in SHAPES]


def make_grads(params: list[np.ndarray], rng: np.random.Generator) -> list[np.ndarray]:
    """Gradients with a per-element drift, so the scales vary between 0 and 1."""
    return [(0.3 + rng.standard_normal(p.shape)).astype(p.dtype) for p in params]


def snapshot(optimizer: Any) -> tuple[list[np.ndarray], dict[str, Any]]:
    """Copies of the parameters and the full state dict, for exact before/after comparisons."""
    return [p.copy() for p in optimizer.params], optimizer.state_dict()


def assert_tree_equal(a: Any, b: Any, path: str = "") -> None:
    """Exact equality of two state-dict trees (arrays bit for bit, dtypes included)."""
    if isinstance(a, np.ndarray) or isinstance(b, np.ndarray):
        assert isinstance(a, np.ndarray) and isinstance(b, np.ndarray), path
        assert a.dtype == b.dtype and a.shape == b.shape, path
        np.testing.assert_array_equal(a, b, err_msg=path)
    elif isinstance(a, dict):
        assert isinstance(b, dict) and set(a) == set(b), (path, sorted(a), sorted(b) if isinstance(b, dict) else b)
        for key in a:
            assert_tree_equal(a[key], b[key], f"{path}/{key}")
    elif isinstance(a, (list, tuple)):
        assert isinstance(b, (list, tuple)) and len(a) == len(b), path
        for i, (x, y) in enumerate(zip(a, b)):
            assert_tree_equal(x, y, f"{path}[{i}]")
    else:
        assert a == b, (path, a, b)


def assert_unchanged(optimizer: Any, before: tuple[list[np.ndarray], dict[str, Any]]) -> None:
    params, state = before
    for p, q in zip(optimizer.params, params):
        np.testing.assert_array_equal(p, q)
    assert_tree_equal(optimizer.state_dict(), state)
