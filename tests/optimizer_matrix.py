"""The implementation matrix: every optimizer configuration the core tests run through.

The configurations are the ``core`` inputs of the optimizer catalogue
(``tests/optimizer_catalogue.py``). ``FACTORIES[name](params, cdf, backend)`` builds a fresh
optimizer over ``params`` (a list of arrays, or of parameter groups); non-CProp optimizers
ignore ``cdf``. Parametrise tests over ``OPTIMIZER_NAMES`` x ``DTYPES`` x ``CDF_NAMES`` and
take the ``backend`` fixture (``tests/conftest.py``: "numpy" and "numba") so that each
check runs on every cell.
"""

from __future__ import annotations

from collections.abc import Callable
from functools import partial
from typing import Any

import numpy as np

from tests.optimizer_catalogue import DTYPES as CATALOGUE_DTYPES
from tests.optimizer_catalogue import OptimizerInfo, OptimizerInput, entries

Factory = Callable[[list[np.ndarray], str, str], Any]


def _factory(info: OptimizerInfo, configuration: OptimizerInput, params: Any, cdf: str, backend: str) -> Any:
    return info.make_input(configuration, params, cdf, backend=backend)


FACTORIES: dict[str, Factory] = {inp.id: partial(_factory, info, inp) for info, inp in entries("core")}
#: The optimizer behind each name of the matrix.
INFOS: dict[str, OptimizerInfo] = {inp.id: info for info, inp in entries("core")}
OPTIMIZER_NAMES = sorted(FACTORIES)
CPROP_NAMES = [name for name in OPTIMIZER_NAMES if INFOS[name].cprop]
DTYPES = list(CATALOGUE_DTYPES)
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
