"""Fused kernels of the CProp wrapper: save the parameters, then scale-and-apply.

:func:`save_serial` / :func:`save_parallel` copy every parameter into the arena's
``BEFORE`` row before the base optimizer steps; :func:`apply_serial` /
:func:`apply_parallel` then update CProp's moments from the raw gradient, compute the
scale and set ``param <- before + (param - before) * s`` in one pass (``CProp.step``).
"""

from __future__ import annotations

import numpy as np
from numba import njit, prange

from .adam import CHUNK, cprop_z_loop, scale_loop
from .pointers import array_at
from .scale import CPROP_SCALAR_COUNT

CPROP_BASE = 0
SCALAR_COUNT = CPROP_SCALAR_COUNT
CDF = 0
FLAG_COUNT = 1
#: Rows of the state arena.
CPROP_M, CPROP_V, BEFORE = range(3)
FIELDS = ("cprop_m", "cprop_v")


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
