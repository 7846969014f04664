"""CProp statistics and scale: the functional core (``docs/algorithm.md``, "One step of CProp").

Every function here is pure: it takes arrays and scalars and returns new arrays.
Arithmetic runs in the dtype of the statistics (float32 or float64); the scalar
hyperparameters are Python floats, which NumPy treats as "weak" and rounds to that
dtype, so a float32 state is never promoted to float64.
"""

from __future__ import annotations

from typing import NamedTuple

import numpy as np

from .cdf import cdf_function


class CPropStats(NamedTuple):
    """CProp's per-tensor state: EMA of the gradient ``m``, of its square ``v``, and the
    number of gradients ``t`` the tensor has received."""

    m: np.ndarray
    v: np.ndarray
    t: int


def init_stats(shape: tuple[int, ...], dtype: np.dtype) -> CPropStats:
    """Zero moments and ``t = 0``."""
    return CPropStats(np.zeros(shape, dtype), np.zeros(shape, dtype), 0)


def ema(previous: np.ndarray, value: np.ndarray, beta: float) -> np.ndarray:
    """One exponential-moving-average update, ``beta * previous + (1 - beta) * value``.

    A value beyond the dtype's range overflows to ``inf`` silently, as in torch; see
    :func:`standard_error`.
    """
    with np.errstate(over="ignore", under="ignore"):  # gradual underflow is the IEEE result too
        if beta == 0.0 or np.result_type(previous).type(beta) == 0.0:
            # No memory: the old value does not enter at all. Written as 0 * v it would make
            # 0 * inf = NaN after a square overflowed, from finite gradients. A beta that rounds
            # to 0 in the dtype (below ~1e-45 in float32) is 0 there too.
            return (1.0 - beta) * value
        return beta * previous + (1.0 - beta) * value


def update_moments(m: np.ndarray, v: np.ndarray, g: np.ndarray, beta: float) -> tuple[np.ndarray, np.ndarray]:
    """``m <- beta m + (1 - beta) g`` and ``v <- beta v + (1 - beta) g^2`` (:func:`ema` of each).

    Units: ``m`` has the units of the gradient, ``v`` its square.
    """
    with np.errstate(over="ignore", under="ignore"):
        square = g * g
    return ema(m, g, beta), ema(v, square, beta)


def update_stats(stats: CPropStats, g: np.ndarray, beta: float) -> CPropStats:
    """One gradient into the statistics: moments and ``t <- t + 1``."""
    m, v = update_moments(stats.m, stats.v, g, beta)
    return CPropStats(m, v, stats.t + 1)


def bias_correction(beta: float, t: int) -> float:
    """``b = 1 - beta^t``: the total weight of an EMA started at zero after ``t`` samples."""
    return 1.0 - beta**t


def effective_sample_size(beta: float, t: int) -> float:
    """``n = b / (1 - beta) = sum_{i<t} beta^i``: how many samples the EMA effectively holds.

    ``beta = 0`` gives ``n = 1`` for every ``t >= 1``.
    """
    return bias_correction(beta, t) / (1.0 - beta)


def degrees_of_freedom(beta: float, t: int) -> float:
    """``n - 1 = beta (1 - beta^(t-1)) / (1 - beta)``: the effective sample size less one.

    The same number as ``effective_sample_size(beta, t) - 1``, written so that it does not
    cancel: it is exactly 0 when ``t = 1`` or ``beta = 0`` (one sample), and accurate to a few
    ulp for tiny ``beta`` (where ``n - 1`` computed as ``n - 1`` loses every digit).
    """
    return beta * bias_correction(beta, t - 1) / (1.0 - beta)


def standard_error(m_hat: np.ndarray, v_hat: np.ndarray, dof: float, eps: float) -> np.ndarray:
    """``se = sqrt(max(v_hat - m_hat^2, 0) / (n - 1 + eps)) + eps``, with ``dof = n - 1``.

    The standard error of the mean gradient, in gradient units. ``max(., 0)`` removes
    the negative variance that rounding can produce.

    ``n - 1 = 0`` (the first step, or every step with ``beta = 0``): one sample has no spread,
    ``v_hat - m_hat^2`` is 0 in real arithmetic, and that exact value is used, so
    ``se = eps`` (``docs/algorithm.md``, "Limits and edge cases"). Evaluated in floating point
    the difference is rounding noise of up to ~4u g^2, which divided by ``n - 1 + eps = eps``
    is ~24 g^2 in float32 and makes the first step's scale a matter of rounding luck (and 0/0 when ``eps = 0``).

    Where ``v_hat`` has overflowed to ``inf`` (gradients whose square exceeds the dtype's
    range) the variance is taken as ``inf`` even where ``m_hat^2`` overflowed too
    (``inf - inf``): the standard error is ``inf`` and the scale 0, no evidence, just as
    Adam's own update vanishes there. NaN inputs stay NaN.
    """
    with np.errstate(over="ignore", invalid="ignore"):
        difference = v_hat - m_hat * m_hat
    difference = np.where(np.isinf(v_hat) & np.isnan(difference), np.inf, difference)
    variance = np.maximum(difference, 0.0)
    if dof == 0.0:
        return np.zeros_like(variance) + eps
    denominator = dof + eps
    # A denominator below the dtype's range rounds to 0: a zero variance over it is still 0
    # (not 0/0), a positive one is +inf (the exact quotient is past the range anyway).
    with np.errstate(over="ignore", divide="ignore", invalid="ignore"):
        ratio = np.where(variance == 0.0, 0.0, variance / denominator)
        return np.sqrt(ratio) + eps


def standardized_mean(m_hat: np.ndarray, se: np.ndarray) -> np.ndarray:
    """``z = -m_hat / se``, with its limits where ``se == 0`` (only possible with eps = 0).

    ``se == 0`` and ``m_hat != 0`` give ``z = -sign(m_hat) * inf`` (a certain sign);
    ``se == 0`` and ``m_hat == 0`` give ``z = 0`` (no evidence either way, scale 0, the
    same value that any ``eps > 0`` gives for an all-zero gradient history).
    Overflow of ``m_hat / se`` to ``+-inf`` is the saturated limit and is not reported.
    """
    with np.errstate(divide="ignore", over="ignore", invalid="ignore"):
        z = -m_hat / se
    degenerate = se == 0.0
    if np.any(degenerate):
        limit = np.where(m_hat == 0.0, 0.0, np.copysign(np.inf, -m_hat))
        z = np.where(degenerate, limit, z).astype(np.result_type(m_hat), copy=False)
    return z


def conformity_probability(z: np.ndarray, cdf: str) -> np.ndarray:
    """``p = F(0; mean=m_hat, sd=se)``, the probability that the true mean gradient is < 0.

    ``ValueError`` naming ``cdf`` if it is not one of :data:`cprop_ref.cdf.CDF_NAMES`."""
    function = cdf_function(cdf)
    # Large |z| overflows inside the CDF (z**3, exp) only where p has saturated to 0 or 1.
    with np.errstate(over="ignore"):
        return function(z)


def scale_from_probability(p: np.ndarray, c: float) -> np.ndarray:
    """``s = min(2 c |p - 0.5|, 1)``: 0 when the sign is a coin toss, 1 when it is certain."""
    return np.minimum(2.0 * c * np.abs(p - 0.5), 1.0)


def cprop_scale(stats: CPropStats, beta: float, c: float, eps: float, cdf: str) -> np.ndarray:
    """The CProp scale ``s`` in [0, 1] implied by the statistics after ``t >= 1`` gradients."""
    if stats.t < 1:
        raise ValueError(f"the CProp scale needs at least one gradient; t={stats.t}")
    b = bias_correction(beta, stats.t)
    # Tiny gradients underflow gradually (their squares, m_hat^2, p - 0.5): that is IEEE's
    # result, not an error, even under a user's np.seterr(under="raise").
    with np.errstate(under="ignore"):
        with np.errstate(over="ignore"):  # v / b past the range is inf, handled in standard_error
            m_hat = stats.m / b
            v_hat = stats.v / b
        # The bias-corrected mean of finite gradients is at most the largest of them; where
        # the quotient rounds past the range (|g| within rounding of the largest finite value)
        # it is clamped to that value, not inf (inf / inf would make z NaN below).
        overflowed = np.isinf(m_hat) & np.isfinite(stats.m)
        if np.any(overflowed):
            m_hat = np.where(overflowed, np.copysign(np.finfo(m_hat.dtype).max, stats.m), m_hat)
        se = standard_error(m_hat, v_hat, degrees_of_freedom(beta, stats.t), eps)
        z = standardized_mean(m_hat, se)
        p = conformity_probability(z, cdf)
        return scale_from_probability(p, c)


def scale_update(update: np.ndarray, s: np.ndarray) -> np.ndarray:
    """``update * s``, with ``0 * inf = 0``: a scale of 0 means no update at all, also where
    the base optimizer's own update overflowed to inf (a momentum buffer near the dtype's
    largest value), which IEEE arithmetic would turn into NaN from finite gradients.
    NaN in ``s`` or ``update`` (``nonfinite="propagate"``) still propagates where ``s != 0``."""
    with np.errstate(invalid="ignore"):
        return np.where(s == 0.0, 0.0, update * s)


def cprop_step(
    stats: CPropStats, g: np.ndarray, beta: float, c: float, eps: float, cdf: str
) -> tuple[CPropStats, np.ndarray]:
    """Update the statistics with the raw gradient ``g`` and return them with the new scale."""
    new_stats = update_stats(stats, g, beta)
    return new_stats, cprop_scale(new_stats, beta, c, eps, cdf)
