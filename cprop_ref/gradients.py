"""Checking a step's gradients against the parameters before anything changes."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

NONFINITE_POLICIES: tuple[str, ...] = ("raise", "propagate", "skip")
SUPPORTED_DTYPES: tuple[np.dtype, ...] = (np.dtype(np.float16), np.dtype(np.float32), np.dtype(np.float64))


def compute_dtype(dtype: np.dtype) -> np.dtype:
    """The dtype the optimizer computes and keeps its state in for a parameter of ``dtype``.

    float32 and float64 compute in their own precision; float16 computes in float32
    (in float16, ``eps = 1e-8`` underflows to 0 and a zero gradient would give 0/0).
    """
    return np.dtype(np.float32) if dtype == np.float16 else np.dtype(dtype)


def check_nonfinite_policy(value: Any) -> str:
    if value not in NONFINITE_POLICIES:
        raise ValueError(f"invalid nonfinite={value!r}: must be one of {', '.join(NONFINITE_POLICIES)}")
    return str(value)


def check_parameter(param: Any, where: str) -> np.ndarray:
    """A parameter must be a writeable NumPy array of float16, float32 or float64."""
    if not isinstance(param, np.ndarray):
        raise ValueError(f"{where}: parameters must be numpy.ndarray, got {type(param).__name__}")
    if param.dtype not in SUPPORTED_DTYPES:
        raise ValueError(f"{where}: dtype {param.dtype} is not supported (float16, float32 or float64)")
    if not param.flags.writeable:
        raise ValueError(f"{where}: the array is read-only; the optimizer updates parameters in place")
    return param


def check_gradients(
    params: Sequence[np.ndarray],
    names: Sequence[str],
    grads: Any,
    nonfinite: str,
) -> list[np.ndarray | None]:
    """Validate ``grads`` against ``params`` and apply the non-finite policy.

    Returns the gradients to use, one per parameter, ``None`` where the parameter
    takes no step (no gradient, or a non-finite one under ``nonfinite="skip"``).
    Raises ``ValueError`` naming the parameter on a count, type, shape or dtype
    mismatch, and on a non-finite gradient under ``nonfinite="raise"``.
    """
    if isinstance(grads, np.ndarray) or not isinstance(grads, Sequence):
        raise ValueError(f"grads must be a list with one array (or None) per parameter, got {type(grads).__name__}")
    if len(grads) != len(params):
        raise ValueError(f"grads has {len(grads)} entries but the optimizer has {len(params)} parameters")
    checked: list[np.ndarray | None] = []
    for param, name, grad in zip(params, names, grads):
        if grad is None:
            checked.append(None)
            continue
        if isinstance(grad, np.generic):  # arithmetic on 0-d arrays returns NumPy scalars
            grad = np.asarray(grad)
        if not isinstance(grad, np.ndarray):
            raise ValueError(f"gradient of {name}: must be numpy.ndarray or None, got {type(grad).__name__}")
        if grad.shape != param.shape:
            raise ValueError(f"gradient of {name}: shape {grad.shape} does not match the parameter's {param.shape}")
        if grad.dtype != param.dtype:
            raise ValueError(f"gradient of {name}: dtype {grad.dtype} does not match the parameter's {param.dtype}")
        if nonfinite != "propagate":
            finite = np.isfinite(grad)
            if not finite.all():
                if nonfinite == "skip":
                    checked.append(None)
                    continue
                bad = tuple(int(i) for i in np.argwhere(~finite)[0])
                raise ValueError(
                    f"gradient of {name}: non-finite value {grad[bad].item()!r} at element {bad} "
                    f"({int((~finite).sum())} non-finite in all); nothing was changed. "
                    "Pass nonfinite='skip' to skip such parameters or 'propagate' to apply the formulas as they are"
                )
        checked.append(grad)
    return checked
