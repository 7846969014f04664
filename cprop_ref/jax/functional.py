"""CProp's statistics and scale, and the base updates it scales, on JAX arrays (``docs/algorithm.md``,
"One step"): pure functions of arrays, with the hyperparameters as Python values (static under
``jax.jit``), following the NumPy reference (``cprop_ref.scale``, ``cprop_ref.functional``):
the moments and Adam's update operation for operation, the scale in an equal form that XLA's CPU
backend compiles to one loop (``2 |F(z) - 1/2|`` as one ``tanh`` or ``erf``, products by the
reciprocals of the step's scalars; ``docs/jax.md``, "Speed"), within the tolerance policy.

Hyperparameters are Python floats, weak scalars in JAX as in NumPy: a float32 array stays
float32 and each constant is rounded once to it. The factors that depend on the step count
(``1 - beta^t``, ``n - 1``, Adam's step size) are computed exactly and rounded once
(:mod:`.scalars`), as the reference computes them in double precision. No Python branch looks at
a traced value: ``t`` and the arrays may be traced, jitted and vmapped.
"""

from __future__ import annotations

import math
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from ..cdf import BFO_LINEAR, BFT_CUBIC, BFT_LINEAR, CDF_NAMES, LOGISTIC_SLOPE
from . import scalars

#: ``1 / sqrt(2)``, the normal's ``|z|`` to ``erf``'s argument.
_INVERSE_SQRT2 = 1.0 / math.sqrt(2.0)
#: The float32 argument past which XLA's ``erf`` is taken as 1 (:func:`central_mass`).
ERF_FLOAT32_SATURATION = 3.6961677


def enable_x64() -> Any:
    """A context manager under which JAX computes in float64 (``jax.enable_x64(True)``; older
    JAX: ``jax.experimental.enable_x64()``); float64 parameters need it or ``jax_enable_x64``."""
    if hasattr(jax, "enable_x64"):
        return jax.enable_x64(True)
    from jax.experimental import enable_x64 as experimental_enable_x64  # older JAX

    return experimental_enable_x64()


def statistics_dtype(dtype: Any) -> np.dtype:
    """The dtype of the statistics and of the update for parameters of ``dtype``: float32 for
    float16 and bfloat16 (in 16 bits ``eps = 1e-8`` underflows and a zero gradient gives 0/0),
    the parameter's own otherwise."""
    dtype = jnp.dtype(dtype)
    return jnp.dtype(jnp.float32) if dtype in (jnp.dtype(jnp.float16), jnp.dtype(jnp.bfloat16)) else dtype


def ema(previous: jax.Array, value: jax.Array, beta: float) -> jax.Array:
    """``beta * previous + (1 - beta) * value``; a ``beta`` that is 0 in the dtype keeps no
    memory (written as ``0 * previous`` it would turn an overflowed square into NaN)."""
    if beta == 0.0 or np.dtype(previous.dtype).type(beta) == 0.0:
        return (1.0 - beta) * value
    return beta * previous + (1.0 - beta) * value


def update_moments(m: jax.Array, v: jax.Array, g: jax.Array, beta: float) -> tuple[jax.Array, jax.Array]:
    """``m <- beta m + (1 - beta) g``, ``v <- beta v + (1 - beta) g^2`` (gradient units, squared)."""
    return ema(m, g, beta), ema(v, g * g, beta)


def central_mass(abs_z: jax.Array, name: str) -> jax.Array:
    """``2 |F(z) - 1/2| = F(|z|) - F(-|z|)`` for the four CDFs (``cprop_ref.cdf``), from ``|z|``.

    The same number as the reference's ``2 |p - 0.5|`` with ``p = F(z)``, written without the
    cancellation of ``p - 0.5`` and with one transcendental function: for the logistic forms
    ``F = 1 / (1 + exp(-q))``, ``2 F - 1 = tanh(q / 2)`` (``q / 2`` from the halved constants,
    exactly half the reference's ``q``); for the normal ``2 Phi(|z|) - 1 = erf(|z| / sqrt(2))``.
    XLA's ``tanh`` and ``erf`` are within 5.2 ulp in float32 (measured over ``[-20, 20]``), within
    the tolerance policy's allowance for a CDF (``CDF_ERROR_ULPS``); both reach 1 at
    ``|z| = inf`` and keep NaN.

    In float32 XLA's ``erf`` (a rational approximation) rounds to 1 from ``x = 3.674``, exceeds 1
    by an ulp or two on ``[3.6962414, 3.8325036]`` and falls back to ``1 - 4 ulp`` beyond; its
    argument is clamped at ``3.6961677``, the last point below that range where it is 1, so that
    the mass never exceeds 1 (``tests/test_jax_optax.py`` checks every float32 there). The true
    ``erf`` is within ``1.8e-7`` (3 ulp) of 1 past that point: the saturated scale is exactly 1.
    """
    if name == "normal":
        x = abs_z * _INVERSE_SQRT2
        if x.dtype == jnp.float32:
            x = jnp.minimum(x, ERF_FLOAT32_SATURATION)
        return jax.scipy.special.erf(x)
    if name == "bft":
        return jnp.tanh((0.5 * BFT_CUBIC) * abs_z**3 + (0.5 * BFT_LINEAR) * abs_z)
    if name == "bfo":
        return jnp.tanh((0.5 * BFO_LINEAR) * abs_z)
    if name == "logistic":
        return jnp.tanh((0.5 * LOGISTIC_SLOPE) * abs_z)
    raise ValueError(f"invalid cdf={name!r}: must be one of {', '.join(CDF_NAMES)}")


def standard_error(
    m_hat: jax.Array, v_hat: jax.Array, inverse_denominator: jax.Array, one_sample: jax.Array, eps: float
) -> jax.Array:
    """``se = sqrt(max(v_hat - m_hat^2, 0) / (n - 1 + eps)) + eps``, the quotient as a product by
    ``inverse_denominator = 1 / (n - 1 + eps)`` (rounded once; a division per element costs more
    than the rest of the step's arithmetic).

    One sample (``one_sample``: ``t = 1`` or ``beta = 0``) has no spread: ``se = eps`` exactly.
    An overflowed ``v_hat = inf`` gives ``se = inf`` (also where ``m_hat^2`` overflowed); a zero
    variance over a denominator that underflowed to 0 stays 0.
    """
    difference = v_hat - m_hat * m_hat
    difference = jnp.where(jnp.isinf(v_hat) & jnp.isnan(difference), jnp.inf, difference)
    variance = jnp.maximum(difference, 0.0)
    ratio = jnp.where(variance == 0.0, 0.0, variance * inverse_denominator)
    return jnp.where(one_sample, jnp.zeros_like(variance) + eps, jnp.sqrt(ratio) + eps)


def standardized_magnitude(m_hat: jax.Array, se: jax.Array, eps: float) -> jax.Array:
    """``|z| = |m_hat| / se``, as ``|m_hat| * (1 / se)``; where ``se == 0`` (only with ``eps = 0``):
    ``inf``, or 0 if ``m_hat == 0``. (The sign of ``z = -m_hat / se`` does not enter the scale.)

    Why a reciprocal: XLA does not fuse an expensive operation (a division) into a consumer that
    reads it twice (the cube of ``bft``); ``|z|`` would become an array of its own, written and
    read back. A product is cheap to fuse; the extra rounding is within the tolerance policy's
    ``2 u |z|``.
    """
    abs_z = jnp.abs(m_hat) * (1.0 / se)
    if eps > 0.0:  # se >= eps > 0, or NaN: nothing to mend
        return abs_z
    limit = jnp.where(m_hat == 0.0, 0.0, jnp.inf).astype(m_hat.dtype)
    return jnp.where(se == 0.0, limit, abs_z)


class ScaleFactors(NamedTuple):
    """The step-count-dependent scalars of the scale, once per step and dtype, each rounded once:
    ``inverse_b = 1 / (1 - beta^t)``, ``inverse_denominator = 1 / (n - 1 + eps)``, and
    ``one_sample`` (``t = 1`` or ``beta = 0``)."""

    inverse_b: jax.Array
    inverse_denominator: jax.Array
    one_sample: jax.Array


def scale_factors(beta: float, eps: float, t: jax.Array, dtype: Any) -> ScaleFactors:
    """:class:`ScaleFactors` after ``t >= 1`` gradients (``t`` an int32 scalar, traced or not)."""
    inverse_b, inverse_denominator = scalars.scale_reciprocals(beta, t, eps, np.dtype(dtype))
    return ScaleFactors(inverse_b, inverse_denominator, (t <= 1) | (beta == 0.0))


def scale_from_factors(m: jax.Array, v: jax.Array, factors: ScaleFactors, *, c: float, eps: float, cdf_name: str):
    """The scale ``s = min(2 c |F(-m_hat / se) - 0.5|, 1)`` in [0, 1] from the statistics and the
    step's :class:`ScaleFactors` (``m_hat = m / b``, ``v_hat = v / b``, as products by ``1 / b``).

    Per element: one square root, one division and one ``tanh`` (or ``erf``); the rest are
    products, sums and selections, which a vector unit does in a cycle.
    """
    m_hat = m * factors.inverse_b
    v_hat = v * factors.inverse_b
    # The bias-corrected mean of finite gradients is at most the largest of them; where the
    # product rounds past the range it is clamped to that value, not inf (as the reference).
    largest = jnp.asarray(np.finfo(m.dtype).max, m.dtype)
    m_hat = jnp.where(jnp.isinf(m_hat) & jnp.isfinite(m), jnp.copysign(largest, m), m_hat)
    se = standard_error(m_hat, v_hat, factors.inverse_denominator, factors.one_sample, eps)
    mass = central_mass(standardized_magnitude(m_hat, se, eps), cdf_name)
    if c <= 1.0 and mass.dtype == jnp.float32:
        # In float32 the mass never exceeds 1 (XLA's tanh, the clamped erf: tests/test_jax_optax.py)
        # and min(c mass, 1) is c mass: with c = 1 the scale is tanh's (erf's) own result, and XLA
        # writes the state's scale from the fusion that computes it, the update reading it back.
        # A cheap last operation (min) would be recomputed in both, tanh's result stored aside.
        return c * mass
    return jnp.minimum(c * mass, 1.0)


def cprop_scale(m: jax.Array, v: jax.Array, t: Any, *, beta: float, c: float, eps: float, cdf_name: str):
    """The scale after ``t >= 1`` gradients from the statistics ``m``, ``v`` (for study: the
    transformations compute the factors once per step and dtype)."""
    factors = scale_factors(beta, eps, jnp.asarray(t, jnp.int32), m.dtype)
    return scale_from_factors(m, v, factors, c=c, eps=eps, cdf_name=cdf_name)


def scale_update(update: jax.Array, s: jax.Array) -> jax.Array:
    """``update * s`` with ``0 * inf = 0``: a scale of 0 is no update at all, also where the base
    update overflowed to inf (IEEE would give NaN from finite gradients), as the reference."""
    return jnp.where(s == 0.0, jnp.zeros_like(update), update * s)


# -- the base updates (torch.optim semantics, as cprop_ref.functional) -------------------------


def sgd_direction(
    p: jax.Array,
    g: jax.Array,
    buf: jax.Array | None,
    first: jax.Array,
    *,
    momentum: float,
    dampening: float,
    weight_decay: float,
    nesterov: bool,
) -> tuple[jax.Array, jax.Array | None]:
    """SGD's direction ``d`` (the update is ``-lr d``) and the new momentum buffer: ``d = g + wd p``;
    ``buf <- d`` on the first step (``first``), else ``momentum buf + (1 - dampening) d``;
    ``d <- d + momentum buf`` (Nesterov) or ``d <- buf``. Without momentum the buffer is ``None``."""
    d = g + weight_decay * p if weight_decay != 0.0 else g
    if momentum == 0.0:
        return d, None
    buf = jnp.where(first, d, momentum * buf + (1.0 - dampening) * d)
    return (d + momentum * buf if nesterov else buf), buf


def adam_moments(
    exp_avg: jax.Array, exp_avg_sq: jax.Array, max_exp_avg_sq: jax.Array | None, d: jax.Array, *, betas, amsgrad: bool
) -> tuple[jax.Array, jax.Array, jax.Array | None]:
    """``m <- b1 m + (1 - b1) d``, ``v <- b2 v + (1 - b2) d^2`` and AMSGrad's running maximum
    (a weighted sum, not ``lerp``: exactly CProp's ``m`` when ``b1 == cprop_beta``)."""
    beta1, beta2 = betas
    exp_avg = beta1 * exp_avg + (1.0 - beta1) * d
    exp_avg_sq = beta2 * exp_avg_sq + (1.0 - beta2) * (d * d)
    if amsgrad:
        max_exp_avg_sq = jnp.maximum(max_exp_avg_sq, exp_avg_sq)
    return exp_avg, exp_avg_sq, max_exp_avg_sq


def adam_delta(
    exp_avg: jax.Array, second: jax.Array, step_size: jax.Array, bias_correction2_sqrt: jax.Array, *, eps: float
) -> jax.Array:
    """torch Adam's update ``-step_size * m / (sqrt(v) / sqrt(1 - b2^t) + eps)`` (``second``: ``v``
    or AMSGrad's maximum), with ``step_size = lr / (1 - b1^t)`` and ``sqrt(1 - b2^t)`` from
    :func:`.scalars.adam_factors` (exact, rounded once)."""
    denom = jnp.sqrt(second) / bias_correction2_sqrt + eps
    return -step_size * (exp_avg / denom)
