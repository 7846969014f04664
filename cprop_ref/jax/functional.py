"""CProp's statistics and scale, and the base updates it scales, on JAX arrays (``docs/algorithm.md``,
"One step"): pure functions of arrays, with the hyperparameters as Python values (static under
``jax.jit``), following the NumPy reference (``cprop_ref.scale``, ``cprop_ref.functional``)
operation for operation.

Hyperparameters are Python floats, weak scalars in JAX as in NumPy: a float32 array stays
float32 and each constant is rounded once to it. The factors that depend on the step count
(``1 - beta^t``, ``n - 1``, Adam's step size) are computed exactly and rounded once
(:mod:`.scalars`), as the reference computes them in double precision. No Python branch looks at
a traced value: ``t`` and the arrays may be traced, jitted and vmapped.
"""

from __future__ import annotations

from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from jax.scipy.special import ndtr

from ..cdf import BFO_LINEAR, BFT_CUBIC, BFT_LINEAR, CDF_NAMES, LOGISTIC_SLOPE
from . import scalars


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


def cdf(z: jax.Array, name: str) -> jax.Array:
    """``p = F(z)`` for the four CDFs (``cprop_ref.cdf``); ``lax.logistic`` and ``ndtr``
    saturate to exactly 0 and 1, also at ``z = +-inf``, without NaN."""
    if name == "normal":
        return ndtr(z)
    if name == "bft":
        return jax.nn.sigmoid(BFT_CUBIC * z**3 + BFT_LINEAR * z)
    if name == "bfo":
        return jax.nn.sigmoid(BFO_LINEAR * z)
    if name == "logistic":
        return jax.nn.sigmoid(LOGISTIC_SLOPE * z)
    raise ValueError(f"invalid cdf={name!r}: must be one of {', '.join(CDF_NAMES)}")


def standard_error(m_hat: jax.Array, v_hat: jax.Array, denominator: jax.Array, one_sample: jax.Array, eps: float):
    """``se = sqrt(max(v_hat - m_hat^2, 0) / (n - 1 + eps)) + eps``, ``denominator = n - 1 + eps``.

    One sample (``one_sample``: ``t = 1`` or ``beta = 0``) has no spread: ``se = eps`` exactly.
    An overflowed ``v_hat = inf`` gives ``se = inf`` (also where ``m_hat^2`` overflowed); a zero
    variance over a denominator that underflowed to 0 stays 0.
    """
    difference = v_hat - m_hat * m_hat
    difference = jnp.where(jnp.isinf(v_hat) & jnp.isnan(difference), jnp.inf, difference)
    variance = jnp.maximum(difference, 0.0)
    ratio = jnp.where(variance == 0.0, 0.0, variance / denominator)
    return jnp.where(one_sample, jnp.zeros_like(variance) + eps, jnp.sqrt(ratio) + eps)


def standardized_mean(m_hat: jax.Array, se: jax.Array) -> jax.Array:
    """``z = -m_hat / se``; where ``se == 0`` (eps = 0): ``-sign(m_hat) inf``, or 0 if ``m_hat == 0``."""
    z = -m_hat / se
    limit = jnp.where(m_hat == 0.0, 0.0, jnp.copysign(jnp.inf, -m_hat)).astype(m_hat.dtype)
    return jnp.where(se == 0.0, limit, z)


class ScaleFactors(NamedTuple):
    """The step-count-dependent scalars of the scale, once per step and dtype: ``b = 1 - beta^t``,
    ``denominator = n - 1 + eps`` (both rounded once) and ``one_sample`` (``t = 1`` or ``beta = 0``)."""

    b: jax.Array
    denominator: jax.Array
    one_sample: jax.Array


def scale_factors(beta: float, eps: float, t: jax.Array, dtype: Any) -> ScaleFactors:
    """:class:`ScaleFactors` after ``t >= 1`` gradients (``t`` an int32 scalar, traced or not)."""
    b, denominator = scalars.scale_factors(beta, t, eps, np.dtype(dtype))
    return ScaleFactors(b, denominator, (t <= 1) | (beta == 0.0))


def scale_from_factors(m: jax.Array, v: jax.Array, factors: ScaleFactors, *, c: float, eps: float, cdf_name: str):
    """The scale ``s = min(2 c |F(-m_hat / se) - 0.5|, 1)`` in [0, 1] from the statistics and the
    step's :class:`ScaleFactors` (``m_hat = m / b``, ``v_hat = v / b``)."""
    m_hat = m / factors.b
    v_hat = v / factors.b
    # The bias-corrected mean of finite gradients is at most the largest of them; where the
    # quotient rounds past the range it is clamped to that value, not inf (as the reference).
    largest = jnp.asarray(np.finfo(m.dtype).max, m.dtype)
    m_hat = jnp.where(jnp.isinf(m_hat) & jnp.isfinite(m), jnp.copysign(largest, m), m_hat)
    se = standard_error(m_hat, v_hat, factors.denominator, factors.one_sample, eps)
    p = cdf(standardized_mean(m_hat, se), cdf_name)
    return jnp.minimum(2.0 * c * jnp.abs(p - 0.5), 1.0)


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
