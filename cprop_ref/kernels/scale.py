"""The CProp scale, element by element, as the fused kernels evaluate it.

Each function mirrors one function of :mod:`cprop_ref.scale` operation for operation, in
the array's dtype ``T`` with the scalars already rounded to ``T`` (as NumPy rounds a Python
float), so the moments, ``m_hat``, the standard error and ``z`` are the reference's to the
bit. Only the CDF differs: it runs in double precision through :mod:`.vector_math` and is
rounded once to ``T``. The scalar table of a tensor holds, at the column offsets below,
the values :func:`cprop_scalars` computes.
"""

from __future__ import annotations

import math

import numpy as np
from numba import njit

from ..cdf import BFO_LINEAR, BFT_CUBIC, BFT_LINEAR, CDF_NAMES, LOGISTIC_SLOPE
from ..scale import bias_correction, degrees_of_freedom
from .vector_math import expit_double, expit_single, phi_double, phi_single

#: Integer codes of the CDFs, in ``CDF_NAMES`` order.
CDF_CODES: dict[str, int] = {name: code for code, name in enumerate(CDF_NAMES)}
NORMAL, BFT, BFO, LOGISTIC = (CDF_CODES[name] for name in ("normal", "bft", "bfo", "logistic"))

#: Columns of CProp's scalars in a kernel's scalar table, after the optimizer's own.
C_BETA, C_ONE_MINUS_BETA, C_BIAS, C_DENOMINATOR, C_EPS, C_TWO_C, C_HALF, C_ONE, C_ZERO, C_INFINITY = range(10)
CPROP_SCALAR_COUNT = 10


def cprop_scalars(beta: float, c: float, eps: float, t: int) -> list[float]:
    """CProp's scalars for a tensor's ``t``-th gradient, in double precision, in column order.

    ``C_DENOMINATOR`` is ``n - 1 + eps``; it is 0 exactly when ``n - 1 = 0``, which the
    kernel reads as "one sample: the variance term is 0" (:func:`cprop_ref.scale.standard_error`).
    """
    dof = degrees_of_freedom(beta, t)
    denominator = 0.0 if dof == 0.0 else dof + eps
    return [beta, 1.0 - beta, bias_correction(beta, t), denominator, eps, 2.0 * c, 0.5, 1.0, 0.0, math.inf]


@njit(error_model="numpy", cache=True)
def ema(old, new, beta, one_minus_beta):
    """``beta * old + (1 - beta) * new`` with the scalars already in the dtype."""
    return beta * old + one_minus_beta * new


@njit(error_model="numpy", cache=True)
def nan_maximum(a, b):
    """``np.maximum``: NaN if either is NaN."""
    if a != a or b != b:
        return a + b
    return a if a >= b else b


@njit(error_model="numpy", cache=True)
def standardized(m, v, bias, denominator, eps, zero, infinity):
    """``z = -m_hat / se`` from the moments (``scale.cprop_scale`` up to the CDF).

    All arguments are of the array's dtype; ``denominator`` is 0 for one sample (see
    :func:`cprop_scalars`). Written with selects only, so that the loop vectorises.
    """
    m_hat = m / bias
    v_hat = v / bias
    difference = v_hat - m_hat * m_hat
    # inf - inf where m_hat^2 overflowed too: the variance is +inf, as in the reference.
    difference = abs(v_hat) if (math.isinf(v_hat) and difference != difference) else difference
    variance = zero if difference < zero else difference
    root = np.sqrt(variance / denominator)
    se = (zero if denominator == zero else root) + eps
    degenerate = np.copysign(infinity, -m_hat)
    degenerate = zero if m_hat == zero else degenerate
    return degenerate if se == zero else -m_hat / se


@njit(error_model="numpy", cache=True)
def scale_from_probability(p, two_c, half, one):
    """``s = min(2 c |p - 0.5|, 1)``, NaN propagating as ``np.minimum`` does."""
    x = two_c * abs(p - half)
    return one if x > one else x


@njit(error_model="numpy", cache=True)
def _cdf_loop_single(buffer, count, cdf):
    # One loop per CDF so that each is a straight SIMD loop over the cache-resident chunk.
    if cdf == BFT:
        for j in range(count):
            z = np.float64(buffer[j])
            buffer[j] = expit_single(BFT_CUBIC * (z * z * z) + BFT_LINEAR * z)
    elif cdf == BFO:
        for j in range(count):
            buffer[j] = expit_single(BFO_LINEAR * np.float64(buffer[j]))
    elif cdf == LOGISTIC:
        for j in range(count):
            buffer[j] = expit_single(LOGISTIC_SLOPE * np.float64(buffer[j]))
    else:
        for j in range(count):
            buffer[j] = phi_single(np.float64(buffer[j]))


@njit(error_model="numpy", cache=True)
def _cdf_loop_double(buffer, count, cdf):
    if cdf == BFT:
        for j in range(count):
            z = np.float64(buffer[j])
            buffer[j] = expit_double(BFT_CUBIC * (z * z * z) + BFT_LINEAR * z)
    elif cdf == BFO:
        for j in range(count):
            buffer[j] = expit_double(BFO_LINEAR * np.float64(buffer[j]))
    elif cdf == LOGISTIC:
        for j in range(count):
            buffer[j] = expit_double(LOGISTIC_SLOPE * np.float64(buffer[j]))
    else:
        for j in range(count):
            buffer[j] = phi_double(np.float64(buffer[j]))


@njit(error_model="numpy", cache=True)
def cdf_in_place(buffer, count, cdf, single):
    """Replace ``z`` by ``p = F(z)`` in ``buffer[:count]``; ``single``: the dtype is float32."""
    if single:
        _cdf_loop_single(buffer, count, cdf)
    else:
        _cdf_loop_double(buffer, count, cdf)
