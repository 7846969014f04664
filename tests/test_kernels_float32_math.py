"""The float32-lane exponential, erf and conformities of the kernels, against float64.

For float32 tensors the kernels evaluate every CDF entirely in float32 (``cprop_ref.kernels.vector_math.exp_float32``). The bounds held here are
derived in ``docs/design/kernels.md`` ("Exponentials at vector speed"), in units of
``U32 = 2**-24``:

- ``exp_float32``: relative error <= ``EXP_FLOAT32_BOUND_U`` on [-87, 0] (reduction 0.39,
  Horner 2.01 with two roundings per step, Taylor remainder 0.17);
- ``tanh_half_float32``: absolute error <= ``TANH_HALF_FLOAT32_BOUND_U`` (half the error of
  ``e``, plus ``1 - e``, ``1 + e`` and the division);
- the conformity ``tanh(|q(z)| / 2)`` from a float32 ``z`` (what ``scale_in_place`` computes
  with ``2c = 2``): that bound plus the rounding of ``q`` in float32, relative ``5 U32`` for
  bft's cubic ``|z| (C3 z^2 + C1)`` (the two constants, ``z^2``, ``C3 z^2``, the sum of two
  positive terms, the product) and ``2 U32`` for a slope
  (the constant and the product), which moves ``tanh(q / 2)`` by at most
  ``max_y y sech(y)^2 = 0.4478`` times that relative error;
- ``erf_float32``: absolute error <= ``ERF_FLOAT32_BOUND_U`` (Taylor branch below 1: Horner
  with two roundings per step, ``x^2``, the product and the remainder, 4.15; from 1 on,
  ``1 - E(min(x, 4) - 2.5)`` with ``E`` the degree-14 polynomial of ``erfc``: the fit 0.17,
  Horner 1.57, ``1 - E`` 0.5, ``erfc(4)`` beyond 4 0.26, together 2.5);
- the normal's conformity ``erf(|z| / sqrt 2)`` from a float32 ``z``: that bound plus the
  rounding of ``|z| sqrt(1/2)`` (constant and product, relative ``2 U32``), which moves ``erf``
  by at most ``2/sqrt(pi) max_x x exp(-x^2) * 2 U32 = 0.968 U32``.

The exact values are float64 evaluations at the float32 arguments (``np.exp``, ``np.tanh``,
SciPy's ``erf``: within a few ``2**-53``, below ``1e-8 U32``, which the comparisons leave to
the margin of the bounds' first-order terms).
"""

from __future__ import annotations

import math

import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st
from numba import njit
from scipy.special import erf

from cprop_ref.cdf import BFO_LINEAR, BFT_CUBIC, BFT_LINEAR, LOGISTIC_SLOPE
from cprop_ref.kernels.scale import BFO, BFT, LOGISTIC, NORMAL, scale_in_place
from cprop_ref.kernels.vector_math import (
    ERF_FLOAT32_BOUND_U,
    EXP_CLAMP_F32,
    EXP_FLOAT32_BOUND_U,
    TANH_HALF_FLOAT32_BOUND_U,
    erf_float32,
    exp_float32,
    tanh_half_float32,
)
from tests.hypothesis_budget import examples

U32 = 2.0**-24
#: ``max_y y sech(y)^2``: the largest change of ``tanh(q / 2)`` per unit relative change of ``q``.
TANH_HALF_CONDITION = 0.4478
#: Relative error of ``q(z)`` evaluated in float32, in units of U32.
Q_ROUNDINGS = {BFT: 5.0, BFO: 2.0, LOGISTIC: 2.0}
#: ``2/sqrt(pi) max_x x exp(-x^2) * 2``: erf's change for the rounding of ``|z| sqrt(1/2)``, in U32.
ERF_ARGUMENT_ROUNDING = 0.968


@njit(cache=True)
def _map_erf_float32(x):
    out = np.empty_like(x)
    for i in range(x.size):
        out[i] = erf_float32(x[i])
    return out


@njit(cache=True)
def _map_exp_float32(x):
    out = np.empty_like(x)
    for i in range(x.size):
        out[i] = exp_float32(x[i])
    return out


@njit(cache=True)
def _map_tanh_half_float32(q):
    out = np.empty_like(q)
    for i in range(q.size):
        out[i] = tanh_half_float32(q[i])
    return out


def _exp_grid() -> np.ndarray:
    """float32 arguments in [-87, 0]: across the reduction's boundaries (k +- 1/2) ln2 for
    every k the range reaches, dense near 0, and uniform over the range."""
    rng = np.random.default_rng(0)
    boundaries = (np.arange(0, 127)[:, None] + np.linspace(-0.5, 0.5, 401)) * -math.log(2.0)
    near_zero = -np.geomspace(1e-40, 1.0, 2000)
    uniform = rng.uniform(float(EXP_CLAMP_F32), 0.0, 100_000)
    grid = np.concatenate([[0.0, -0.0, float(EXP_CLAMP_F32)], boundaries.ravel(), near_zero, uniform])
    grid = grid.astype(np.float32)
    return grid[(grid <= 0.0) & (grid >= EXP_CLAMP_F32)]


def _exp_relative_error(x: np.ndarray) -> np.ndarray:
    exact = np.exp(x.astype(np.float64))
    return np.abs(_map_exp_float32(x).astype(np.float64) - exact) / exact


def test_exp_float32_relative_error_within_its_bound():
    x = _exp_grid()
    values = _map_exp_float32(x)
    assert values.dtype == np.float32
    assert np.max(_exp_relative_error(x)) <= EXP_FLOAT32_BOUND_U * U32


@settings(max_examples=examples(200))
@given(st.floats(float(EXP_CLAMP_F32), 0.0, width=32))
def test_exp_float32_bound_at_drawn_points(x):
    assert _exp_relative_error(np.array([x], dtype=np.float32))[0] <= EXP_FLOAT32_BOUND_U * U32


def test_exp_float32_limits_saturate_without_nan():
    x = np.array([-np.inf, -3.0e38, -100.0, EXP_CLAMP_F32 - 1.0, np.nan, -0.0, 0.0], dtype=np.float32)
    values = _map_exp_float32(x)
    clamped = math.exp(float(EXP_CLAMP_F32)) * (1.0 + EXP_FLOAT32_BOUND_U * U32)
    assert np.all((values[:4] > 0.0) & (values[:4] <= clamped))
    assert np.isnan(values[4])
    assert values[5] == 1.0 and values[6] == 1.0


def test_tanh_half_float32_within_its_bound():
    q = np.concatenate([np.linspace(-60.0, 60.0, 60001), np.geomspace(1e-40, 3e38, 4000)]).astype(np.float32)
    exact = np.tanh(np.abs(q.astype(np.float64)) / 2.0)
    values = _map_tanh_half_float32(q)
    assert values.dtype == np.float32
    assert np.max(np.abs(values - exact)) <= TANH_HALF_FLOAT32_BOUND_U * U32
    inf_nan = _map_tanh_half_float32(np.array([np.inf, -np.inf, np.nan], dtype=np.float32))
    assert inf_nan[0] == 1.0 and inf_nan[1] == 1.0 and np.isnan(inf_nan[2])


def test_erf_float32_within_its_bound():
    """Dense across the branch switch at 1, near 0, and out to where erf is 1 in float32."""
    x = np.concatenate(
        [np.linspace(0.0, 12.0, 120_001), np.linspace(0.999, 1.001, 2001), np.geomspace(1e-40, 1.0, 2000)]
    )
    x = x.astype(np.float32)
    values = _map_erf_float32(x)
    assert values.dtype == np.float32
    assert np.max(np.abs(values - erf(x.astype(np.float64)))) <= ERF_FLOAT32_BOUND_U * U32
    special = _map_erf_float32(np.array([np.inf, 3e38, np.nan], dtype=np.float32))
    assert special[0] == 1.0 and special[1] == 1.0 and np.isnan(special[2])


@settings(max_examples=examples(200))
@given(st.floats(0.0, 12.0, width=32))
def test_erf_float32_bound_at_drawn_points(x):
    (value,) = _map_erf_float32(np.array([x], dtype=np.float32))
    assert abs(float(value) - float(erf(np.float64(x)))) <= ERF_FLOAT32_BOUND_U * U32


def _conformity_exact(z: np.ndarray, cdf: int) -> np.ndarray:
    z = np.abs(z.astype(np.float64))
    if cdf == NORMAL:
        return erf(z / math.sqrt(2.0))
    if cdf == BFT:
        q = BFT_CUBIC * z**3 + BFT_LINEAR * z
    else:
        q = (BFO_LINEAR if cdf == BFO else LOGISTIC_SLOPE) * z
    return np.tanh(q / 2.0)


def test_float32_conformity_of_the_logistic_cdfs_within_the_derived_bound():
    """``scale_in_place`` with ``2c = 2`` returns the conformity ``|2F(z) - 1|`` itself
    (``2 h`` is exact, and a conformity never exceeds 1); it must be within the tanh bound
    plus the rounding of ``q`` in float32, for z of either sign, tiny to huge, inf and NaN."""
    rng = np.random.default_rng(1)
    z = np.concatenate([rng.uniform(-40.0, 40.0, 50_000), np.geomspace(1e-40, 3e38, 2000), [0.0, -0.0]])
    z = np.concatenate([z, -z]).astype(np.float32)
    for cdf in (BFT, BFO, LOGISTIC):
        values = z.copy()
        scale_in_place(values, values.size, cdf, np.float32(2.0), np.float32(1.0))
        bound = (TANH_HALF_FLOAT32_BOUND_U + TANH_HALF_CONDITION * Q_ROUNDINGS[cdf]) * U32
        assert np.max(np.abs(values - _conformity_exact(z, cdf))) <= bound, cdf
        special = np.array([np.inf, -np.inf, np.nan], dtype=np.float32)
        scale_in_place(special, 3, cdf, np.float32(2.0), np.float32(1.0))
        assert special[0] == 1.0 and special[1] == 1.0 and np.isnan(special[2])


def test_float32_conformity_of_the_normal_within_the_derived_bound():
    """As above for ``erf(|z| / sqrt 2)``: ``erf_float32``'s bound plus the rounding of its argument."""
    rng = np.random.default_rng(2)
    z = np.concatenate([rng.uniform(-8.0, 8.0, 50_000), np.linspace(1.40, 1.43, 3001), np.geomspace(1e-40, 3e38, 2000)])
    z = np.concatenate([z, -z, [0.0, -0.0]]).astype(np.float32)
    values = z.copy()
    scale_in_place(values, values.size, NORMAL, np.float32(2.0), np.float32(1.0))
    bound = (ERF_FLOAT32_BOUND_U + ERF_ARGUMENT_ROUNDING) * U32
    assert np.max(np.abs(values - _conformity_exact(z, NORMAL))) <= bound
    special = np.array([np.inf, -np.inf, np.nan], dtype=np.float32)
    scale_in_place(special, 3, NORMAL, np.float32(2.0), np.float32(1.0))
    assert special[0] == 1.0 and special[1] == 1.0 and np.isnan(special[2])
