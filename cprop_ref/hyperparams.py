"""Validation of hyperparameters: every invalid value raises ``ValueError`` naming the
hyperparameter, the value and the valid range, and valid values are normalised to
plain Python types (floats stay weak scalars in NumPy arithmetic).

The real-valued hyperparameters may also be NumPy arrays (one value per run of a grid,
``docs/optimizers.md``, "Hyperparameters per run"): those are checked element by element,
the first invalid element named by its index (``lr[3, 0]=-1.0``), and normalised to a
float64 copy of their own."""

from __future__ import annotations

import functools
import math
import numbers
from collections.abc import Callable, Iterable
from typing import Any

import numpy as np

from .cdf import CDF_NAMES

Validator = Callable[[str, Any], Any]


def _real_array(name: str, value: np.ndarray, valid: Callable[[np.ndarray], np.ndarray], rule: str) -> np.ndarray:
    """A per-run array of reals: a float64 copy, every element finite and ``valid``; else
    ``ValueError`` naming the first offending element by its index."""
    if value.dtype.kind not in "fiu" or value.dtype.kind == "b":
        raise ValueError(f"invalid {name}: an array of dtype {value.dtype}, must hold real numbers")
    if value.size == 0:
        raise ValueError(f"invalid {name}: an empty array (shape {value.shape}), must hold one value per run")
    x = np.array(value, dtype=np.float64, copy=True)
    for bad, reason in ((~np.isfinite(x), "must be finite"), (~valid(x), rule)):
        if bad.any():
            index = tuple(int(i) for i in np.argwhere(bad)[0])
            label = f"{name}[{', '.join(map(str, index))}]"
            raise ValueError(f"invalid {label}={float(x[index])!r}: {reason.replace(name, label)}")
    x.flags.writeable = False  # the validated copy; users change a group's value by assigning a new one
    return x


def _is_run_array(value: Any) -> bool:
    """Whether ``value`` is a per-run array (an ndarray with at least one dimension)."""
    return isinstance(value, np.ndarray) and value.ndim > 0


def _real(name: str, value: Any) -> float:
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise ValueError(f"invalid {name}={value!r}: must be a real number")
    value = float(value)
    if not math.isfinite(value):
        raise ValueError(f"invalid {name}={value!r}: must be finite")
    return value


def non_negative(name: str, value: Any, *, per_run: bool = False) -> Any:
    """A finite real ``>= 0`` (learning rate, weight decay, eps, c, momentum), or an array of them."""
    if per_run and _is_run_array(value):
        return _real_array(name, value, lambda x: x >= 0.0, "must be >= 0")
    x = _real(name, value)
    if x < 0.0:
        raise ValueError(f"invalid {name}={value!r}: must be >= 0")
    return x


def unit_interval(name: str, value: Any, *, per_run: bool = False) -> Any:
    """A real in ``[0, 1]`` (dampening), or an array of them."""
    if per_run and _is_run_array(value):
        return _real_array(name, value, lambda x: (x >= 0.0) & (x <= 1.0), f"must satisfy 0 <= {name} <= 1")
    x = _real(name, value)
    if not 0.0 <= x <= 1.0:
        raise ValueError(f"invalid {name}={value!r}: must satisfy 0 <= {name} <= 1")
    return x


def decay_rate(name: str, value: Any, *, per_run: bool = False) -> Any:
    """An EMA decay in ``[0, 1)`` (beta, beta1, beta2), or an array of them."""
    if per_run and _is_run_array(value):
        return _real_array(name, value, lambda x: (x >= 0.0) & (x < 1.0), f"must satisfy 0 <= {name} < 1")
    x = _real(name, value)
    if not 0.0 <= x < 1.0:
        raise ValueError(f"invalid {name}={value!r}: must satisfy 0 <= {name} < 1")
    return x


def betas(name: str, value: Any, *, per_run: bool = False) -> tuple[Any, Any]:
    """A pair ``(beta1, beta2)`` of decay rates (each a number or an array of them)."""
    if per_run and _is_run_array(value) and value.shape[0] != 2:
        raise ValueError(f"invalid {name}: an array of shape {value.shape}, must be a pair (beta1, beta2)")
    try:
        b1, b2 = value
    except (TypeError, ValueError):
        raise ValueError(f"invalid {name}={value!r}: must be a pair (beta1, beta2)") from None
    return decay_rate(f"{name}[0]", b1, per_run=per_run), decay_rate(f"{name}[1]", b2, per_run=per_run)


def flag(name: str, value: Any) -> bool:
    """A boolean (nesterov, amsgrad); 0/1 integers are not accepted to avoid typos."""
    if not isinstance(value, bool):
        raise ValueError(f"invalid {name}={value!r}: must be True or False")
    return value


def cdf_name(name: str, value: Any) -> str:
    """One of the four CDF names."""
    if value not in CDF_NAMES:
        raise ValueError(f"invalid {name}={value!r}: must be one of {', '.join(CDF_NAMES)}")
    return str(value)


SGD_HYPERPARAMS: dict[str, Validator] = {
    "lr": non_negative,
    "momentum": non_negative,
    "dampening": unit_interval,
    "weight_decay": non_negative,
    "nesterov": flag,
}

ADAM_HYPERPARAMS: dict[str, Validator] = {
    "lr": non_negative,
    "betas": betas,
    "eps": non_negative,
    "weight_decay": non_negative,
    "amsgrad": flag,
}

CPROP_HYPERPARAMS: dict[str, Validator] = {
    "cprop_beta": decay_rate,
    "cprop_c": non_negative,
    "cprop_eps": non_negative,
    "cprop_cdf": cdf_name,
}


def validated(table: dict[str, Validator], values: dict[str, Any], where: str) -> dict[str, Any]:
    """``values`` checked and normalised by the validators of ``table``; ``ValueError`` names the
    hyperparameter and ``where`` (the ports' constructors: torch's and JAX's)."""
    out = {}
    for name, check in table.items():
        try:
            out[name] = check(name, values[name])
        except ValueError as err:
            raise ValueError(f"{where}: {err}") from None
    return out


def accepting_runs(table: dict[str, Validator]) -> dict[str, Validator]:
    """``table`` with its real-valued validators accepting per-run arrays as well (the NumPy
    optimizers' tables; the torch and JAX ports take scalars only, with the plain tables)."""
    real = (non_negative, unit_interval, decay_rate, betas)
    return {name: (functools.partial(v, per_run=True) if v in real else v) for name, v in table.items()}


def check_sgd_group(group: dict[str, Any], where: str) -> None:
    """torch's rule: Nesterov momentum needs ``momentum > 0`` and ``dampening == 0``."""
    if group["nesterov"] and (np.any(group["momentum"] <= 0.0) or np.any(group["dampening"] != 0.0)):
        raise ValueError(
            f"{where}: nesterov=True requires momentum > 0 and dampening == 0 "
            f"(got momentum={group['momentum']!r}, dampening={group['dampening']!r})"
        )


def check_fits_dtypes(values: dict[str, Any], dtypes: Iterable[np.dtype], where: str) -> None:
    """Every real hyperparameter in ``values`` (already validated: floats, or tuples of them
    such as ``betas``) must be a finite number of each compute ``dtype`` it is used in.

    The kernels and the formulas compute in the parameter's precision: ``lr=1e39`` is ``inf``
    as a float32 and turns finite input into NaN (``inf * 0``). Raises ``ValueError`` naming
    the hyperparameter, its value and the dtype's largest finite value."""
    limits = {np.dtype(d): float(np.finfo(d).max) for d in dtypes}
    if not limits:
        return
    dtype, largest = min(limits.items(), key=lambda item: item[1])
    for name, value in values.items():
        if isinstance(value, (bool, str)):
            continue
        if isinstance(value, tuple) and any(_is_run_array(v) for v in value):
            # betas with per-run arrays: each of the pair on its own, named name[i][index].
            check_fits_dtypes({f"{name}[{i}]": v for i, v in enumerate(value)}, limits, where)
            continue
        if _is_run_array(value) and value.dtype.kind == "f":
            # A per-run array (validated: float64): checked at once, the first element past the
            # limit named by its index.
            past = np.abs(value) > largest
            if past.any():
                index = tuple(int(i) for i in np.argwhere(past)[0])
                label = f"{name}[{', '.join(map(str, index))}]"
                raise ValueError(
                    f"{where}: invalid {label}={float(value[index])!r}: not a finite {dtype} (largest "
                    f"{largest:.6g}), the precision of the parameters it is applied to"
                )
            continue
        # Scalars, tuples of scalars (betas) and other arrays: every
        # element is checked, the first one past the limit named by its index.
        elements = np.asarray(value, dtype=object if isinstance(value, tuple) else None)
        if elements.dtype.kind not in "fiu" and not isinstance(value, tuple):
            continue
        flat = elements.reshape(-1)
        for index, x in enumerate(flat):
            if isinstance(x, (bool, np.bool_)) or not isinstance(x, (float, np.floating)):
                continue
            if abs(float(x)) > largest:
                label = f"{name}[{index}]" if elements.ndim else name
                raise ValueError(
                    f"{where}: invalid {label}={float(x)!r}: not a finite {dtype} (largest {largest:.6g}), "
                    f"the precision of the parameters it is applied to"
                )


def run_arrays(values: dict[str, Any]) -> list[str]:
    """The names of the hyperparameters in ``values`` given as per-run arrays (``betas``
    counts when either of its two values is one)."""
    names = []
    for name, value in values.items():
        if type(value) is float or type(value) is bool or type(value) is str:
            continue
        if _is_run_array(value) or (isinstance(value, tuple) and any(_is_run_array(v) for v in value)):
            names.append(name)
    return names


def check_broadcasts(values: dict[str, Any], params: Iterable[np.ndarray], where: str) -> None:
    """Every per-run array in ``values`` broadcasts against every parameter without changing
    the parameter's shape (``lr`` of shape ``(R, 1)`` for a parameter of shape ``(R, dim)``);
    else ``ValueError`` naming the hyperparameter, its shape and the parameter."""
    for name in run_arrays(values):
        value = values[name]
        parts = [(f"{name}[{i}]", v) for i, v in enumerate(value)] if isinstance(value, tuple) else [(name, value)]
        for label, array in parts:
            if not _is_run_array(array):
                continue
            for j, p in enumerate(params):
                try:
                    fits = np.broadcast_shapes(array.shape, p.shape) == p.shape
                except ValueError:
                    fits = False
                if not fits:
                    raise ValueError(
                        f"{where}: {label} has shape {array.shape}, which does not broadcast to the shape "
                        f"{p.shape} of parameter {j} of the group (one value per run: e.g. (R, 1) for (R, dim))"
                    )
