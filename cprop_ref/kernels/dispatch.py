"""Running an optimizer step through the fused kernels.

The shells in :mod:`cprop_ref.optim` validate the hyperparameters and the gradients
first; then, with ``backend="numba"``, :func:`fused_step` updates in place every
parameter the kernels handle (float32 and float64, C-contiguous), one kernel launch per
dtype for all of them, and hands the rest back to the NumPy path. The per-parameter
state dicts get views into the arena (:mod:`.flat`); their contents are what the NumPy
path would have stored, within the tolerance policy.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import numba
import numpy as np

from . import adam as adam_kernels
from . import sgd as sgd_kernels
from . import wrapper as wrapper_kernels
from .flat import FlatState, chunk_table, layout_key
from .scale import CDF_CODES, CPROP_SCALAR_COUNT, cprop_scalars

KERNEL_DTYPES: tuple[np.dtype, ...] = (np.dtype(np.float32), np.dtype(np.float64))
#: Below this many elements in a launch one thread does the work: waking the others costs more.
PARALLEL_THRESHOLD = 1 << 15
_NO_CPROP = [0.0] * CPROP_SCALAR_COUNT


def kernel_eligible(param: np.ndarray) -> bool:
    """Whether the kernels can update ``param`` in place (float32/float64, C-contiguous)."""
    return param.dtype in KERNEL_DTYPES and param.flags.c_contiguous


def _arena(owner: Any, rows: tuple[str, ...], dtype: np.dtype, params: Sequence[np.ndarray]) -> FlatState:
    """The owner's arena for ``dtype``, rebuilt when its parameters changed."""
    members = [(k, p) for k, p in enumerate(params) if p.dtype == dtype and kernel_eligible(p)]
    cache = owner.__dict__.setdefault("_kernel_arenas", {})
    flat = cache.get(dtype)
    if flat is None or flat.rows != rows or flat.key != layout_key(members):
        flat = FlatState(rows, members, dtype)
        cache[dtype] = flat
    return flat


def _by_dtype(params: Sequence[np.ndarray], grads: Sequence[np.ndarray | None]) -> dict[np.dtype, list[int]]:
    out: dict[np.dtype, list[int]] = {}
    for k, (p, g) in enumerate(zip(params, grads)):
        if g is not None and kernel_eligible(p):
            out.setdefault(p.dtype, []).append(k)
    return out


class _Launch:
    """The tables of one kernel launch over the tensors ``ks`` of one arena."""

    def __init__(self, flat: FlatState, ks: list[int], chunk: int) -> None:
        cache = flat.__dict__.setdefault("_launch_cache", {})
        key = tuple(ks)
        cached = cache.get(key)
        if cached is None:
            idx = np.asarray([flat.position[k] for k in ks], dtype=np.intp)
            sizes, offsets, p_addr = flat.sizes[idx], flat.offsets[idx], flat.param_addresses[idx]
            cached = (sizes, offsets, p_addr, *chunk_table(sizes, chunk), int(sizes.sum()))
            cache[key] = cached
        self.sizes, self.offsets, self.p_addr, self.tensor, self.lo, self.hi, self.total = cached
        self.flat = flat

    def run(
        self, serial: Callable, parallel: Callable, g_addr: np.ndarray, scalars: np.ndarray, flags: np.ndarray
    ) -> None:
        arena = self.flat.arena
        single = arena.dtype == np.float32
        workers = min(numba.get_num_threads(), self.tensor.size)
        args = (
            self.p_addr,
            g_addr,
            self.sizes,
            self.offsets,
            arena,
            self.tensor,
            self.lo,
            self.hi,
            scalars,
            flags,
            single,
        )
        if self.total < PARALLEL_THRESHOLD or workers < 2:
            serial(*args)
        else:
            parallel(*args, workers)


def _table(rows: list, dtype: np.dtype) -> np.ndarray:
    """The scalar table in the array dtype: each double rounded once, as NumPy rounds a
    Python float; a hyperparameter past float32's range becomes inf there too, silently."""
    with np.errstate(over="ignore"):
        return np.array(rows, dtype=dtype)


def _grad_addresses(grads: Sequence[np.ndarray | None], ks: list[int], keep: list[np.ndarray]) -> np.ndarray:
    addresses = np.empty(len(ks), dtype=np.intp)
    for i, k in enumerate(ks):
        g = grads[k]
        if not g.flags.c_contiguous:
            g = np.ascontiguousarray(g)
            keep.append(g)  # alive until the kernel has run
        addresses[i] = g.ctypes.data
    return addresses


def fused_step(opt: Any, groups: list[dict[str, Any]], grads: list[np.ndarray | None]) -> list[np.ndarray | None]:
    """Step every kernel-eligible parameter of ``opt`` in place; return the gradients left
    for the NumPy path (``None`` where done). ``groups`` are the validated groups."""
    family = opt.kernel_family
    pairs = opt._flat(groups)
    params = [p for p, _ in pairs]
    remaining = list(grads)
    for dtype, ks in _by_dtype(params, grads).items():
        if family == "adam":
            _adam_family(opt, pairs, grads, dtype, ks)
        else:
            _sgd_family(opt, pairs, grads, dtype, ks)
        for k in ks:
            remaining[k] = None
    return remaining


def _adam_family(opt: Any, pairs: list, grads: list, dtype: np.dtype, ks: list[int]) -> None:
    cprop = "cprop_beta" in opt.hyperparams
    decoupled = bool(opt.decoupled_weight_decay)
    flat = _arena(opt, adam_kernels.FIELDS, dtype, [p for p, _ in pairs])
    scalars, flags, new_states = [], [], []
    for k in ks:
        group = pairs[k][1]
        state = opt.state[k]
        fresh = not state
        t = 1 if fresh else state["step"] + 1
        new = {"step": t}
        new["exp_avg"] = flat.adopt(k, "exp_avg", None if fresh else state["exp_avg"])
        new["exp_avg_sq"] = flat.adopt(k, "exp_avg_sq", None if fresh else state["exp_avg_sq"])
        old_max = state.get("max_exp_avg_sq")
        new["max_exp_avg_sq"] = flat.adopt(k, "max_exp_avg_sq", old_max) if group["amsgrad"] else old_max
        private_m = private_v = False
        cdf_code = 0
        if cprop:
            shares_m, shares_v = opt.shares_moments(state, group)
            allowed_m, allowed_v = opt.sharing_allowed(group)
            private_m, private_v = not (shares_m and allowed_m), not (shares_v and allowed_v)
            # A moment that stops being shared continues, private, from Adam's (CPropAdam._compute).
            if private_m:
                source = None if fresh else state.get("cprop_m", state["exp_avg"])
                new["cprop_m"] = flat.adopt(k, "cprop_m", source)
            if private_v:
                source = None if fresh else state.get("cprop_v", state["exp_avg_sq"])
                new["cprop_v"] = flat.adopt(k, "cprop_v", source)
            cdf_code = CDF_CODES[group["cprop_cdf"]]
            row = cprop_scalars(group["cprop_beta"], group["cprop_c"], group["cprop_eps"], t)
        else:
            row = _NO_CPROP
        scalars.append(adam_kernels.adam_scalars(group, t, decoupled) + row)
        flags.append((decoupled, group["weight_decay"] != 0.0, group["amsgrad"], cprop, private_m, private_v, cdf_code))
        new_states.append(new)
    keep: list[np.ndarray] = []
    launch = _Launch(flat, ks, adam_kernels.CHUNK)
    launch.run(
        adam_kernels.adam_serial,
        adam_kernels.adam_parallel,
        _grad_addresses(grads, ks, keep),
        _table(scalars, dtype),
        np.array(flags, dtype=np.int64),
    )
    for k, new in zip(ks, new_states):
        opt.state[k] = new


def _sgd_family(opt: Any, pairs: list, grads: list, dtype: np.dtype, ks: list[int]) -> None:
    cprop = "cprop_beta" in opt.hyperparams
    flat = _arena(opt, sgd_kernels.FIELDS, dtype, [p for p, _ in pairs])
    scalars, flags, new_states = [], [], []
    for k in ks:
        group = pairs[k][1]
        state = opt.state[k]
        new: dict[str, Any] = {}
        cdf_code = 0
        if cprop:
            fresh = not state
            t = 1 if fresh else state["step"] + 1
            new["step"] = t
            new["cprop_m"] = flat.adopt(k, "cprop_m", None if fresh else state["cprop_m"])
            new["cprop_v"] = flat.adopt(k, "cprop_v", None if fresh else state["cprop_v"])
            cdf_code = CDF_CODES[group["cprop_cdf"]]
            row = cprop_scalars(group["cprop_beta"], group["cprop_c"], group["cprop_eps"], t)
        else:
            row = _NO_CPROP
        has_momentum = group["momentum"] != 0.0
        old_buffer = state.get("momentum_buffer")
        first = old_buffer is None
        if has_momentum:
            # The first step writes the buffer whole; later ones continue from the saved one.
            new["momentum_buffer"] = (
                flat.view(k, "momentum_buffer") if first else flat.adopt(k, "momentum_buffer", old_buffer)
            )
        else:
            new["momentum_buffer"] = None
        scalars.append(sgd_kernels.sgd_scalars(group) + row)
        flags.append((group["weight_decay"] != 0.0, has_momentum, first, group["nesterov"], cprop, cdf_code))
        new_states.append(new)
    keep: list[np.ndarray] = []
    launch = _Launch(flat, ks, sgd_kernels.CHUNK)
    launch.run(
        sgd_kernels.sgd_serial,
        sgd_kernels.sgd_parallel,
        _grad_addresses(grads, ks, keep),
        _table(scalars, dtype),
        np.array(flags, dtype=np.int64),
    )
    for k, new in zip(ks, new_states):
        opt.state[k] = new


_WRAPPER_ROWS = (*wrapper_kernels.FIELDS, "before")


class WrapperStep:
    """The CProp wrapper's fused step, in two halves around the base optimizer's step:
    the constructor saves the parameters it handles, :meth:`finish` scales the base
    optimizer's update and commits CProp's state. ``handled`` lists those parameters."""

    def __init__(self, wrapper: Any, hp: dict[str, Any], grads: list[np.ndarray | None]) -> None:
        self.wrapper, self.hp, self.grads = wrapper, hp, grads
        params = wrapper.params
        self.batches: list[tuple[FlatState, list[int], _Launch]] = []
        self.handled: set[int] = set()
        for dtype, ks in _by_dtype(params, grads).items():
            flat = _arena(wrapper, _WRAPPER_ROWS, dtype, params)
            launch = _Launch(flat, ks, wrapper_kernels.CHUNK)
            args = (launch.p_addr, launch.sizes, launch.offsets, flat.arena, launch.tensor, launch.lo, launch.hi)
            workers = min(numba.get_num_threads(), launch.tensor.size)
            if launch.total < PARALLEL_THRESHOLD or workers < 2:
                wrapper_kernels.save_serial(*args)
            else:
                wrapper_kernels.save_parallel(*args, workers)
            self.batches.append((flat, ks, launch))
            self.handled.update(ks)

    def finish(self) -> None:
        """After the base optimizer's step: CProp's moments, scale and the scaled update."""
        hp, state = self.hp, self.wrapper.state
        for flat, ks, launch in self.batches:
            scalars, new_states = [], []
            for k in ks:
                old = state[k]
                fresh = not old
                t = 1 if fresh else old["step"] + 1
                new_states.append(
                    {
                        "step": t,
                        "cprop_m": flat.adopt(k, "cprop_m", None if fresh else old["cprop_m"]),
                        "cprop_v": flat.adopt(k, "cprop_v", None if fresh else old["cprop_v"]),
                    }
                )
                scalars.append(cprop_scalars(hp["beta"], hp["c"], hp["eps"], t))
            keep: list[np.ndarray] = []
            flags = np.full((len(ks), wrapper_kernels.FLAG_COUNT), CDF_CODES[hp["cdf"]], dtype=np.int64)
            launch.run(
                wrapper_kernels.apply_serial,
                wrapper_kernels.apply_parallel,
                _grad_addresses(self.grads, ks, keep),
                _table(scalars, flat.arena.dtype),
                flags,
            )
            for k, new in zip(ks, new_states):
                state[k] = new
