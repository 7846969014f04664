"""Validation of hyperparameters: every invalid value raises ``ValueError`` naming the
hyperparameter, the value and the valid range, and valid values are normalised to
plain Python types (floats stay weak scalars in NumPy arithmetic)."""

from __future__ import annotations

import math
import numbers
from collections.abc import Callable, Iterable
from typing import Any

import numpy as np

from .cdf import CDF_NAMES

Validator = Callable[[str, Any], Any]


def _real(name: str, value: Any) -> float:
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise ValueError(f"invalid {name}={value!r}: must be a real number")
    value = float(value)
    if not math.isfinite(value):
        raise ValueError(f"invalid {name}={value!r}: must be finite")
    return value


def non_negative(name: str, value: Any) -> float:
    """A finite real ``>= 0`` (learning rate, weight decay, eps, c, momentum)."""
    x = _real(name, value)
    if x < 0.0:
        raise ValueError(f"invalid {name}={value!r}: must be >= 0")
    return x


def unit_interval(name: str, value: Any) -> float:
    """A real in ``[0, 1]`` (dampening)."""
    x = _real(name, value)
    if not 0.0 <= x <= 1.0:
        raise ValueError(f"invalid {name}={value!r}: must satisfy 0 <= {name} <= 1")
    return x


def decay_rate(name: str, value: Any) -> float:
    """An EMA decay in ``[0, 1)`` (beta, beta1, beta2)."""
    x = _real(name, value)
    if not 0.0 <= x < 1.0:
        raise ValueError(f"invalid {name}={value!r}: must satisfy 0 <= {name} < 1")
    return x


def betas(name: str, value: Any) -> tuple[float, float]:
    """A pair ``(beta1, beta2)`` of decay rates."""
    try:
        b1, b2 = value
    except (TypeError, ValueError):
        raise ValueError(f"invalid {name}={value!r}: must be a pair (beta1, beta2)") from None
    return decay_rate(f"{name}[0]", b1), decay_rate(f"{name}[1]", b2)


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


def check_sgd_group(group: dict[str, Any], where: str) -> None:
    """torch's rule: Nesterov momentum needs ``momentum > 0`` and ``dampening == 0``."""
    if group["nesterov"] and (group["momentum"] <= 0.0 or group["dampening"] != 0.0):
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
        # Scalars, tuples of scalars (betas) and, for per-run hyperparameters, arrays: every
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
