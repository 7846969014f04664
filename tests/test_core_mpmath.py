"""The NumPy scale against an independent evaluation of its definition in 50-digit arithmetic (mpmath).

The state ``(m, v, t)`` is taken as exact (its float values); mpmath evaluates the
formulas on it with no rounding that matters. The NumPy result, computed in the state's dtype,
may differ only by the rounding of one evaluation, whose effect on ``s`` is bounded by the
tolerance policy (``cprop_ref.tolerance.scale_tolerance`` with zero error in the state): it
carries each rounding through ``m_hat``, ``v_hat``, the cancellation in ``v_hat - m_hat^2``,
the square root, ``z`` and the CDF's density, and adds ``CDF_ERROR_ULPS`` for the CDF itself.
Elements where that bound reaches 1 are ill-conditioned (the scale's value there is decided by
rounding); the test asserts that they are few, and compares every other element.
"""

from __future__ import annotations

import math

import mpmath
import numpy as np
from hypothesis import given
from hypothesis import strategies as st

from cprop_ref.scale import CPropStats, cprop_scale
from cprop_ref.tolerance import scale_tolerance, unit_roundoff
from tests.strategies_core import betas, cdfs, float_dtypes, overconfidence

mpmath.mp.dps = 50


def mp_cdf(z: mpmath.mpf, cdf: str) -> mpmath.mpf:
    if cdf == "normal":
        return mpmath.ncdf(z)
    if cdf == "bft":
        q = mpmath.mpf("0.07056") * z**3 + mpmath.mpf("1.5976") * z
    elif cdf == "bfo":
        q = mpmath.mpf("1.702") * z
    elif cdf == "logistic":
        q = z * mpmath.pi / mpmath.sqrt(3)
    else:  # a new CDF needs its own 50-digit definition here, not another CDF's
        raise ValueError(f"mp_cdf: no 50-digit definition of cdf={cdf!r}")
    return 1 / (1 + mpmath.exp(-q))


def mp_scale(m: float, v: float, t: int, beta: float, c: float, eps: float, cdf: str) -> float:
    """The formulas of ``docs/algorithm.md`` ("One step of CProp"), verbatim, in 50-digit
    arithmetic (n - 1 = 0: zero variance, exactly)."""
    beta_, m_, v_ = mpmath.mpf(beta), mpmath.mpf(m), mpmath.mpf(v)
    b = 1 - beta_**t
    m_hat, v_hat = m_ / b, v_ / b
    n_minus_1 = beta_ * (1 - beta_ ** (t - 1)) / (1 - beta_)  # b / (1 - beta) - 1, exactly
    if n_minus_1 == 0:
        se = mpmath.mpf(eps)
    else:
        se = mpmath.sqrt(max(v_hat - m_hat**2, 0) / (n_minus_1 + mpmath.mpf(eps))) + mpmath.mpf(eps)
    if se == 0:
        z = mpmath.mpf(0) if m_hat == 0 else -mpmath.sign(m_hat) * mpmath.inf
    else:
        z = -m_hat / se
    if mpmath.isinf(z):
        p = mpmath.mpf(0) if z < 0 else mpmath.mpf(1)
    else:
        p = mp_cdf(z, cdf)
    return float(min(2 * mpmath.mpf(c) * abs(p - mpmath.mpf("0.5")), 1))


@st.composite
def cprop_states(draw):
    """A state reachable by the EMAs: m = b mu, v = b (mu^2 + sigma^2) for a gradient mean mu and
    spread sigma drawn over 12 orders of magnitude (sigma = 0 included), plus raw pairs with
    v < m^2 / b, which rounding can produce and max(., 0) must absorb."""
    dtype = draw(float_dtypes, label="dtype")
    beta = draw(betas, label="beta")
    t = draw(st.one_of(st.integers(1, 5), st.integers(1, 10**6)), label="t")
    size = draw(st.integers(1, 12), label="size")
    seed = draw(st.integers(0, 2**32 - 1), label="seed")
    rng = np.random.default_rng(seed)
    b = 1.0 - beta**t
    mu = 10.0 ** rng.uniform(-6, 6, size) * rng.choice([-1.0, 1.0, 0.0], size)
    sigma = 10.0 ** rng.uniform(-6, 6, size) * rng.choice([0.0, 1.0], size)
    m = b * mu
    v = b * (mu**2 + sigma**2)
    raw = rng.random(size) < 0.15
    v[raw] = b * mu[raw] ** 2 * (1.0 - 10.0 ** rng.uniform(-16, -1, raw.sum()))
    with np.errstate(over="ignore"):
        return CPropStats(m.astype(dtype), v.astype(dtype), t), beta


@given(
    state=cprop_states(),
    c=overconfidence,
    eps=st.sampled_from([0.0, 1e-12, 1e-8, 1e-3]),
    cdf=cdfs,
)
def test_numpy_scale_matches_50_digit_evaluation(state, c, eps, cdf):
    stats, beta = state
    finite = np.isfinite(stats.v)
    s = cprop_scale(stats, beta, c, eps, cdf)
    u = unit_roundoff(stats.m.dtype)
    zero = np.zeros(stats.m.shape)
    tol = scale_tolerance(stats.m, stats.v, stats.t, beta=beta, c=c, eps=eps, cdf=cdf, m_bound=zero, v_bound=zero, u=u)
    for i in np.flatnonzero(finite & (tol < 1.0)):
        exact = mp_scale(float(stats.m[i]), float(stats.v[i]), stats.t, beta, c, eps, cdf)
        assert abs(float(s[i]) - exact) <= tol[i], (i, float(s[i]), exact, tol[i])


def test_tolerance_is_tight_enough_to_catch_n_instead_of_n_minus_1():
    """The policy must not hide real errors: with n in place of n - 1 the scale moves by far more
    than the bound at a well-conditioned state (t = 2, beta = 0.9: n - 1 = 0.9 vs n = 1.9)."""
    beta, t = 0.9, 2
    b = 1 - beta**t
    stats = CPropStats(np.array([b * 1.0]), np.array([b * (1.0 + 4.0)]), t)
    s = float(cprop_scale(stats, beta, 1.0, 1e-8, "normal")[0])
    n = b / (1 - beta)
    se_wrong = math.sqrt(4.0 / n) + 1e-8
    s_wrong = abs(2 * (0.5 * math.erfc(1.0 / (se_wrong * math.sqrt(2))) - 0.5))
    zero = np.zeros(1)
    tol = scale_tolerance(
        stats.m, stats.v, t, beta=beta, c=1.0, eps=1e-8, cdf="normal", m_bound=zero, v_bound=zero, u=2.0**-53
    )
    assert abs(s - s_wrong) > 1e6 * tol[0]
