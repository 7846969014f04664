"""The vectorisable exponentials and CDFs of ``cprop_ref.kernels.vector_math`` against mpmath.

Each function's error is measured on a dense grid plus hypothesis-drawn points and held
to the bound that its docstring states and ``docs/design/kernels.md`` derives:

- ``exp_double``: relative error <= ``EXP_DOUBLE_BOUND_U`` units of 2**-53 on [-708, 0]
  (Cody-Waite reduction 0.35u + Horner 4.0u + Taylor remainder 0.08u, first order);
- the conformity ``tanh(|q|/2)``: absolute error <= ``EXP_DOUBLE_BOUND_U / 2 + 2`` units of
  2**-53 (see the test's docstring).
"""

from __future__ import annotations

import math

import mpmath
import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st
from numba import njit

from cprop_ref.kernels.vector_math import (
    EXP_CLAMP,
    EXP_DOUBLE_BOUND_U,
    exp_double,
    tanh_half_double,
)
from tests.hypothesis_budget import examples

U = 2.0**-53
mpmath.mp.dps = 40


@njit(cache=True)
def _map_exp_double(x):
    out = np.empty_like(x)
    for i in range(x.size):
        out[i] = exp_double(x[i])
    return out


@njit(cache=True)
def _map_tanh_half(x):
    out = np.empty_like(x)
    for i in range(x.size):
        out[i] = tanh_half_double(x[i])
    return out


def _grid() -> np.ndarray:
    """Arguments in [-708, 0]: dense near 0 (where the reduction is trivial), across the
    reduction's boundaries k ln2 +- ln2/2, and uniformly over the whole range."""
    rng = np.random.default_rng(0)
    near_zero = -np.geomspace(1e-300, 1.0, 400)
    boundaries = (np.arange(0, 1021)[:, None] + np.array([-0.5, -0.4999999, 0.4999999])) * -math.log(2.0)
    uniform = rng.uniform(EXP_CLAMP, 0.0, 3000)
    grid = np.concatenate([[0.0, -0.0, EXP_CLAMP], near_zero, boundaries.ravel(), uniform])
    return grid[(grid <= 0.0) & (grid >= EXP_CLAMP)]


def _relative_errors(values: np.ndarray, x: np.ndarray) -> np.ndarray:
    exact = np.array([float(mpmath.exp(mpmath.mpf(float(xi)))) for xi in x])
    return np.abs(values - exact) / exact


def test_exp_double_relative_error_within_its_bound():
    x = _grid()
    assert np.max(_relative_errors(_map_exp_double(x), x)) <= EXP_DOUBLE_BOUND_U * U


@settings(max_examples=examples(200))
@given(st.floats(EXP_CLAMP, 0.0))
def test_exp_double_bound_at_drawn_points(x):
    (value,) = _map_exp_double(np.array([x]))
    exact = mpmath.exp(mpmath.mpf(x))
    assert abs(mpmath.mpf(float(value)) - exact) <= EXP_DOUBLE_BOUND_U * U * exact


def test_exp_limits_saturate_without_nan():
    x = np.array([-np.inf, -1e308, -800.0, EXP_CLAMP - 1.0, np.nan, -0.0])
    values = _map_exp_double(x)
    # Clamped to exp(-708): within the relative bound of the true value, which math.exp gives
    # to half an ulp.
    assert np.all((values[:4] >= 0.0) & (values[:4] <= math.exp(EXP_CLAMP) * (1.0 + (EXP_DOUBLE_BOUND_U + 1.0) * U)))
    assert np.isnan(values[4])
    assert values[5] == 1.0


def test_conformity_tanh_half_within_its_bound():
    """``tanh(|q|/2) = (1 - e) / (1 + e)`` with ``e = exp(-|q|)``: the error of ``e``
    (relative ``delta``) moves it by ``2 e / (1 + e)^2 * delta <= delta / 2``, and the
    subtraction and the division add at most 2u (the result is at most 1)."""
    q = np.concatenate([np.linspace(-40.0, 40.0, 8001), np.geomspace(1e-20, 800.0, 400), [1e300, -1e300]])
    exact = np.array([float(mpmath.tanh(abs(mpmath.mpf(float(qi))) / 2)) for qi in q])
    bound_double = (EXP_DOUBLE_BOUND_U / 2.0 + 2.0) * U
    assert np.max(np.abs(_map_tanh_half(q) - exact)) <= bound_double
    inf_nan = _map_tanh_half(np.array([np.inf, -np.inf, np.nan]))
    assert inf_nan[0] == 1.0 and inf_nan[1] == 1.0 and np.isnan(inf_nan[2])
