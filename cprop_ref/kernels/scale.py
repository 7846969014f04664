"""The CProp scale, element by element, as the fused kernels evaluate it.

Each function follows one function of :mod:`cprop_ref.scale`, in the array's dtype ``T``
with the scalars already rounded to ``T`` (as NumPy rounds a Python float): the moments
are the reference's to the bit; ``z`` divides by multiplying with reciprocals; the CDF
enters as ``|F(z) - 1/2|``, evaluated by :mod:`.vector_math` in double precision and
rounded once to ``T``, or for float32 tensors in float32 throughout. Every difference is within the tolerance policy. The scalar table of a tensor holds, at the column offsets below,
the values :func:`cprop_scalars` computes.
"""

from __future__ import annotations

import math
from typing import NamedTuple

import numpy as np
from numba import njit, types
from numba.extending import overload

from ..cdf import BFO_LINEAR, BFT_CUBIC, BFT_LINEAR, CDF_NAMES, LOGISTIC_SLOPE
from ..scale import bias_correction, degrees_of_freedom
from . import KERNEL_CDF_NAMES
from .columns import column_count, column_numbers
from .vector_math import SQRT_HALF, erf_double, erf_float32, tanh_half_double, tanh_half_float32
from .wide import prefer_wide_vectors

#: The CDFs' constants and 1/2 in float32, for the float32 lanes of ``_conformity_loop``
#: (a Python float would promote every lane to float64).
BFT_CUBIC_F32 = np.float32(BFT_CUBIC)
BFT_LINEAR_F32 = np.float32(BFT_LINEAR)
BFO_LINEAR_F32 = np.float32(BFO_LINEAR)
LOGISTIC_SLOPE_F32 = np.float32(LOGISTIC_SLOPE)
HALF_F32 = np.float32(0.5)
SQRT_HALF_F32 = np.float32(SQRT_HALF)


class CdfCodes(dict):
    """``{cdf name: integer code}``; looking up a CDF without kernel code is a ``ValueError``
    naming it (a plain ``dict`` would raise a bare ``KeyError`` deep inside a step)."""

    def __missing__(self, cdf: object) -> int:
        raise ValueError(
            f"cdf={cdf!r} has no Numba kernel (cprop_ref/kernels knows {', '.join(self)}); "
            "use backend='numpy' or add its element functions (docs/algorithm.md, \"Adding a CDF\")"
        )


def check_kernel_cdfs(cdf_names: tuple[str, ...]) -> None:
    """Every CDF of ``cdf_names`` (the reference's registry) must have kernel code here:
    ``NotImplementedError`` naming the ones that do not. Checked when this module is imported,
    that is before the first step of ``backend="numba"``."""
    missing = [name for name in cdf_names if name not in KERNEL_CDF_NAMES]
    if missing:
        raise NotImplementedError(
            f"the Numba kernels have no code for cdf {', '.join(map(repr, missing))} (registered in "
            "cprop_ref/cdf.py): add its float32 and float64 element functions and its branch in "
            "half_conformity and _conformity_loop to cprop_ref/kernels/scale.py, its name to "
            "KERNEL_CDF_NAMES in cprop_ref/kernels/__init__.py "
            '(docs/algorithm.md, "Adding a CDF")'
        )


check_kernel_cdfs(CDF_NAMES)

#: Integer codes of the CDFs, in ``KERNEL_CDF_NAMES`` order.
CDF_CODES: CdfCodes = CdfCodes({name: code for code, name in enumerate(KERNEL_CDF_NAMES)})
NORMAL, BFT, BFO, LOGISTIC = (CDF_CODES[name] for name in ("normal", "bft", "bfo", "logistic"))


class CPropScalars(NamedTuple):
    """CProp's scalars of a tensor's ``t``-th gradient, in a kernel's scalar table after the
    optimizer's own columns (double precision here; the table rounds them once to the dtype)."""

    beta: float
    one_minus_beta: float
    #: ``1 / (1 - beta^t)``.
    inv_bias: float
    #: ``1 / (n - 1 + eps)``, ``inf`` for ``0``.
    inv_denominator: float
    #: 1 when ``n - 1 = 0`` (one sample: the variance term is 0), else 0.
    one_sample: float
    eps: float
    two_c: float
    one: float
    zero: float
    infinity: float
    #: The dtype's largest finite value, to which an overflowed ``m_hat`` is clamped.
    largest: float


#: Columns of CProp's scalars, counted from the first of them (a kernel adds its ``CPROP_BASE``).
_C = column_numbers(CPropScalars)
C_BETA = _C.beta
C_ONE_MINUS_BETA = _C.one_minus_beta
C_INV_BIAS = _C.inv_bias
C_INV_DENOMINATOR = _C.inv_denominator
C_ONE_SAMPLE = _C.one_sample
C_EPS = _C.eps
C_TWO_C = _C.two_c
C_ONE = _C.one
C_ZERO = _C.zero
C_INFINITY = _C.infinity
C_LARGEST = _C.largest
CPROP_SCALAR_COUNT = column_count(CPropScalars)
#: The CProp columns of a family member without CProp (its kernels never read them).
NO_CPROP_SCALARS = CPropScalars(*([0.0] * CPROP_SCALAR_COUNT))


def cprop_scalars(beta: float, c: float, eps: float, t: int, largest: float) -> CPropScalars:
    """CProp's scalars for a tensor's ``t``-th gradient, in double precision (:class:`CPropScalars`).

    ``inv_bias`` is ``1 / (1 - beta^t)``, ``inv_denominator`` is ``1 / (n - 1 + eps)``
    (``inf`` for ``0``), ``one_sample`` is 1 when ``n - 1 = 0``: one sample, the
    variance term is 0 (:func:`cprop_ref.scale.standard_error`). ``largest`` is the dtype's
    largest finite value, to which an overflowed ``m_hat`` is clamped.
    """
    dof = degrees_of_freedom(beta, t)
    denominator = dof + eps
    return CPropScalars(
        beta=beta,
        one_minus_beta=1.0 - beta,
        inv_bias=1.0 / bias_correction(beta, t),
        inv_denominator=1.0 / denominator if denominator > 0.0 else math.inf,
        one_sample=1.0 if dof == 0.0 else 0.0,
        eps=eps,
        two_c=2.0 * c,
        one=1.0,
        zero=0.0,
        infinity=math.inf,
        largest=largest,
    )


@njit(error_model="numpy", cache=True)
def fill_cprop_scalars(beta, c, eps, beta_t, beta_t_minus_1, largest, out, base):
    """:func:`cprop_scalars` inside Numba, written into ``out[base:]`` (rounded to its dtype):
    the same double-precision operations in the same order, so the same numbers to the bit.
    The powers ``beta**t`` and ``beta**(t-1)`` come from Python (Numba's ``pow`` is not the
    C library's to the last bit)."""
    bias = 1.0 - beta_t
    dof = beta * (1.0 - beta_t_minus_1) / (1.0 - beta)
    denominator = dof + eps
    out[base + C_BETA] = beta
    out[base + C_ONE_MINUS_BETA] = 1.0 - beta
    out[base + C_INV_BIAS] = 1.0 / bias
    out[base + C_INV_DENOMINATOR] = 1.0 / denominator if denominator > 0.0 else math.inf
    out[base + C_ONE_SAMPLE] = 1.0 if dof == 0.0 else 0.0
    out[base + C_EPS] = eps
    out[base + C_TWO_C] = 2.0 * c
    out[base + C_ONE] = 1.0
    out[base + C_ZERO] = 0.0
    out[base + C_INFINITY] = math.inf
    out[base + C_LARGEST] = largest


@njit(error_model="numpy", cache=True)
def ema(old, new, beta, one_minus_beta):
    """``beta * old + (1 - beta) * new`` with the scalars already in the dtype."""
    return beta * old + one_minus_beta * new


@njit(error_model="numpy", cache=True)
def cprop_ema(old, new, beta, one_minus_beta):
    """CProp's moment update (``scale.update_moments``): as :func:`ema`, but ``beta = 0``
    keeps no memory at all (``0 * old`` would be NaN where ``old`` overflowed to inf)."""
    return one_minus_beta * new if beta == 0 else beta * old + one_minus_beta * new


@njit(error_model="numpy", cache=True)
def nan_maximum(a, b):
    """``np.maximum``: NaN if either is NaN."""
    if a != a or b != b:
        return a + b
    return a if a >= b else b


@njit(error_model="numpy", cache=True)
def standardized(m, v, inv_bias, inv_denominator, one_sample, eps, zero, infinity, largest):
    """``z = -m_hat / se`` from the moments (``scale.cprop_scale`` up to the CDF).

    All arguments are of the array's dtype. ``m / b`` and ``var / (n - 1 + eps)`` are
    multiplications by the reciprocals (one more rounding each, which the tolerance policy's
    ``2u |m_hat|`` and ``3u se`` terms cover); ``one_sample`` (1 or 0) marks ``n - 1 = 0``,
    where the variance term is 0 exactly. Selects only, so that the loop vectorises.
    """
    m_hat = m * inv_bias
    # Finite moments whose m_hat overflowed: clamped to the largest finite value (the reference).
    m_hat = np.copysign(largest, m) if (math.isinf(m_hat) and not math.isinf(m)) else m_hat
    v_hat = v * inv_bias
    difference = v_hat - m_hat * m_hat
    # inf - inf where m_hat^2 overflowed too: the variance is +inf, as in the reference.
    difference = abs(v_hat) if (math.isinf(v_hat) and difference != difference) else difference
    variance = zero if difference < zero else difference
    root = np.sqrt(variance * inv_denominator)
    se = (zero if one_sample != zero else root) + eps
    degenerate = np.copysign(infinity, -m_hat)
    degenerate = zero if m_hat == zero else degenerate
    return degenerate if se == zero else -m_hat / se


@njit(error_model="numpy", cache=True)
def standardized_unguarded(m, v, inv_bias, inv_denominator, one_sample, eps, zero):
    """:func:`standardized` without its guards for the edges of the range: the same operations
    in the same order, so **the same value wherever this one is finite**; inf or NaN wherever
    the two may differ (``m_hat`` or ``m_hat^2`` overflowed, ``se = 0``, a non-finite moment).

    Proof by cases, with ``z`` the guarded value: an overflowed ``m_hat`` makes the variance 0
    or NaN, hence ``-m_hat / se`` infinite or NaN; ``v_hat = inf`` with a finite ``m_hat^2``
    gives ``se = inf`` on both sides (the same ``-m_hat / inf``), and with ``m_hat^2 = inf``
    a NaN variance here; ``se = 0`` gives ``+-inf`` or ``0 / 0`` here. Otherwise every
    operation is the guarded one. The one loops use it in the fast path and redo the rare
    elements where it is not finite with :func:`standardized` (``adam._cprop_adam_edges``, ``sgd._cprop_sgd_edges``).
    """
    m_hat = m * inv_bias
    difference = v * inv_bias - m_hat * m_hat
    variance = zero if difference < zero else difference
    root = np.sqrt(variance * inv_denominator)
    se = (zero if one_sample != zero else root) + eps
    return -m_hat / se


# |F(z) - 1/2| element by element, one function per CDF and precision. |q| is odd in z, so
# the conformity needs |z| only. For float32 everything runs in float32 lanes (q rounded in
# float32: relative error <= 5u for bft's cubic, 2u for a slope; the bound in h is derived in
# docs/design/kernels.md), and so does the normal's erf; for float64 in double precision.


@njit(error_model="numpy", cache=True)
def half_bft_float32(z):
    """``|F(z) - 1/2|`` of ``bft`` for a float32 ``z``, in float32 lanes.

    ``q = |z| (C3 z^2 + C1)``: two products fewer than ``C3 |z|^3 + C1 |z|``, the same bound
    on its rounding (relative ``5u``: the constants, ``z^2``, ``C3 z^2``, the sum of two
    positive terms and the last product; ``docs/design/kernels.md``)."""
    z = abs(np.float32(z))
    return HALF_F32 * tanh_half_float32(z * (BFT_CUBIC_F32 * (z * z) + BFT_LINEAR_F32))


@njit(error_model="numpy", cache=True)
def half_bfo_float32(z):
    """``|F(z) - 1/2|`` of ``bfo`` for a float32 ``z``, in float32 lanes."""
    return HALF_F32 * tanh_half_float32(BFO_LINEAR_F32 * np.float32(z))


@njit(error_model="numpy", cache=True)
def half_logistic_float32(z):
    """``|F(z) - 1/2|`` of ``logistic`` for a float32 ``z``, in float32 lanes."""
    return HALF_F32 * tanh_half_float32(LOGISTIC_SLOPE_F32 * np.float32(z))


@njit(error_model="numpy", cache=True)
def half_normal_float32(z):
    """``|F(z) - 1/2|`` of ``normal`` for a float32 ``z``, in float32 lanes."""
    return HALF_F32 * erf_float32(abs(np.float32(z)) * SQRT_HALF_F32)


@njit(error_model="numpy", cache=True)
def half_bft_double(z):
    """``|F(z) - 1/2|`` of ``bft`` in double precision."""
    z = abs(z)
    return 0.5 * tanh_half_double(BFT_CUBIC * (z * z * z) + BFT_LINEAR * z)


@njit(error_model="numpy", cache=True)
def half_bfo_double(z):
    """``|F(z) - 1/2|`` of ``bfo`` in double precision."""
    return 0.5 * tanh_half_double(BFO_LINEAR * z)


@njit(error_model="numpy", cache=True)
def half_logistic_double(z):
    """``|F(z) - 1/2|`` of ``logistic`` in double precision."""
    return 0.5 * tanh_half_double(LOGISTIC_SLOPE * z)


@njit(error_model="numpy", cache=True)
def half_normal_double(z):
    """``|F(z) - 1/2|`` of ``normal`` in double precision (a scalar call of the C library's erf)."""
    return 0.5 * erf_double(abs(z) * SQRT_HALF)


# The same functions chosen by the type of z (float32 or float64) and by a CDF *marker*, a tuple
# whose length is the CDF's code: the length is a constant of the marker's type, so a kernel
# given a marker is compiled once per CDF with the other CDFs' code folded away (a loop then
# vectorises), and stays generic over both precisions. (A kernel that took the CDF as a
# function argument could not be cached by Numba.)

#: ``CDF_MARKERS[code]``: the marker of the CDF with that code (:data:`CDF_CODES`).
CDF_MARKERS = tuple((0,) * code for code in range(len(KERNEL_CDF_NAMES)))


def _half_bft(z):  # pragma: no cover - a stub; Numba calls the overload below
    raise NotImplementedError


def _half_bfo(z):  # pragma: no cover
    raise NotImplementedError


def _half_logistic(z):  # pragma: no cover
    raise NotImplementedError


def _half_normal(z):  # pragma: no cover
    raise NotImplementedError


def _overload_by_precision(stub, single, double) -> None:
    @overload(stub)
    def implementation(z):  # pragma: no cover - runs at Numba's typing time
        # The chosen function's Python source, compiled in place (a closure over a
        # dispatcher would keep the kernels that use it out of Numba's cache).
        return (single if z == types.float32 else double).py_func


_overload_by_precision(_half_bft, half_bft_float32, half_bft_double)
_overload_by_precision(_half_bfo, half_bfo_float32, half_bfo_double)
_overload_by_precision(_half_logistic, half_logistic_float32, half_logistic_double)
_overload_by_precision(_half_normal, half_normal_float32, half_normal_double)


@njit(error_model="numpy", cache=True)
def half_conformity(cdf_marker, z):
    """``|F(z) - 1/2|`` of the CDF of ``cdf_marker`` (:data:`CDF_MARKERS`) in the precision of ``z``."""
    code = len(cdf_marker)
    if code == BFT:
        return _half_bft(z)
    if code == BFO:
        return _half_bfo(z)
    if code == LOGISTIC:
        return _half_logistic(z)
    if code == NORMAL:
        return _half_normal(z)
    # Never the normal's code for a marker it does not know (the code is a constant of the
    # marker's type, so the compiled loop of a known CDF has no trace of this branch).
    raise ValueError("half_conformity: a CDF marker without kernel code")


@njit(error_model="numpy", cache=True)
def cprop_constants(scalars, base):
    """CProp's scalars of a kernel's scalar table from column ``base`` (:func:`cprop_scalars`),
    as one tuple in column order: ``beta, 1 - beta, 1 / (1 - beta^t), 1 / (n - 1 + eps),
    one_sample, eps, 2c, 1, 0, inf, largest``."""
    return (
        scalars[base + C_BETA],
        scalars[base + C_ONE_MINUS_BETA],
        scalars[base + C_INV_BIAS],
        scalars[base + C_INV_DENOMINATOR],
        scalars[base + C_ONE_SAMPLE],
        scalars[base + C_EPS],
        scalars[base + C_TWO_C],
        scalars[base + C_ONE],
        scalars[base + C_ZERO],
        scalars[base + C_INFINITY],
        scalars[base + C_LARGEST],
    )


@njit(error_model="numpy", cache=True)
def edge_scale(cdf_marker, m, v, constants):
    """For the edge pass of the one loops, one element: whether its unguarded ``z``
    (:func:`standardized_unguarded`) is not finite, so that the fast path left its parameter,
    and its scale ``min(2c |F(z) - 1/2|, 1)`` with the guarded ``z`` (:func:`standardized`).
    ``constants`` is :func:`cprop_constants`'s tuple."""
    _, _, inv_bias, inv_denominator, one_sample, eps, two_c, one, zero, infinity, largest = constants
    unguarded = standardized_unguarded(m, v, inv_bias, inv_denominator, one_sample, eps, zero)
    z = standardized(m, v, inv_bias, inv_denominator, one_sample, eps, zero, infinity, largest)
    x = two_c * half_conformity(cdf_marker, z)
    return not (abs(unguarded) < infinity), (one if x > one else x)


@njit(error_model="numpy", cache=True)
def _conformity_loop(buffer, count, cdf):
    # One loop per CDF so that each is a straight SIMD loop over the cache-resident chunk; the
    # element functions are chosen by the buffer's dtype (float32 lanes for float32).
    prefer_wide_vectors()
    if cdf == BFT:
        for j in range(count):
            buffer[j] = _half_bft(buffer[j])
    elif cdf == BFO:
        for j in range(count):
            buffer[j] = _half_bfo(buffer[j])
    elif cdf == LOGISTIC:
        for j in range(count):
            buffer[j] = _half_logistic(buffer[j])
    elif cdf == NORMAL:
        for j in range(count):
            buffer[j] = _half_normal(buffer[j])
    else:
        raise ValueError("scale_in_place: a CDF code without kernel code")


@njit(error_model="numpy", cache=True)
def scale_in_place(buffer, count, cdf, two_c, one):
    """Replace ``z`` by the scale ``s = min(2 c |F(z) - 1/2|, 1)`` in ``buffer[:count]``.

    ``|F - 1/2|`` is computed directly (half the conformity of :mod:`.vector_math`) in double
    precision and rounded once to the dtype; then ``2c`` times it, capped at 1, in the dtype
    as the reference does (NaN propagates as ``np.minimum`` does); for float32 buffers in
    float32 lanes throughout.
    """
    _conformity_loop(buffer, count, cdf)
    for j in range(count):
        x = two_c * buffer[j]
        buffer[j] = one if x > one else x
