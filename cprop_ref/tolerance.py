"""The tolerance policy of every cross-check (backends, ports, golden files).

Two implementations of CProp that follow ``docs/algorithm.md`` but round differently can differ by
no more than the bounds derived here (``docs/algorithm.md``, "Tolerance policy", gives
the derivation). The bounds are *propagated*: an elementwise bound on the error of the
moments is carried from step to step, and the bound on the scale is derived from it
through the conditioning of ``s(m, v)``. Where the scale is ill-conditioned (near
``m_hat = 0`` with a standard error that rounding cannot pin down) the bound reaches 1
and the element is not constrained: a check must count such elements, not compare them.

Everything here is computed in float64 from the *reference* values; ``u`` is the unit
roundoff of the dtype being compared (``2**-24`` for float32, ``2**-53`` for float64).
"""

from __future__ import annotations

import math

import numpy as np
from scipy.special import expit, ndtr

from .cdf import BFO_LINEAR, BFT_CUBIC, BFT_LINEAR, LOGISTIC_SLOPE
from .scale import bias_correction, degrees_of_freedom, effective_sample_size

#: Roundings in one EMA update ``beta * x + (1 - beta) * y``: two products, one sum, and
#: the rounding of ``beta`` and ``1 - beta`` to the dtype, which implementations may do
#: differently (in the dtype, or in double precision first).
EMA_ROUNDINGS = 5
#: One more rounding for the square ``g * g`` in the second moment.
SQUARE_ROUNDINGS = 1
#: Absolute error of one CDF evaluation, in units of ``u``: a correctly rounded ``exp``
#: inside ``1 / (1 + exp(.))`` gives a few ulp; scipy's ``ndtr`` and ``expit`` are within
#: that; a port's own vectorised ``exp`` must state its bound and may raise this.
CDF_ERROR_ULPS = 8.0
#: Roundings between the CDF value and the scale: ``p - 0.5``, ``2 c``, product, min.
SCALE_ROUNDINGS = 4
#: Unit roundoff of double precision, in which the scalar factors are computed.
DOUBLE_U = 2.0**-53


def unit_roundoff(dtype: np.dtype | type) -> float:
    """``u = eps / 2`` of ``dtype``; float16 computes in float32 (``compute_dtype``)."""
    dtype = np.dtype(dtype)
    if dtype == np.float16:
        dtype = np.dtype(np.float32)
    return float(np.finfo(dtype).eps) / 2.0


def subnormal_floor(dtype: np.dtype | type) -> float:
    """The absolute error of one rounding where the relative bound ``u |x|`` no longer holds
    (gradual underflow): half the smallest subnormal of the compute dtype.

    The bounds are float64 numbers, and half of float64's smallest subnormal (``2^-1075``) is
    not one: it rounds to 0, which would make a one-ulp difference between two subnormal
    results a mismatch. For float64 the floor is therefore the smallest subnormal itself
    (``2^-1074``), the least float64 bound that admits such a difference.
    """
    dtype = np.dtype(dtype)
    if dtype == np.float16:
        dtype = np.dtype(np.float32)
    tiny = float(np.finfo(dtype).smallest_subnormal)
    return tiny / 2.0 if tiny / 2.0 > 0.0 else tiny


def ema_error_bound(
    previous_bound: np.ndarray,
    previous_value: np.ndarray,
    new_input: np.ndarray,
    beta: float,
    u: float,
    roundings: int,
    tiny: float = 0.0,
) -> np.ndarray:
    """Bound on ``|x_port - x_ref|`` after ``x <- beta x + (1 - beta) y``.

    ``e_t <= beta e_{t-1} + roundings * (u * (|x_{t-1}| + (1 - beta) |y_t|) + tiny)``: the error
    carried over shrinks by ``beta``, and each rounding adds at most ``u`` times the magnitude
    it rounds, or ``tiny`` (half the smallest subnormal) where that is more. The magnitude
    covers both ways of writing the update: the weighted sum ``beta x + (1 - beta) y``, whose
    terms are at most ``beta |x|`` and ``(1 - beta) |y|``, and torch's ``lerp``
    ``x + (1 - beta) (y - x)``, whose terms reach ``|x|`` and ``(1 - beta) |y - x|`` (for a small
    ``beta`` and ``|y| << |x|`` it rounds about ``u |x|``).
    """
    magnitude = np.abs(previous_value) + (1.0 - beta) * np.abs(new_input)
    return beta * previous_bound + roundings * (u * magnitude + tiny)


def cdf_density(z: np.ndarray, cdf: str) -> np.ndarray:
    """``dF/dz`` of each CDF; all four are even and decrease in ``|z|``.

    The logistic forms are ``F = expit(q(z))`` with density ``expit(q) expit(-q) q'(z)``
    (written so, not ``p (1 - p)``, to avoid cancellation in the tails).
    """
    z = np.asarray(z, dtype=np.float64)
    if cdf == "normal":
        return np.exp(-0.5 * z * z) / math.sqrt(2.0 * math.pi)
    if cdf == "bft":
        q, dq = BFT_CUBIC * z**3 + BFT_LINEAR * z, 3.0 * BFT_CUBIC * z * z + BFT_LINEAR
    else:
        slope = _logistic_slope(cdf, "cdf_density")
        q, dq = slope * z, slope
    return expit(q) * expit(-q) * dq


def _logistic_slope(cdf: str, caller: str) -> float:
    """The slope of the one-parameter logistic CDFs; ``ValueError`` for a CDF the tolerance
    policy has no density and tail for (never another CDF's bound)."""
    if cdf == "bfo":
        return BFO_LINEAR
    if cdf == "logistic":
        return LOGISTIC_SLOPE
    raise ValueError(
        f"{caller}: unknown cdf={cdf!r}: the tolerance policy knows normal, bft, bfo, logistic "
        '(add its density and tail to cprop_ref/tolerance.py, docs/algorithm.md "Adding a CDF")'
    )


def cdf_tail(z: np.ndarray, cdf: str) -> np.ndarray:
    """``F(-|z|) = 1 - F(|z|)``, the mass of each CDF beyond ``|z|`` (all four are symmetric),
    evaluated without cancellation; 0 at ``|z| = inf``."""
    z = np.abs(np.asarray(z, dtype=np.float64))
    if cdf == "normal":
        return ndtr(-z)
    if cdf == "bft":
        return expit(-(BFT_CUBIC * z**3 + BFT_LINEAR * z))
    return expit(-_logistic_slope(cdf, "cdf_tail") * z)


def scale_tolerance(
    m: np.ndarray,
    v: np.ndarray,
    t: int,
    *,
    beta: float,
    c: float,
    eps: float,
    cdf: str,
    m_bound: np.ndarray,
    v_bound: np.ndarray,
    u: float,
    cdf_error_ulps: float = CDF_ERROR_ULPS,
) -> np.ndarray:
    """Elementwise bound on ``|s_port - s_ref|`` given the reference statistics ``(m, v, t)``
    and bounds on the error of the port's ``m`` and ``v``; 1 where the scale is ill-conditioned.

    Propagation, every step a first-order bound with the rounding of each operation added:
    ``m_hat = m / b``, ``v_hat = v / b``; ``var = v_hat - m_hat^2``; ``se = sqrt(var / k) + eps``
    with ``k = n - 1 + eps`` (``|sqrt(a) - sqrt(b)| <= min(|a - b| / (2 sqrt(b)), sqrt(|a - b|))``);
    ``z = -m_hat / se``; ``p = F(z)`` with the density's maximum over ``[|z| - dz, |z| + dz]``;
    ``s = min(2 c |p - 0.5|, 1)`` is ``2c``-Lipschitz in ``p``.
    """
    m = np.asarray(m, dtype=np.float64)
    v = np.asarray(v, dtype=np.float64)
    b = bias_correction(beta, t)
    n = effective_sample_size(beta, t)
    dof = degrees_of_freedom(beta, t)
    k = dof + eps
    # The scalars are computed in double precision (DOUBLE_U) and rounded once to the dtype (u).
    # 1 - beta^t cancels: its absolute error is a few DOUBLE_U. The reference computes n - 1
    # without cancellation (scale.degrees_of_freedom); a port may compute n - 1 literally, with
    # an absolute error of a few DOUBLE_U * n, which dk allows for.
    db = 2.0 * DOUBLE_U + u * b
    dk = 4.0 * DOUBLE_U * (n + 1.0) + u * k
    with np.errstate(all="ignore"):
        m_hat, v_hat = m / b, v / b
        dm_hat = (np.asarray(m_bound) + u * np.abs(m)) / b + (2.0 * u + db / b) * np.abs(m_hat)
        dv_hat = (np.asarray(v_bound) + u * np.abs(v)) / b + (2.0 * u + db / b) * np.abs(v_hat)
        variance = np.maximum(v_hat - m_hat * m_hat, 0.0)
        dvar = dv_hat + 2.0 * np.abs(m_hat) * dm_hat + dm_hat * dm_hat + 3.0 * u * (v_hat + m_hat * m_hat)
        if dof != 0.0:
            root = np.sqrt(variance / k)
            d_root = (
                np.minimum(np.where(variance > 0.0, dvar / (2.0 * np.sqrt(variance * k)), np.inf), np.sqrt(dvar / k))
                + 0.5 * root * dk / k
            )
            se = root + eps
            dse = d_root + 3.0 * u * se
        else:  # n - 1 = 0: the variance term is defined as 0 exactly (scale.standard_error)
            se = np.zeros_like(m) + eps
            dse = np.zeros_like(m)
        z = np.where(se > 0.0, -m_hat / se, 0.0)
        dz = np.where(dse < se, (dm_hat + np.abs(z) * dse) / (se - dse) + 2.0 * u * np.abs(z), np.inf)
        nearest = np.maximum(np.abs(z) - dz, 0.0)
        density = cdf_density(nearest, cdf)
        dp = np.where(np.isfinite(dz), density * dz, 1.0) + cdf_error_ulps * u
        # Where se is not pinned down (a nearly constant gradient: its variance is rounding
        # noise) the sign of m_hat may still be: then both sides have |z| >= z_low and their p
        # differ by at most the CDF's tail beyond z_low. The saturated scales of such streams
        # are compared instead of counted. (fmin: a NaN z_low, 0 / 0, leaves dp as it is.)
        z_low = np.maximum(np.abs(m_hat) - dm_hat, 0.0) / (se + dse) * (1.0 - 2.0 * u)
        dp = np.fmin(dp, cdf_tail(z_low, cdf) + cdf_error_ulps * u)
        tol = 2.0 * c * dp + SCALE_ROUNDINGS * u
    return np.minimum(np.nan_to_num(tol, nan=1.0, posinf=1.0), 1.0)


class CPropErrorBounds:
    """Carries the bounds on ``|m_port - m_ref|`` and ``|v_port - v_ref|`` along a gradient
    stream for one tensor. Call :meth:`update` with the reference statistics *before* the
    step and the gradient, then :meth:`scale_tolerance` with the statistics after it."""

    def __init__(self, shape: tuple[int, ...], dtype: np.dtype | type) -> None:
        self.u = unit_roundoff(dtype)
        self.tiny = subnormal_floor(dtype)
        self.m_bound = np.zeros(shape)
        self.v_bound = np.zeros(shape)

    def update(self, m_before: np.ndarray, v_before: np.ndarray, g: np.ndarray, beta: float) -> None:
        g = np.asarray(g, dtype=np.float64)
        self.m_bound = ema_error_bound(self.m_bound, m_before, g, beta, self.u, EMA_ROUNDINGS, self.tiny)
        self.v_bound = ema_error_bound(
            self.v_bound, v_before, g * g, beta, self.u, EMA_ROUNDINGS + SQUARE_ROUNDINGS, self.tiny
        )

    def scale_tolerance(
        self, m: np.ndarray, v: np.ndarray, t: int, *, beta: float, c: float, eps: float, cdf: str
    ) -> np.ndarray:
        return scale_tolerance(
            m, v, t, beta=beta, c=c, eps=eps, cdf=cdf, m_bound=self.m_bound, v_bound=self.v_bound, u=self.u
        )
