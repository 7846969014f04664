"""The one place that checks the arrays a step may touch, before anything changes.

Parameters (:func:`check_parameter`, :func:`parameters_are_plain`, :func:`first_overlap`):
plain ``numpy.ndarray``, writeable, float16/32/64, no memory shared between two. Gradients
(:func:`check_gradients`): plain ``ndarray`` of the parameter's shape and dtype, finite under
the policy. Aliasing (:func:`unaliased`): a gradient that may share memory with a parameter
or the state is copied before the kernels run. The optimizers run these at construction
and at every step; hyperparameters are checked in :mod:`cprop_ref.hyperparams`.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

try:
    from numpy.lib.array_utils import byte_bounds
except ImportError:  # NumPy < 2
    byte_bounds = np.byte_bounds  # noqa: NPY201

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


def _not_plain(value: Any) -> str | None:
    """Why ``value`` is not a plain ``numpy.ndarray`` (``None`` if it is one). Subclasses are
    refused: a ``MaskedArray`` hides elements from the finiteness check that the kernels then
    read, and ``np.matrix`` turns the element-wise ``*`` of the formulas into matrix products."""
    if type(value) is np.ndarray:
        return None
    if isinstance(value, np.ndarray):
        return (
            f"got {type(value).__module__}.{type(value).__name__}, a subclass of numpy.ndarray whose arithmetic "
            "differs from the formulas'; pass a plain array (np.asarray(x))"
        )
    return f"got {type(value).__name__}"


def check_parameter(param: Any, where: str) -> np.ndarray:
    """A parameter must be a plain, writeable NumPy array of float16, float32 or float64."""
    why = _not_plain(param)
    if why is not None:
        raise ValueError(f"{where}: parameters must be numpy.ndarray, {why}")
    if param.dtype not in SUPPORTED_DTYPES:
        raise ValueError(f"{where}: dtype {param.dtype} is not supported (float16, float32 or float64)")
    if not param.flags.writeable:
        raise ValueError(f"{where}: the array is read-only; the optimizer updates parameters in place")
    return param


def parameters_are_plain(params: Sequence[Any]) -> bool:
    """The cheap part of :func:`check_parameter` for every parameter, without messages: what
    a step re-checks when the parameter list is the one last found valid."""
    for p in params:
        if type(p) is not np.ndarray or p.dtype not in SUPPORTED_DTYPES or not p.flags.writeable:
            return False
    return True


def first_overlap(arrays: Sequence[np.ndarray]) -> tuple[int, int] | None:
    """The first pair ``(i, j)``, ``i < j``, of ``arrays`` that share memory, or ``None``.

    Exact (``np.shares_memory``) for the pairs whose byte ranges overlap, found by sorting the
    ranges: O(n log n) for the usual separate arrays, so that interleaved views such as
    ``a[::2]`` and ``a[1::2]`` stay allowed. A pair too hard to decide counts as sharing."""
    if len(arrays) < 2:
        return None
    ranges = sorted((*byte_bounds(a), k) for k, a in enumerate(arrays) if a.size)
    open_ranges: list[tuple[int, int]] = []  # (end, index) of ranges that may still overlap
    for start, end, k in ranges:
        open_ranges = [(e, i) for e, i in open_ranges if e > start]
        for _, i in open_ranges:
            try:
                shared = np.shares_memory(arrays[i], arrays[k])
            except np.exceptions.TooHardError:
                shared = True
            if shared:
                return min(i, k), max(i, k)
        open_ranges.append((end, k))
    return None


class MemoryMap:
    """The byte ranges of some arrays, sorted, to ask of many other arrays at once whether
    they may share memory with one of them (by byte range: a "yes" can be wrong, a "no"
    never is). ``arrays`` are kept, so their memory stays where it was measured."""

    def __init__(self, arrays: Sequence[np.ndarray]) -> None:
        self.arrays = tuple(arrays)
        ranges = sorted(byte_bounds(a) for a in self.arrays if a.size)
        self.starts = np.array([lo for lo, _ in ranges], dtype=np.int64)
        # reach[i]: the end of the furthest-reaching range among the first i + 1.
        self.reach = np.maximum.accumulate(np.array([hi for _, hi in ranges], dtype=np.int64))

    def is_for(self, arrays: Sequence[np.ndarray]) -> bool:
        """Whether this map was made for these very arrays."""
        return len(arrays) == len(self.arrays) and all(a is b for a, b in zip(arrays, self.arrays))

    def overlapping(self, arrays: Sequence[np.ndarray]) -> np.ndarray:
        """For each of ``arrays``: whether its byte range overlaps one of the map's."""
        if not self.starts.size or not arrays:
            return np.zeros(len(arrays), dtype=bool)
        bounds = np.array([_byte_range(a) for a in arrays], dtype=np.int64).reshape(-1, 2)
        before = np.searchsorted(self.starts, bounds[:, 1], side="left")  # ranges starting below its end
        reach = self.reach[np.maximum(before - 1, 0)]
        return (before > 0) & (reach > bounds[:, 0]) & (bounds[:, 1] > bounds[:, 0])


def _byte_range(a: np.ndarray) -> tuple[int, int]:
    if a.flags.c_contiguous:  # the usual gradient: one lookup instead of byte_bounds' arithmetic
        start = a.ctypes.data
        return start, start + a.nbytes
    return byte_bounds(a)


#: Up to this many arrays to compare with, pairwise ``np.may_share_memory`` is cheaper than a map.
PAIRWISE_LIMIT = 4


def unaliased(
    grads: list[Any],
    params: Sequence[np.ndarray],
    buffers: Sequence[np.ndarray] = (),
    cache: dict[str, Any] | None = None,
) -> list[Any]:
    """``grads`` with every gradient that may share memory with a parameter (or with one of
    ``buffers``: the optimizer's state) replaced by a copy; ``grads`` itself when none does.

    The kernels read a gradient while they write the parameters and the state, so an aliased
    gradient (``opt.step([w])``) would change under them. A step therefore uses the values the
    gradients had when it was called, as ``step([g.copy()])`` would (the NumPy path computes
    every update before writing any, which gives the same). ``cache``: a dict (the optimizer's
    ``__dict__``) that keeps the :class:`MemoryMap` of ``params`` and ``buffers`` between steps."""
    others = [*params, *buffers]
    present = [k for k, g in enumerate(grads) if g is not None]
    if len(others) <= PAIRWISE_LIMIT:
        aliased = [k for k in present if any(np.may_share_memory(grads[k], o) for o in others)]
    else:
        memory_map = None if cache is None else cache.get("_memory_map")
        if memory_map is None or not memory_map.is_for(others):
            memory_map = MemoryMap(others)
            if cache is not None:
                cache["_memory_map"] = memory_map
        hits = memory_map.overlapping([grads[k] for k in present])
        aliased = [k for k, hit in zip(present, hits) if hit]
    if not aliased:
        return grads
    out = list(grads)
    for k in aliased:
        out[k] = grads[k].copy()
    return out


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
        why = _not_plain(grad)
        if why is not None:
            raise ValueError(f"gradient of {name}: must be numpy.ndarray or None, {why}")
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
