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

The algorithms need IEEE rounding of each operation and each value computed once. XLA's
algebraic simplifier rewrites ``(a + b) - a`` to ``b`` even in floating point, which would
erase every error term, and its fusion recomputes a value in each place it is used, where the
vectorised CPU code may fuse a product and a sum into a multiply-add in one place and not in
another (then ``s = a + b`` and ``b - (s - a)`` see two different ``b``). The operands and
the result of every error-free sum therefore pass through ``jax.lax.optimization_barrier``,
which XLA neither looks through nor duplicates; the split of a significand into halves is a
bit mask, which no compiler can fuse. A multiply-add in place of ``ah * bh - p`` only makes an
error term exact too.
"""

from __future__ import annotations

from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

#: Masks that keep the sign, the exponent and the leading 12 (float32) / 26 (float64) bits of
#: the significand: the two halves of a number then multiply exactly.
_HALF_MASKS = {
    np.dtype(np.float32): (jnp.uint32, np.uint32(0xFFFFF000)),
    np.dtype(np.float64): (jnp.uint64, np.uint64(0xFFFFFFFFF8000000)),
}

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


def _opaque(x: Any) -> Any:
    """``x``, hidden from XLA's simplifier and computed once (see the module docstring)."""
    return jax.lax.optimization_barrier(x)


def _two_sum(a: jax.Array, b: jax.Array) -> Pair:
    """``a + b = s + e`` exactly (Knuth), whatever the magnitudes."""
    a, b = _opaque((a, b))
    s = _opaque(a + b)
    bb = s - a
    return Pair(s, (a - (s - bb)) + (b - bb))


def _fast_two_sum(a: jax.Array, b: jax.Array) -> Pair:
    """``a + b = s + e`` exactly for ``|a| >= |b|`` (Dekker)."""
    a, b = _opaque((a, b))
    s = _opaque(a + b)
    return Pair(s, b - (s - a))


def _split(a: jax.Array) -> Pair:
    """``a = hi + lo`` with ``hi`` the leading half of ``a``'s significand, cut off by a bit mask
    (exact; Veltkamp's ``c - (c - a)`` with ``c = 4097 a`` is not, where the compiler fuses
    ``c - a`` into a multiply-add, as XLA's vectorised CPU code does)."""
    bits, mask = _HALF_MASKS[np.dtype(a.dtype)]
    hi = jax.lax.bitcast_convert_type(jax.lax.bitcast_convert_type(a, bits) & mask, a.dtype)
    return Pair(hi, a - hi)


def _two_prod(a: jax.Array, b: jax.Array) -> Pair:
    """``a * b`` as a pair, from the four products of the halves of ``a`` and ``b``, each exact:
    no rounded product is ever added to anything, so a compiler that fuses a product into a
    multiply-add, in one place and not in another, computes the same numbers."""
    ah, al = _split(a)
    bh, bl = _split(b)
    s, e = _two_sum(ah * bh, ah * bl)
    s, e2 = _two_sum(s, al * bh)
    return _fast_two_sum(s, (e + e2) + al * bl)


def add(a: Pair, b: Pair) -> Pair:
    s, e = _two_sum(a.hi, b.hi)
    return _fast_two_sum(s, e + (a.lo + b.lo))


def neg(a: Pair) -> Pair:
    return Pair(-a.hi, -a.lo)


def mul(a: Pair, b: Pair) -> Pair:
    # The cross terms are rounded products; fused or not they are good to u^2 of the result,
    # and _fast_two_sum's pair holds whichever value it was given.
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


def one_minus_powers(bases: list[float], exponents: list[jax.Array], dtype: np.dtype) -> Pair:
    """``1 - base_i^t_i`` for each pair, in one loop (one ``while`` in the compiled program):
    no cancellation, since ``base^t`` carries twice the dtype's digits."""
    hi = jnp.stack([constant(b, dtype).hi for b in bases])
    lo = jnp.stack([constant(b, dtype).lo for b in bases])
    t = jnp.stack([jnp.asarray(e, jnp.int32) for e in exponents])
    return add(constant(1.0, dtype), neg(power(Pair(hi, lo), t)))


def _item(x: Pair, i: int) -> Pair:
    return Pair(x.hi[i], x.lo[i])


# -- the factors of a step (the reference's cprop_ref.scale and functional, in pairs) ----------


def _scale_pairs(beta: float, t: jax.Array, eps: float, dtype: np.dtype) -> tuple[Pair, Pair]:
    """``1 - beta^t`` and ``n - 1 + eps = beta (1 - beta^(t-1)) / (1 - beta) + eps`` as pairs."""
    both = one_minus_powers([beta, beta], [t, t - 1], dtype)
    dof = div(mul(constant(beta, dtype), _item(both, 1)), constant(1.0 - beta, dtype))
    return _item(both, 0), add(dof, constant(eps, dtype))


def scale_factors(beta: float, t: jax.Array, eps: float, dtype: np.dtype) -> tuple[jax.Array, jax.Array]:
    """``b = 1 - beta^t`` and ``n - 1 + eps = beta (1 - beta^(t-1)) / (1 - beta) + eps``, each
    rounded once to ``dtype`` (the latter exactly ``eps`` where ``t = 1`` or ``beta = 0``)."""
    b, denominator = _scale_pairs(beta, t, eps, np.dtype(dtype))
    return b.hi, denominator.hi


def scale_reciprocals(beta: float, t: jax.Array, eps: float, dtype: np.dtype) -> tuple[jax.Array, jax.Array]:
    """``1 / (1 - beta^t)`` and ``1 / (n - 1 + eps)`` (see :func:`scale_factors`), each rounded
    once to ``dtype``: the scale multiplies by them, one rounding where a division has one too."""
    dtype = np.dtype(dtype)
    b, denominator = _scale_pairs(beta, t, eps, dtype)
    one = constant(1.0, dtype)
    return div(one, b).hi, div(one, denominator).hi


def bias_correction(beta: float, t: jax.Array, dtype: np.dtype) -> jax.Array:
    """``b = 1 - beta^t`` rounded once to ``dtype``."""
    return _item(one_minus_powers([beta], [t], np.dtype(dtype)), 0).hi


def adam_factors(
    lr: jax.Array | float, beta1: float, beta2: float, t: jax.Array, dtype: np.dtype
) -> tuple[jax.Array, jax.Array]:
    """Adam's ``lr / (1 - beta1^t)`` and ``sqrt(1 - beta2^t)``, each rounded once to ``dtype``
    (``lr`` a Python float, or a traced scalar from a schedule, taken as exact)."""
    dtype = np.dtype(dtype)
    rate = constant(lr, dtype) if isinstance(lr, float) else exact(jnp.asarray(lr, dtype))
    both = one_minus_powers([beta1, beta2], [t, t], dtype)
    return div(rate, _item(both, 0)).hi, sqrt(_item(both, 1)).hi
