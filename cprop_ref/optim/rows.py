"""Hyperparameters per run: a group whose hyperparameters are arrays (one value per run of a
grid, broadcast against the parameter) is stepped as the scalar optimizer of each run.

The elements of a parameter are split into classes that share every hyperparameter value
(for ``lr`` of shape ``(R, 1)`` and a parameter of shape ``(R, dim)``: the rows with the same
``lr``), and the scalar update rule runs on each class with that class's values as Python
floats. Every rule is element-wise, so each element gets exactly the bits that an optimizer
built with its scalars gives it (``docs/optimizers.md``, "Hyperparameters per run").
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any

import numpy as np

from ..hyperparams import run_arrays

ScalarRule = Callable[[np.ndarray, np.ndarray, dict[str, Any], dict[str, Any]], tuple[np.ndarray, dict[str, Any]]]


def has_run_arrays(group: dict[str, Any], names: Iterable[str]) -> bool:
    """Whether any hyperparameter ``names`` of ``group`` is a per-run array (cheap for scalars)."""
    for name in names:
        value = group[name]
        if type(value) is float or type(value) is bool or type(value) is str:
            continue
        if run_arrays({name: value}):
            return True
    return False


def hyperparameter_classes(
    group: dict[str, Any], names: Iterable[str], shape: tuple[int, ...]
) -> list[tuple[np.ndarray, dict[str, Any]]]:
    """The elements of a parameter of ``shape`` (flat indices, ascending) grouped by the values
    of the per-run hyperparameters of ``group``, each class with ``group`` made scalar: its
    arrays replaced by the class's values as Python floats. Values are told apart by their
    bits (``-0.0`` is not ``0.0``)."""
    columns: list[tuple[str, int | None, np.ndarray]] = []
    for name in run_arrays({n: group[n] for n in names}):
        value = group[name]
        parts = enumerate(value) if isinstance(value, tuple) else [(None, value)]
        for i, part in parts:
            if isinstance(part, np.ndarray) and part.ndim > 0:
                columns.append((name, i, np.broadcast_to(np.asarray(part, np.float64), shape).reshape(-1)))
    size = int(np.prod(shape, dtype=np.int64))
    table = np.ascontiguousarray(np.stack([c for _, _, c in columns], axis=1)) if columns else np.zeros((size, 0))
    keys = table.view(np.dtype((np.void, table.dtype.itemsize * table.shape[1]))).reshape(-1)
    _, first, inverse = np.unique(keys, return_index=True, return_inverse=True)
    order = np.argsort(inverse.reshape(-1), kind="stable")
    bounds = np.cumsum(np.bincount(inverse.reshape(-1), minlength=len(first)))[:-1]
    classes = []
    for indices, at in zip(np.split(order, bounds), first):
        scalar = dict(group)
        for name, i, column in columns:
            x = float(column[at])
            if i is None:
                scalar[name] = x
            else:
                pair = list(scalar[name])
                pair[i] = x
                scalar[name] = tuple(pair)
        classes.append((indices, scalar))
    return classes


def _flat_slice(value: Any, indices: np.ndarray) -> Any:
    return value.reshape(-1)[indices] if isinstance(value, np.ndarray) else value


def step_by_class(
    rule: ScalarRule,
    param: np.ndarray,
    grad: np.ndarray,
    state: dict[str, Any],
    group: dict[str, Any],
    names: Iterable[str],
    fill_from: dict[str, str],
) -> tuple[np.ndarray, dict[str, Any]]:
    """``rule(param, grad, state, group)`` (an optimizer's scalar ``_compute``) applied to each
    class of :func:`hyperparameter_classes` and put back together.

    A state entry that some classes produce and others do not (SGD's momentum buffer where
    ``momentum`` is 0 in some runs; CProp-Adam's ``cprop_m`` where only some runs share
    Adam's moment) is stored whole: the missing classes take the entry ``fill_from`` names
    (the moment they share, equal bit for bit) or zeros (a buffer their rule never reads
    while their ``momentum`` stays 0)."""
    classes = hyperparameter_classes(group, names, param.shape)
    flat_param, flat_grad = param.reshape(-1), grad.reshape(-1)
    new_param: np.ndarray | None = None
    results: list[tuple[np.ndarray, dict[str, Any]]] = []
    for indices, scalar_group in classes:
        sub_state = {key: _flat_slice(value, indices) for key, value in state.items()}
        sub_param, sub_state = rule(flat_param[indices], flat_grad[indices], sub_state, scalar_group)
        if new_param is None:
            new_param = np.empty(param.size, np.result_type(sub_param))
        new_param[indices] = sub_param
        results.append((indices, sub_state))
    assert new_param is not None  # a parameter has at least one element
    keys = list(dict.fromkeys(key for _, sub in results for key in sub))
    new_state: dict[str, Any] = {}
    for key in keys:
        values = [sub.get(key) for _, sub in results]
        arrays = [v for v in values if isinstance(v, np.ndarray)]
        if not arrays:
            counts = {v for v in values if v is not None}
            new_state[key] = counts.pop() if counts else None  # the step count is one per parameter
            continue
        whole = np.zeros(param.size, np.result_type(arrays[0]))
        for (indices, sub), value in zip(results, values):
            if isinstance(value, np.ndarray):
                whole[indices] = value.reshape(-1)
            elif key in fill_from:
                whole[indices] = np.asarray(sub[fill_from[key]]).reshape(-1)
        new_state[key] = whole.reshape(param.shape)
    return new_param.reshape(param.shape), new_state


def scale_by_class(
    scale: Callable[[Any, dict[str, Any]], np.ndarray],
    stats: Any,
    group: dict[str, Any],
    names: Iterable[str],
    shape: tuple[int, ...],
) -> np.ndarray:
    """``scale(stats, group)`` (CProp's scale read-out) per class of per-run hyperparameters;
    ``stats`` is a :class:`~cprop_ref.scale.CPropStats` of the parameter's shape."""
    out: np.ndarray | None = None
    for indices, scalar_group in hyperparameter_classes(group, names, shape):
        sub = type(stats)(_flat_slice(stats.m, indices), _flat_slice(stats.v, indices), stats.t)
        s = np.asarray(scale(sub, scalar_group))
        if out is None:
            out = np.empty(int(np.prod(shape, dtype=np.int64)), s.dtype)
        out[indices] = s
    assert out is not None
    return out.reshape(shape)
