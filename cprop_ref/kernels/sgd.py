"""Fused kernel of the SGD family: SGD and CProp-SGD in one pass per element.

Per element: weight decay, momentum (with dampening and Nesterov), CProp's moments,
``z``, the CDF and the scale, then the parameter; blocked in chunks as in
:mod:`.adam`. Each operation mirrors :func:`cprop_ref.functional.sgd_direction`.
"""

from __future__ import annotations

import numpy as np
from numba import njit, prange

from .adam import CHUNK, cprop_z_loop, scale_loop
from .pointers import array_at, chunks_finite, finite
from .scale import C_ZERO, CPROP_SCALAR_COUNT

#: Columns of the scalar table: SGD's, then CProp's from ``CPROP_BASE``.
LR, MOMENTUM, ONE_MINUS_DAMPENING, WEIGHT_DECAY = range(4)
CPROP_BASE = 4
SCALAR_COUNT = CPROP_BASE + CPROP_SCALAR_COUNT
#: Columns of the flag table.
HAS_WEIGHT_DECAY, HAS_MOMENTUM, FIRST_BUFFER, NESTEROV, CPROP, CDF = range(6)
FLAG_COUNT = 6
#: Rows of the state arena.
MOMENTUM_BUFFER, CPROP_M, CPROP_V = range(3)
FIELDS = ("momentum_buffer", "cprop_m", "cprop_v")


def sgd_scalars(group: dict) -> list[float]:
    """SGD's scalars, in double precision, in column order."""
    return [group["lr"], group["momentum"], 1.0 - group["dampening"], group["weight_decay"]]


@njit(error_model="numpy", cache=True)
def _direction_loop(p, g, direction, sc, has_wd):
    wd = sc[WEIGHT_DECAY]
    for j in range(p.size):
        direction[j] = g[j] + wd * p[j] if has_wd else g[j]


@njit(error_model="numpy", cache=True)
def _momentum_direction_loop(p, g, buffer, direction, sc, has_wd, first, nesterov):
    wd, momentum, one_minus_dampening = sc[WEIGHT_DECAY], sc[MOMENTUM], sc[ONE_MINUS_DAMPENING]
    for j in range(p.size):
        d = g[j] + wd * p[j] if has_wd else g[j]
        b = d if first else momentum * buffer[j] + one_minus_dampening * d
        buffer[j] = b
        direction[j] = d + momentum * b if nesterov else b


@njit(error_model="numpy", cache=True)
def _chunk(p, g, arena, off, lo, hi, sc, fl, direction, buf, single):
    count = hi - lo
    p = p[lo:hi]
    g = g[lo:hi]
    direction = direction[:count]
    buf = buf[:count]
    has_wd = fl[HAS_WEIGHT_DECAY] != 0
    if fl[HAS_MOMENTUM] != 0:
        momentum_buffer = arena[MOMENTUM_BUFFER, off + lo : off + hi]
        _momentum_direction_loop(p, g, momentum_buffer, direction, sc, has_wd, fl[FIRST_BUFFER] != 0, fl[NESTEROV] != 0)
    else:
        _direction_loop(p, g, direction, sc, has_wd)
    lr = sc[LR]
    if fl[CPROP] != 0:
        cm = arena[CPROP_M, off + lo : off + hi]
        cv = arena[CPROP_V, off + lo : off + hi]
        cprop_z_loop(g, cm, cv, cm, cv, buf, sc, CPROP_BASE, True, True)
        scale_loop(buf, count, sc, CPROP_BASE, fl[CDF], single)
        zero = sc[CPROP_BASE + C_ZERO]
        for j in range(count):
            # scale.scale_update: a scale of 0 is no update, also where the direction is inf.
            s = buf[j]
            p[j] = p[j] - lr * (zero if s == zero else direction[j] * s)
    else:
        for j in range(count):
            p[j] = p[j] - lr * direction[j]


@njit(error_model="numpy", cache=True)
def _chunks(first, last, p_addr, g_addr, sizes, offsets, arena, chunk_tensor, chunk_lo, chunk_hi, sc, fl, single):
    direction = np.empty(CHUNK, arena.dtype)
    buf = np.empty(CHUNK, arena.dtype)
    for c in range(first, last):
        k = chunk_tensor[c]
        p = array_at(p_addr[k], sizes[k], arena)
        g = array_at(g_addr[k], sizes[k], arena)
        _chunk(p, g, arena, offsets[k], chunk_lo[c], chunk_hi[c], sc[k], fl[k], direction, buf, single)


@njit(error_model="numpy", cache=True)
def sgd_one(p, g, arena, off, sc, fl, single, check_finite):
    """One step of one small tensor (``p``, ``g`` 1-D) on the calling thread. With
    ``check_finite``, a gradient with a NaN or inf changes nothing and returns False."""
    if check_finite and not finite(g):
        return False
    direction = np.empty(CHUNK, arena.dtype)
    buf = np.empty(CHUNK, arena.dtype)
    for lo in range(0, p.size, CHUNK):
        _chunk(p, g, arena, off, lo, min(lo + CHUNK, p.size), sc, fl, direction, buf, single)
    return True


@njit(error_model="numpy", cache=True)
def sgd_serial(p_addr, g_addr, sizes, offsets, arena, chunk_tensor, chunk_lo, chunk_hi, sc, fl, single, check_finite):
    """One step of every listed tensor on the calling thread (small totals); with
    ``check_finite``, any NaN or inf gradient changes nothing and returns False."""
    n = chunk_tensor.size
    if check_finite and not chunks_finite(0, n, g_addr, sizes, arena, chunk_tensor, chunk_lo, chunk_hi):
        return False
    _chunks(0, n, p_addr, g_addr, sizes, offsets, arena, chunk_tensor, chunk_lo, chunk_hi, sc, fl, single)
    return True


@njit(error_model="numpy", cache=True, parallel=True)
def sgd_parallel(
    p_addr, g_addr, sizes, offsets, arena, chunk_tensor, chunk_lo, chunk_hi, sc, fl, single, check_finite, workers
):
    """As :func:`sgd_serial`, the chunks split into ``workers`` contiguous runs."""
    n = chunk_tensor.size
    if check_finite:
        bad = np.zeros(workers, np.bool_)
        for w in prange(workers):
            first, last = w * n // workers, (w + 1) * n // workers
            bad[w] = not chunks_finite(first, last, g_addr, sizes, arena, chunk_tensor, chunk_lo, chunk_hi)
        if bad.any():
            return False
    for w in prange(workers):
        first, last = w * n // workers, (w + 1) * n // workers
        _chunks(first, last, p_addr, g_addr, sizes, offsets, arena, chunk_tensor, chunk_lo, chunk_hi, sc, fl, single)
    return True
