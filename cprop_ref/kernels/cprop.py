"""CProp's loops shared by every family's kernels: ``z``, the scale, the one loops' blocks.

The Adam family (:mod:`.adam`), the SGD family (:mod:`.sgd`) and the wrapper (:mod:`.wrapper`)
each import what they need from here (and the element functions from :mod:`.scale`), never
from one another: the kernels of one family can change without touching another's.
"""

from __future__ import annotations

import numpy as np
from numba import njit, types
from numba.extending import overload

from .scale import C_ONE, C_TWO_C, cprop_constants, cprop_ema, scale_in_place, standardized

#: Elements per chunk of the chunked stages: a chunk's scratch buffers stay in L1.
CHUNK = 2048


@njit(error_model="numpy", cache=True)
def cprop_z_loop(g, m_source, v_source, cm, cv, buf, scalars, base, private_m, private_v):
    """CProp's private moments (where not shared) and ``z`` into ``buf``; ``m_source`` and
    ``v_source`` are the arrays that hold ``m`` and ``v`` after the update."""
    beta, one_minus_beta, inv_bias, inv_denominator, one_sample, eps, _, _, zero, infinity, largest = cprop_constants(
        scalars, base
    )
    if private_m:
        for j in range(g.size):
            cm[j] = cprop_ema(cm[j], g[j], beta, one_minus_beta)
    if private_v:
        for j in range(g.size):
            cv[j] = cprop_ema(cv[j], g[j] * g[j], beta, one_minus_beta)
    for j in range(g.size):
        buf[j] = standardized(
            m_source[j], v_source[j], inv_bias, inv_denominator, one_sample, eps, zero, infinity, largest
        )


@njit(error_model="numpy", cache=True)
def scale_loop(buf, count, scalars, base, cdf):
    """``z`` in ``buf`` becomes the scale ``s`` (:func:`.scale.scale_in_place`)."""
    scale_in_place(buf, count, cdf, scalars[base + C_TWO_C], scalars[base + C_ONE])


#: Elements per block of the one loops. The fast path computes ``z`` without the guards for
#: the edges of the range (:func:`.scale.standardized_unguarded`); a block in which some element
#: met an edge has those elements redone with the guards, while the block is in cache.
EDGE_BLOCK = 2048
NO_EDGE = np.int32(0)
EDGE = np.int32(1)


def slice_or_none(array, lo, hi):  # pragma: no cover - a stub; Numba calls the overload below
    raise NotImplementedError


@overload(slice_or_none)
def _slice_or_none(array, lo, hi):
    """``array[lo:hi]``, and ``None`` for ``None`` (a moment shared with Adam's, or no
    momentum buffer)."""
    if isinstance(array, types.NoneType):
        return lambda array, lo, hi: None
    return lambda array, lo, hi: array[lo:hi]
