"""Exponentials and normal CDFs that LLVM can vectorise inside a Numba loop.

``math.exp`` and ``math.erfc`` inside a Numba loop are calls into the C library, one
element at a time, and they dominate a fused CProp step. The functions here are
straight-line arithmetic (a Cody-Waite range reduction, a Taylor polynomial in Horner
form, an exponent built from bits, selects instead of branches), so a loop over a
cache-resident chunk compiles to SIMD instructions. Most work in double precision and
the kernels round the result once to the array dtype; :func:`exp_float32` and
:func:`tanh_half_float32` work in float32 throughout, twice the lanes per vector, for the
CDFs of float32 tensors (:func:`erf_float32` for the normal).

Error bounds (derived in ``docs/design/kernels.md``, "Exponentials at vector speed", and
checked against mpmath in ``tests/test_kernels_vector_math.py``), for ``x <= 0``:

- :func:`exp_double` (degree 13): relative error below ``EXP_DOUBLE_BOUND_U`` units of
  ``2**-53`` for ``x >= -708``; below ``-708`` it returns ``exp(-708)`` (< 3.1e-308), an
  absolute error below 3.1e-308.
- :func:`exp_float32` (degree 7, float32 arithmetic): relative error below
  ``EXP_FLOAT32_BOUND_U`` units of ``2**-24`` for ``x >= -87``; below, ``exp(-87)``.
- :func:`tanh_half_float32`: absolute error below ``TANH_HALF_FLOAT32_BOUND_U`` units of ``2**-24``.
- :func:`erf_float32` (float32 arithmetic): absolute error below ``ERF_FLOAT32_BOUND_U`` units
  of ``2**-24``.

The CDFs enter the scale only through the *conformity* ``|2 F(z) - 1|`` (``s = min(c |2F - 1|, 1)``),
which for the logistic CDFs is ``tanh(|q| / 2)`` (:func:`tanh_half_double`) and for the normal
``erf(|z| / sqrt 2)``: no ``p - 0.5`` cancellation, one division.
"""

from __future__ import annotations

import math

import numpy as np
from numba import njit
from numba.extending import intrinsic

#: ln 2 split so that ``k * LN2_HI`` is exact for ``|k| < 2**11`` (fdlibm's constants).
LN2_HI = 6.93147180369123816490e-01
LN2_LO = 1.90821492927058770002e-10
LOG2_E = 1.4426950408889634
#: Below this argument the result would be subnormal; it is clamped here.
EXP_CLAMP = -708.0
#: Proven relative error bounds (see the module docstring).
EXP_DOUBLE_BOUND_U = 4.5
SQRT_HALF = 0.7071067811865476

#: float32 constants of :func:`exp_float32` (a Python float would promote the lanes to float64).
#: ``LN2_HI_F32`` has 9 significant bits, so ``k * LN2_HI_F32`` is exact for ``|k| < 2**15``;
#: ``LN2_HI_F32 + LN2_LO_F32`` is ln 2 to 1.7e-12 (Cephes' ``expf`` split).
LN2_HI_F32 = np.float32(0.693359375)
LN2_LO_F32 = np.float32(-2.12194440e-4)
LOG2_E_F32 = np.float32(1.4426950408889634)
#: Arguments below are clamped here: ``exp(-87) = 1.6e-38`` is still a normal float32.
EXP_CLAMP_F32 = np.float32(-87.0)
#: ``1.5 * 2**23 + 127``: added to ``x log2(e)`` it rounds to the nearest integer ``k`` and leaves
#: ``k + 127`` in the low mantissa bits (:func:`exp_float32`).
EXP_ROUNDER_F32 = np.float32(1.5 * 2**23 + 127)
#: Proven relative error bound of :func:`exp_float32` in units of float32's ``2**-24``.
EXP_FLOAT32_BOUND_U = 2.6
#: Proven absolute error bound of :func:`tanh_half_float32` in units of ``2**-24``:
#: ``EXP_FLOAT32_BOUND_U / 2`` (the error of ``e``) plus 3 roundings (``1 - e``, ``1 + e``, division).
TANH_HALF_FLOAT32_BOUND_U = EXP_FLOAT32_BOUND_U / 2.0 + 3.0
#: Proven absolute error bound of :func:`erf_float32` in units of ``2**-24`` (the larger of
#: its two branches, 4.15 and 3.41, derived in ``docs/design/kernels.md``).
ERF_FLOAT32_BOUND_U = 4.2
_TWO_OVER_SQRT_PI = 2.0 / math.sqrt(math.pi)
#: Taylor coefficients of ``erf(x) / x`` in ``x**2``, ``2/sqrt(pi) (-1)^n / (n! (2n + 1))``, float32.
_ERF_F32_TAYLOR = tuple(
    np.float32(_TWO_OVER_SQRT_PI * (-1) ** n / (math.factorial(n) * (2 * n + 1))) for n in range(10)
)
#: ``erfc(x)`` on [1, 4] as a polynomial of degree 14 in ``t = x - 2.5``, float32, highest power
#: first: a Chebyshev least-squares fit (6001 Chebyshev points of [1, 4], SciPy's ``erfc``) turned
#: into powers of ``t`` and rounded to float32. With the rounded coefficients evaluated exactly it
#: is within 0.17 u32 of ``erfc`` on [1, 4] (``docs/design/kernels.md``).
_ERFC_F32_POLYNOMIAL = tuple(
    np.float32(a)
    for a in reversed(
        (
            0.0004069523711223155,
            -0.002178184688091278,
            0.005445688497275114,
            -0.008351770229637623,
            0.008622604422271252,
            -0.006109108682721853,
            0.002797554712742567,
            -0.0005603614845313132,
            -0.00025873008416965604,
            0.0002706192899495363,
            -8.110049384413287e-05,
            -1.776065801095683e-05,
            1.571927896293346e-05,
            -4.985049599781632e-07,
            -8.901382102521893e-07,
        )
    )
)
#: Where the polynomial's interval ends: ``erfc(4) = 1.5e-8 < 2**-25``, so ``erf`` rounds to 1 in float32 beyond.
_ERF_F32_LARGEST = np.float32(4.0)
_ERF_F32_CENTRE = np.float32(2.5)
_ZERO_F32 = np.float32(0.0)
_HALF_F32 = np.float32(0.5)
_ONE_F32 = np.float32(1.0)


@intrinsic
def _reinterpret(typingctx, value, target):  # pragma: no cover - runs inside Numba
    """The bits of ``value`` read as a ``target`` (``np.float64``, ``np.int32``, ...) of the
    same width, as C's ``memcpy`` would: no conversion."""
    result_type = target.instance_type
    signature = result_type(value, target)

    def codegen(context, builder, sig, args):
        return builder.bitcast(args[0], context.get_value_type(result_type))

    return signature, codegen


@njit(error_model="numpy", cache=True, fastmath={"contract"})
def horner(coefficients, x):
    """The polynomial with ``coefficients`` (a tuple of one type, the highest power first) at
    ``x``, in Horner's form ``q = q x + c``; with FMA contraction allowed, each step may be one
    fused multiply-add (the error bounds of ``docs/design/kernels.md`` count two roundings per step,
    which covers both). Numba unrolls the loop over the tuple, so the caller's loop vectorises as
    if the steps were written out."""
    q = coefficients[0]
    for c in coefficients[1:]:
        q = q * x + c
    return q


#: Taylor coefficients ``1 / i!`` of :func:`exp_double`, ``i = 13`` down to 0.
_EXP_DOUBLE_TAYLOR = tuple(1.0 / math.factorial(i) for i in range(13, -1, -1))
#: Taylor coefficients ``1 / i!`` of :func:`exp_float32`, ``i = 7`` down to 0, rounded to float32.
_EXP_F32_TAYLOR = tuple(np.float32(1.0 / math.factorial(i)) for i in range(7, -1, -1))


@njit(error_model="numpy", cache=True)
def _power_of_two(k):
    """``2**k`` for an integer-valued float ``k`` in [-1022, 1023], built from its bits."""
    return _reinterpret((int(k) + 1023) << 52, np.float64)


@njit(error_model="numpy", cache=True)
def _reduce(x):
    """``x = k ln2 + r`` with ``|r| <= ln2 / 2`` (plus rounding); returns ``(k, r)``."""
    k = math.floor(x * LOG2_E + 0.5)
    r = (x - k * LN2_HI) - k * LN2_LO
    return k, r


@njit(error_model="numpy", cache=True, fastmath={"contract"})
def exp_double(x):
    """``exp(x)`` for ``x <= 0`` (NaN propagates), relative error below ``EXP_DOUBLE_BOUND_U`` ulp."""
    nan = x != x
    y = EXP_CLAMP if (x < EXP_CLAMP or nan) else x
    k, r = _reduce(y)
    # Taylor polynomial of degree 13: the remainder is below 0.08 ulp on |r| <= ln2 / 2.
    q = horner(_EXP_DOUBLE_TAYLOR, r)
    result = q * _power_of_two(k)
    return x if nan else result


@njit(error_model="numpy", cache=True, fastmath={"contract"})
def exp_float32(x):
    """``exp(x)`` for a float32 ``x <= 0``, computed in float32 lanes (16 per AVX-512 vector):
    relative error below ``EXP_FLOAT32_BOUND_U`` units of ``2**-24`` for ``x >= -87``; below
    ``-87`` it returns ``exp(-87)`` (< 1.7e-38), an absolute error below that. NaN propagates.

    Cody-Waite reduction ``x = k ln2 + r`` in float32 with Cephes' split of ln 2, the Taylor
    polynomial of degree 7 in Horner form, ``2**k`` built from its bits (``k >= -126``: a
    normal float32). The bound is derived in ``docs/design/kernels.md``.

    ``k`` is rounded to an integer by adding ``EXP_ROUNDER_F32`` (1.5 * 2**23 + 127): the sum
    lies in [2**23, 2**24), where float32 holds integers only, so it is ``k + 127 + 2**22 + 2**23``
    exactly, and its low mantissa bits are already ``k + 127``, the biased exponent of ``2**k``:
    shifted left by 23 they are the bits of ``2**k``. No float-to-integer conversion (which is
    undefined for NaN in LLVM, so NaN needed two selects around it) and no ``floor``: a NaN
    ``x`` makes ``r``, the polynomial and the result NaN by itself.
    """
    y = EXP_CLAMP_F32 if x < EXP_CLAMP_F32 else x  # NaN < c is false: NaN passes through
    shifted = y * LOG2_E_F32 + EXP_ROUNDER_F32
    k = shifted - EXP_ROUNDER_F32
    # y - k ln2_hi is exact (k ln2_hi is a multiple of 2**-9, of no more bits than y, and
    # |y - k ln2_hi| <= |y|); the one rounding is that of r itself.
    r = (y - k * LN2_HI_F32) - k * LN2_LO_F32
    q = horner(_EXP_F32_TAYLOR, r)
    # (an int32 shifted is typed int64 by Numba: truncated back, its low 32 bits)
    return q * _reinterpret(np.int32(_reinterpret(shifted, np.int32) << np.int32(23)), np.float32)


@njit(error_model="numpy", cache=True, fastmath={"contract"})
def tanh_half_float32(q):
    """``tanh(|q| / 2) = (1 - e) / (1 + e)``, ``e = exp(-|q|)``, all in float32 lanes for a
    float32 ``q``: absolute error below ``TANH_HALF_FLOAT32_BOUND_U`` units of ``2**-24``
    (``|d tanh / d e| * e <= 1/2`` times the relative error of ``e``, plus ``1 - e``, ``1 + e``
    and the division, each a relative ``2**-24`` of a result at most 1). NaN propagates,
    ``|q| = inf`` gives 1."""
    e = exp_float32(-abs(q))
    return (_ONE_F32 - e) / (_ONE_F32 + e)


_ERF_F32_TAYLOR_HIGHEST_FIRST = tuple(reversed(_ERF_F32_TAYLOR))


@njit(error_model="numpy", cache=True, fastmath={"contract"})
def erf_float32(x):
    """``erf(x)`` for a float32 ``x >= 0`` in float32 lanes: absolute error below
    ``ERF_FLOAT32_BOUND_U`` units of ``2**-24``. NaN propagates, ``x = inf`` gives 1.

    Both branches are evaluated and one selected (so that the loop vectorises): below 1 the
    Taylor series ``x P(x^2)`` of degree 19 (remainder below 1.5e-8); from 1 on ``1 - E(t)``, ``E``
    the degree-14 polynomial of ``erfc`` in ``t = min(x, 4) - 2.5`` (exact in float32), whose
    rounding errors are those of values below 0.16. Neither branch divides nor calls ``exp``.
    (Before: Press et al.'s ``1 - t exp(-x^2 + P(t))``, ``t = 1 / (1 + x / 2)``, a division and an
    exponential per element.)
    """
    s = x * x
    small = x * horner(_ERF_F32_TAYLOR_HIGHEST_FIRST, s)
    # NaN < 4 is false, so a NaN x stays NaN here and in every step below.
    t = (_ERF_F32_LARGEST if x > _ERF_F32_LARGEST else x) - _ERF_F32_CENTRE
    q = horner(_ERFC_F32_POLYNOMIAL, t)
    return small if x < _ONE_F32 else _ONE_F32 - q


@njit(error_model="numpy", cache=True, fastmath={"contract"})
def tanh_half_double(q):
    """``|2 expit(q) - 1| = tanh(|q| / 2) = (1 - e) / (1 + e)`` with ``e = exp(-|q|)``.

    The conformity ``|2 F - 1|`` of the logistic CDFs, without the cancellation of
    ``p - 0.5`` and with one division; NaN propagates, ``|q| = inf`` gives 1.
    """
    e = exp_double(-abs(q))
    return (1.0 - e) / (1.0 + e)


@njit(error_model="numpy", cache=True)
def erf_double(x):
    """``erf(x)`` in double precision through the C library (a scalar call)."""
    return math.erf(x)
