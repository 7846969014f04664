"""The scalar factors of a step (``1 - beta^t``, ``n - 1``, Adam's step size), exact to the
last bit inside ``jax.jit``, in float32 as well as float64.

The NumPy reference computes these in double precision and rounds them once to the array's
dtype (``docs/algorithm.md``, "Precision"). Inside a jitted JAX function the step count is a
traced int32, and without ``jax_enable_x64`` there is no float64: ``1 - beta**t`` evaluated in
float32 would round ``beta`` first (0.999 becomes 0.99900001) and then cancel, an error of
~6e-5 relative at ``t = 1``, two thousand times the tolerance. Here every factor is carried as
an unevaluated sum of two numbers of the working dtype (``hi + lo``, "float-float"/
"double-double" arithmetic, Dekker 1971), which holds about twice the dtype's digits; the
result is ``hi``, the factor rounded (to within a fraction of an ulp) once to the dtype.

The algorithms need IEEE rounding of each operation and no reassociation. XLA's algebraic
simplifier rewrites ``(a + b) - a`` to ``b`` even in floating point, which would erase every
error term; each rounded result whose error is recovered therefore passes through
``jax.lax.optimization_barrier``, which XLA does not look through. A fused multiply-add in
place of ``a * b - p`` only makes the error terms exact too.
"""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

#: ``2^ceil(p/2) + 1``: splits a number of ``p`` significant bits into two halves whose
#: products are exact (Veltkamp).
_SPLITTERS = {np.dtype(np.float32): 4097.0, np.dtype(np.float64): 134217729.0}

#: The largest exponent a step count can have (int32): that many squarings cover any ``t``.
_COUNT_BITS = 31


class Pair(NamedTuple):
    """The number ``hi + lo`` with ``|lo| <= ulp(hi) / 2`` (after normalisation)."""

    hi: jax.Array
    lo: jax.Array


def constant(x: float, dtype: np.dtype) -> Pair:
    """A Python float (a double) as a pair of ``dtype``: exact for float32 (48 bits hold 53
    bits' worth of a double to within 2^-48 relative) and for float64 (``lo = 0``)."""
    hi = np.asarray(x, dtype)
    return Pair(jnp.asarray(hi), jnp.asarray(np.asarray(x - float(hi), dtype)))


def exact(x: jax.Array) -> Pair:
    """A number of the working dtype as a pair (``lo = 0``)."""
    return Pair(x, jnp.zeros_like(x))


def _opaque(x: jax.Array) -> jax.Array:
    """``x``, hidden from XLA's simplifier (see the module docstring)."""
    return jax.lax.optimization_barrier(x)


def _two_sum(a: jax.Array, b: jax.Array) -> Pair:
    """``a + b = s + e`` exactly (Knuth), whatever the magnitudes."""
    s = _opaque(a + b)
    bb = s - a
    return Pair(s, (a - (s - bb)) + (b - bb))


def _fast_two_sum(a: jax.Array, b: jax.Array) -> Pair:
    """``a + b = s + e`` exactly for ``|a| >= |b|`` (Dekker)."""
    s = _opaque(a + b)
    return Pair(s, b - (s - a))


def _split(a: jax.Array) -> Pair:
    c = _opaque(jnp.asarray(_SPLITTERS[np.dtype(a.dtype)], a.dtype) * a)
    hi = _opaque(c - (c - a))
    return Pair(hi, a - hi)


def _two_prod(a: jax.Array, b: jax.Array) -> Pair:
    """``a * b = p + e`` exactly (Dekker), barring underflow."""
    p = _opaque(a * b)
    ah, al = _split(a)
    bh, bl = _split(b)
    return Pair(p, ((ah * bh - p) + ah * bl + al * bh) + al * bl)


def add(a: Pair, b: Pair) -> Pair:
    s, e = _two_sum(a.hi, b.hi)
    return _fast_two_sum(s, e + (a.lo + b.lo))


def neg(a: Pair) -> Pair:
    return Pair(-a.hi, -a.lo)


def mul(a: Pair, b: Pair) -> Pair:
    p, e = _two_prod(a.hi, b.hi)
    return _fast_two_sum(p, e + (a.hi * b.lo + a.lo * b.hi))


def div(a: Pair, b: Pair) -> Pair:
    """``a / b`` (``b != 0``): a quotient and one correction from the remainder."""
    q1 = a.hi / b.hi
    r = add(a, neg(mul(exact(q1), b)))
    return _fast_two_sum(q1, r.hi / b.hi)


def sqrt(a: Pair) -> Pair:
    """``sqrt(a)`` for ``a >= 0``: the root of ``hi`` and one Newton correction."""
    s = jnp.sqrt(a.hi)
    safe = jnp.where(s > 0.0, s, jnp.ones_like(s))
    p, e = _two_prod(s, s)
    correction = (((a.hi - p) - e) + a.lo) / (2.0 * safe)
    fixed = _fast_two_sum(s, correction)
    return Pair(jnp.where(s > 0.0, fixed.hi, s), jnp.where(s > 0.0, fixed.lo, jnp.zeros_like(s)))


def power(base: Pair, t: jax.Array) -> Pair:
    """``base^t`` for an int32 ``t >= 0`` (traced), by repeated squaring: about 31 roundings
    of relative size ``u^2`` each, so the pair is good to far below one ulp of the dtype."""
    one = jnp.ones_like(base.hi)
    zero = jnp.zeros_like(base.hi)

    def body(_: int, carry: tuple[Pair, Pair, jax.Array]) -> tuple[Pair, Pair, jax.Array]:
        result, square, e = carry
        odd = (e & 1) == 1
        product = mul(result, square)
        result = Pair(jnp.where(odd, product.hi, result.hi), jnp.where(odd, product.lo, result.lo))
        return result, mul(square, square), e >> 1

    result, _, _ = jax.lax.fori_loop(0, _COUNT_BITS, body, (Pair(one, zero), base, jnp.asarray(t, jnp.int32)))
    return result


def one_minus_power(beta: Pair, t: jax.Array) -> Pair:
    """``1 - beta^t``: no cancellation, since ``beta^t`` carries twice the dtype's digits."""
    return add(constant(1.0, np.dtype(beta.hi.dtype)), neg(power(beta, t)))


# -- the factors of a CProp step (the reference's cprop_ref.scale, in pairs) ------------------


def bias_correction(beta: float, t: jax.Array, dtype: np.dtype) -> jax.Array:
    """``b = 1 - beta^t`` rounded once to ``dtype``."""
    return one_minus_power(constant(beta, dtype), t).hi


def degrees_of_freedom_plus(beta: float, t: jax.Array, eps: float, dtype: np.dtype) -> jax.Array:
    """``n - 1 + eps = beta (1 - beta^(t-1)) / (1 - beta) + eps`` rounded once to ``dtype``
    (exactly ``eps`` where ``t = 1`` or ``beta = 0``: one sample)."""
    b = constant(beta, dtype)
    dof = div(mul(b, one_minus_power(b, t - 1)), constant(1.0 - beta, dtype))
    return add(dof, constant(eps, dtype)).hi


def adam_factors(
    lr: jax.Array | float, beta1: float, beta2: float, t: jax.Array, dtype: np.dtype
) -> tuple[jax.Array, jax.Array]:
    """Adam's ``lr / (1 - beta1^t)`` and ``sqrt(1 - beta2^t)``, each rounded once to ``dtype``
    (``lr`` a Python float, or a traced scalar from a schedule, taken as exact)."""
    rate = constant(lr, dtype) if isinstance(lr, float) else exact(jnp.asarray(lr, dtype))
    step_size = div(rate, one_minus_power(constant(beta1, dtype), t))
    return step_size.hi, sqrt(one_minus_power(constant(beta2, dtype), t)).hi
