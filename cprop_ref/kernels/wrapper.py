"""Fused kernels of the CProp wrapper: save the parameters, then scale-and-apply.

:func:`save_serial` / :func:`save_parallel` copy every parameter into the arena's
``BEFORE`` row before the base optimizer steps; :func:`apply_serial` /
:func:`apply_parallel` then update CProp's moments from the raw gradient, compute the
scale and set ``param <- before + (param - before) * s`` in one pass (``CProp.step``).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, NamedTuple

import numpy as np
from numba import njit, prange

from .columns import column_count, column_numbers
from .cprop import CHUNK, cprop_z_loop, scale_loop
from .family import Kernels, TensorStep
from .flat import FlatState
from .pointers import array_at
from .scale import CDF_CODES, CPropScalars, cprop_scalars


class WrapperFlags(NamedTuple):
    """The flag row of a tensor: the CDF's code."""

    cdf: int


#: The scalar table holds CProp's scalars alone (:class:`.scale.CPropScalars`).
CPROP_BASE = 0
SCALAR_COUNT = column_count(CPropScalars)
#: Columns of the flag table.
CDF = column_numbers(WrapperFlags).cdf
FLAG_COUNT = column_count(WrapperFlags)
#: Rows of the state arena: CProp's state, then the parameters saved before the base step.
FIELDS = ("cprop_m", "cprop_v")
ROWS = (*FIELDS, "before")
CPROP_M = ROWS.index("cprop_m")
CPROP_V = ROWS.index("cprop_v")
BEFORE = ROWS.index("before")


@njit(error_model="numpy", cache=True)
def _apply_chunk(p, g, arena, offset, lo, hi, scalars, flags, buf):
    count = hi - lo
    p = p[lo:hi]
    g = g[lo:hi]
    buf = buf[:count]
    cm = arena[CPROP_M, offset + lo : offset + hi]
    cv = arena[CPROP_V, offset + lo : offset + hi]
    before = arena[BEFORE, offset + lo : offset + hi]
    cprop_z_loop(g, cm, cv, cm, cv, buf, scalars, CPROP_BASE, True, True)
    scale_loop(buf, count, scalars, CPROP_BASE, flags[CDF])
    for j in range(count):
        b, after, s = before[j], p[j], buf[j]
        # No update, or one scaled by s = 0, leaves the parameter as it was (as the
        # reference does, where IEEE would give inf - inf or 0 * inf = NaN).
        p[j] = b if (s == 0 or after == b) else b + (after - b) * s


@njit(error_model="numpy", cache=True)
def _apply_chunks(first, last, p_addr, g_addr, sizes, offsets, arena, chunk_tensor, chunk_lo, chunk_hi, scalars, flags):
    buf = np.empty(CHUNK, arena.dtype)
    for c in range(first, last):
        k = chunk_tensor[c]
        p = array_at(p_addr[k], sizes[k], arena)
        g = array_at(g_addr[k], sizes[k], arena)
        _apply_chunk(p, g, arena, offsets[k], chunk_lo[c], chunk_hi[c], scalars[k], flags[k], buf)


@njit(error_model="numpy", cache=True)
def apply_serial(p_addr, g_addr, sizes, offsets, arena, chunk_tensor, chunk_lo, chunk_hi, scalars, flags):
    """CProp's step of every listed tensor after the base optimizer's, on the calling thread."""
    _apply_chunks(
        0, chunk_tensor.size, p_addr, g_addr, sizes, offsets, arena, chunk_tensor, chunk_lo, chunk_hi, scalars, flags
    )


@njit(error_model="numpy", cache=True, parallel=True)
def apply_parallel(p_addr, g_addr, sizes, offsets, arena, chunk_tensor, chunk_lo, chunk_hi, scalars, flags, workers):
    """As :func:`apply_serial`, the chunks split into ``workers`` contiguous runs."""
    n = chunk_tensor.size
    for w in prange(workers):
        first = w * n // workers
        last = (w + 1) * n // workers
        _apply_chunks(
            first, last, p_addr, g_addr, sizes, offsets, arena, chunk_tensor, chunk_lo, chunk_hi, scalars, flags
        )


@njit(error_model="numpy", cache=True)
def _save_chunks(first, last, p_addr, sizes, offsets, arena, chunk_tensor, chunk_lo, chunk_hi):
    for c in range(first, last):
        k = chunk_tensor[c]
        p = array_at(p_addr[k], sizes[k], arena)
        lo, hi, offset = chunk_lo[c], chunk_hi[c], offsets[k]
        arena[BEFORE, offset + lo : offset + hi] = p[lo:hi]


@njit(error_model="numpy", cache=True)
def save_serial(p_addr, sizes, offsets, arena, chunk_tensor, chunk_lo, chunk_hi):
    """Copy every listed parameter into the ``BEFORE`` row."""
    _save_chunks(0, chunk_tensor.size, p_addr, sizes, offsets, arena, chunk_tensor, chunk_lo, chunk_hi)


@njit(error_model="numpy", cache=True, parallel=True)
def save_parallel(p_addr, sizes, offsets, arena, chunk_tensor, chunk_lo, chunk_hi, workers):
    n = chunk_tensor.size
    for w in prange(workers):
        first = w * n // workers
        last = (w + 1) * n // workers
        _save_chunks(first, last, p_addr, sizes, offsets, arena, chunk_tensor, chunk_lo, chunk_hi)


class WrapperKernels:
    """The declaration of the CProp wrapper's kernels: the arena rows :data:`ROWS` (CProp's
    state and the saved parameters), the scalar columns :class:`.scale.CPropScalars`, the flag
    columns :class:`WrapperFlags`, the save kernels and the scale-and-apply kernels. The NumPy
    rule is :class:`cprop_ref.optim.CProp`'s; ``dispatch.WrapperStep`` drives the two halves
    around the base optimizer's step."""

    name = "cprop"
    state_rows = ROWS
    chunk = CHUNK

    @property
    def save(self) -> tuple[Callable[..., Any], Callable[..., Any]]:
        """The save kernels: on the calling thread, on ``workers`` threads."""
        return save_serial, save_parallel

    @property
    def kernels(self) -> Kernels:
        """The scale-and-apply kernels (no single-tensor kernel)."""
        return Kernels(None, apply_serial, apply_parallel)

    def tensor_step(
        self, arena: FlatState, k: int, state: dict[str, Any], hp: dict[str, Any], rows: dict
    ) -> TensorStep:
        """Tensor ``k``'s new CProp state (arena views), scalar and flag rows for the step after
        ``state``, with the wrapper's checked hyperparameters ``hp``; ``rows``: the launch's memo
        of rows by step (as :meth:`.family.KernelFamily.tensor_step`)."""
        fresh = not state
        t = 1 if fresh else state["step"] + 1
        new = {
            "step": t,
            "cprop_m": arena.adopt(k, "cprop_m", None if fresh else state["cprop_m"]),
            "cprop_v": arena.adopt(k, "cprop_v", None if fresh else state["cprop_v"]),
        }
        shared = rows.get(t)
        if shared is None:
            scalars = cprop_scalars(hp["beta"], hp["c"], hp["eps"], t, arena.largest)
            shared = rows[t] = (scalars, WrapperFlags(cdf=CDF_CODES[hp["cdf"]]), None)
        return TensorStep(new, *shared)


#: The wrapper's declaration.
WRAPPER = WrapperKernels()
