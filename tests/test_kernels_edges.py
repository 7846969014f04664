"""The one loops' fast path for ``z`` (``cprop_ref.kernels.scale.standardized_unguarded``).

The claim the fast path rests on: the unguarded ``z`` (the guarded formula's operations minus
its guards for the edges of the range) **equals the guarded ``z`` bit for bit wherever it is
finite**, so that only elements with a non-finite unguarded ``z`` need the guarded formula
(the one loops redo exactly those). Hypothesis draws the moments over every float of the
dtype (zeros, subnormals, the largest values, infinities, NaN) and CProp's scalars from real
hyperparameters (``beta`` from 0 to 0.99999, ``eps`` 0 or not, the first steps where
``n - 1 = 0``), plus values near the overflow of ``m_hat`` and ``m_hat^2``.
"""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from cprop_ref.kernels.scale import cprop_scalars, standardized, standardized_unguarded
from tests.hypothesis_budget import examples

DTYPES = [np.float32, np.float64]


def _moment(dtype: type) -> st.SearchStrategy:
    width = 32 if dtype == np.float32 else 64
    largest = float(np.finfo(dtype).max)
    return st.one_of(
        st.floats(min_value=-10.0, max_value=10.0, width=width),  # ordinary moments
        st.floats(width=width, allow_nan=True, allow_infinity=True),
        st.floats(min_value=0.5 * largest, max_value=largest, width=width).flatmap(lambda x: st.sampled_from([x, -x])),
        st.floats(min_value=-float(dtype(largest**0.5 * 2)), max_value=float(dtype(largest**0.5 * 2)), width=width),
    )


def _bits(x: float, dtype: type) -> bytes:
    return np.asarray(x, dtype=dtype).tobytes()


def _scalars(dtype: type, beta: float, c: float, eps: float, t: int) -> list:
    values = cprop_scalars(beta, c, eps, t, float(np.finfo(dtype).max))
    return [dtype(v) for v in values]


@pytest.mark.parametrize("dtype", DTYPES)
@settings(max_examples=examples(1000))  # scalar calls, about a second: more draws than the profile's 60
@given(data=st.data())
def test_the_unguarded_z_is_the_guarded_one_wherever_it_is_finite(dtype, data):
    beta = data.draw(st.sampled_from([0.0, 0.5, 0.9, 0.999, 0.99999]), label="beta")
    eps = data.draw(st.sampled_from([0.0, 1e-8, 1.0]), label="eps")
    t = data.draw(st.one_of(st.integers(1, 3), st.integers(min_value=1, max_value=10**6)), label="t")
    m = dtype(data.draw(_moment(dtype), label="m"))
    v = dtype(data.draw(_moment(dtype), label="v"))
    _, _, inv_bias, inv_den, one_sample, eps_, _, _, zero, infinity, largest = _scalars(dtype, beta, 1.0, eps, t)
    guarded = standardized(m, v, inv_bias, inv_den, one_sample, eps_, zero, infinity, largest)
    unguarded = standardized_unguarded(m, v, inv_bias, inv_den, one_sample, eps_, zero)
    # Numba hands float64 results back as Python floats: compared as the dtype's bits.
    if np.isfinite(unguarded):
        assert _bits(unguarded, dtype) == _bits(guarded, dtype), (m, v, guarded, unguarded)


@pytest.mark.parametrize("dtype", DTYPES)
def test_every_edge_makes_the_unguarded_z_non_finite(dtype):
    """The edges the guards exist for, one by one: the unguarded value is not finite there, so
    the one loops redo the element with the guards."""
    largest = np.finfo(dtype).max
    cases = {
        "m_hat overflows (finite m)": (largest, largest, 0.9, 1e-8, 5),
        "m_hat^2 overflows with v_hat = inf": (np.sqrt(largest) * 2, np.inf, 0.999, 1e-8, 5),
        "se = 0 (eps = 0, zero variance)": (dtype(0.5), dtype(0.25), 0.0, 0.0, 3),
        "se = 0 with m_hat = 0": (dtype(0.0), dtype(0.0), 0.9, 0.0, 3),
    }
    for name, (m, v, beta, eps, t) in cases.items():
        _, _, inv_bias, inv_den, one_sample, eps_, _, _, zero, infinity, big = _scalars(dtype, beta, 1.0, eps, t)
        m, v = dtype(m), dtype(v)
        guarded = standardized(m, v, inv_bias, inv_den, one_sample, eps_, zero, infinity, big)
        unguarded = standardized_unguarded(m, v, inv_bias, inv_den, one_sample, eps_, zero)
        assert not np.isfinite(unguarded), (name, guarded, unguarded)
