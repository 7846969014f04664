"""Extremes. From finite input, on both backends:

- no NaN (in parameters, state or scale), and the scale stays in [0, 1];
- no floating-point warning or error escapes a step, even under ``np.seterr(all="raise")``
  (the pure functions are silent under NumPy's default error state and ignore underflow);
- the eps = 0 limits (``scale.standard_error``, ``scale.standardized_mean``): where
  ``n - 1 + eps = 0`` (t = 1, or beta = 0) the one-sample variance is exactly 0, so
  ``se = eps = 0``, and ``z = -sign(m_hat) inf``: ``s = min(c, 1)`` for a gradient != 0,
  ``s = 0`` for a gradient = 0;
- ``c = 0`` gives ``s = 0``: no CProp optimizer moves a parameter, whatever the gradient;
- beta = 0.99999 over 10^6 steps: moments within the derived rounding bound of their
  closed form, scale 1 for a constant gradient, small for alternating signs.

Extreme inputs: gradients of +-1e-300, +-1e+300, the smallest subnormal and 0 (float64);
float32 from its subnormals to 1e30; float16 parameters and gradients up to 65504 and
down to its smallest subnormal (6e-8), computed in float32 as the optimizers do.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from cprop_ref import CDF_NAMES, CPropSGD
from cprop_ref.scale import CPropStats, bias_correction, cprop_scale, cprop_step, init_stats, update_moments
from tests.optimizer_catalogue import BY_NAME, default_kernel_variant, swept_cdf
from tests.reliability_support import BACKENDS

SUBNORMAL64 = float(np.finfo(np.float64).smallest_subnormal)
MAGNITUDES = {
    np.float64: [0.0, SUBNORMAL64, 1e-300, 1e-150, 1.0, 1e150, 1e300],
    np.float32: [0.0, float(np.finfo(np.float32).smallest_subnormal), 1e-38, 1e-20, 1.0, 1e20, 1e30],
    np.float16: [0.0, float(np.finfo(np.float16).smallest_subnormal), 6.1e-5, 1e-2, 1.0, 1e3, 65504.0],
}
CPROP_KINDS = ("CPropSGD", "CPropAdam", "CProp(SGD)", "CProp(Adam)")
KINDS = ("SGD", "Adam", *CPROP_KINDS)


def _optimizer(kind, params, backend, beta, c, eps, cdf, lr):
    """``kind`` with learning rate ``lr`` (SGD with momentum 0.9) and CProp's ``beta, c, eps, cdf``."""
    info = BY_NAME[kind]
    hyper = {"lr": lr} | ({"momentum": 0.9} if "momentum" in info.hyperparameters else {})
    if info.cprop:
        if backend == "numba" and "betas" in info.hyperparameters:  # Adam's default betas: v shared at 0.999
            cdf = swept_cdf(
                cdf, default_kernel_variant({"betas": (0.9, 0.999), "weight_decay": 0.0, "cprop_beta": beta})
            )
        hyper |= {"cprop_beta": beta, "cprop_c": c, "cprop_eps": eps, "cprop_cdf": cdf}
    return info.make(params, backend=backend, **hyper)


def _signed(draw, dtype, size):
    magnitudes = draw(st.lists(st.sampled_from(MAGNITUDES[dtype]), min_size=size, max_size=size))
    signs = draw(st.lists(st.sampled_from([-1.0, 1.0]), min_size=size, max_size=size))
    return np.array([m * s for m, s in zip(magnitudes, signs)]).astype(dtype)


@st.composite
def extreme_runs(draw):
    dtype = draw(st.sampled_from(list(MAGNITUDES)))
    size = 6
    return dict(
        kind=draw(st.sampled_from(KINDS)),
        backend=draw(st.sampled_from(BACKENDS)),
        dtype=dtype,
        beta=draw(st.sampled_from([0.0, 0.5, 0.999, 0.99999])),
        c=draw(st.sampled_from([0.0, 1.0, 5.0])),
        eps=draw(st.sampled_from([0.0, 1e-8])),
        cdf=draw(st.sampled_from(CDF_NAMES)),
        lr=draw(st.sampled_from([1e-3, 0.1])),
        start=_signed(draw, dtype, size),
        grads=[_signed(draw, dtype, size) for _ in range(draw(st.integers(1, 6)))],
    )


@given(extreme_runs())
@settings(max_examples=200)
def test_extreme_inputs_give_no_nan_no_warning_and_a_scale_in_0_1(run):
    """The parameter may overflow to +-inf only in float16 (a float32 update past 65504,
    cast back); with float64 gradients up to 1e300 and at most 6 steps nothing overflows."""
    param = run["start"].copy()
    optimizer = _optimizer(
        run["kind"], [param], run["backend"], run["beta"], run["c"], run["eps"], run["cdf"], run["lr"]
    )
    for g in run["grads"]:
        with np.errstate(all="raise"):  # and pytest turns any warning into an error
            optimizer.step([g])
        assert not np.isnan(param).any(), f"NaN parameter: {param!r}"
        if run["dtype"] != np.float16:
            assert np.isfinite(param).all(), f"overflow: {param!r}"
        if run["kind"] in CPROP_KINDS:
            with np.errstate(all="raise"):
                (s,) = optimizer.scales()
            assert not np.isnan(s).any() and (s >= 0.0).all() and (s <= 1.0).all(), s
    tree = optimizer.state_dict()
    for state in tree["state"] + tree.get("base", {"state": []})["state"]:
        for value in state.values():
            if isinstance(value, np.ndarray):
                assert not np.isnan(value).any(), state


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("kind", CPROP_KINDS)
@pytest.mark.parametrize("dtype", list(MAGNITUDES))
def test_c_zero_never_moves_a_parameter(kind, dtype, backend):
    """s = 0 everywhere: every parameter stays exactly as it was, even a float16 one that
    the base optimizer alone would take past 65504 (0 * inf is no update, not NaN)."""
    rng = np.random.default_rng(0)
    top = MAGNITUDES[dtype][-1]
    start = np.array([top, -top, 0.0, 1.0, MAGNITUDES[dtype][1], -1.0]).astype(dtype)
    param = start.copy()
    optimizer = _optimizer(kind, [param], backend, 0.9, 0.0, 1e-8, "bft", 10.0)
    for _ in range(5):
        g = (rng.choice(MAGNITUDES[dtype], 6) * rng.choice([-1.0, 1.0], 6)).astype(dtype)
        g[:2] = [-top, top]  # push the extreme parameters further out
        optimizer.step([g])
        assert param.tobytes() == start.tobytes(), param
        assert (optimizer.scales()[0] == 0.0).all()


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("kind", CPROP_KINDS)
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_an_overflowed_base_update_scaled_by_zero_is_no_update(kind, dtype, backend):
    """Gradients at the dtype's largest value: SGD's momentum buffer overflows to inf and
    the squares overflow, so s = 0; 0 * inf must be no update (``scale.scale_update``,
    the wrapper's own rule), not NaN. Plain SGD itself reaches +-inf here, as torch does."""
    top = float(np.finfo(dtype).max)
    start = np.array([0.0, 1.0, -1.0]).astype(dtype)
    param = start.copy()
    optimizer = _optimizer(kind, [param], backend, 0.9, 1.0, 1e-8, "bft", 0.1)
    for t in range(4):
        with np.errstate(all="raise"):
            optimizer.step([np.full(3, top, dtype)])
        assert not np.isnan(param).any(), (t, param)
    (s,) = optimizer.scales()
    assert (s == 0.0).all()


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("kind", ["CPropSGD", "CPropAdam", "CProp(SGD)"])
def test_beta_zero_after_an_overflowed_square(kind, backend):
    """beta = 0 keeps no memory: a gradient whose square overflowed (v = inf) must not
    leave 0 * inf = NaN in v at the next step (``scale.update_moments``)."""
    param = np.zeros(2, np.float32)
    optimizer = _optimizer(kind, [param], backend, 0.0, 1.0, 1e-8, "bft", 1e-3)
    optimizer.step([np.array([-1e20, 1.0], np.float32)])  # (-1e20)^2 overflows float32
    optimizer.step([np.array([0.5, 1.0], np.float32)])
    tree = optimizer.state_dict()
    (state,) = tree["state"]
    v = state.get("cprop_v", state.get("exp_avg_sq"))
    np.testing.assert_array_equal(v, np.array([0.25, 1.0], np.float32))
    assert not np.isnan(param).any()


@pytest.mark.parametrize("cdf", CDF_NAMES)
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_eps_zero_limits_at_the_first_step_and_with_beta_zero(dtype, cdf):
    """n - 1 + eps = 0: se = 0 and s = min(c, 1) where m != 0, s = 0 where m == 0, for every
    magnitude from the smallest subnormal to the largest finite value. (With beta = 0.9
    the first EMA ``0.1 * g`` of the smallest subnormal underflows to 0: m == 0, s = 0.)"""
    info = np.finfo(dtype)
    values = [0.0, float(info.smallest_subnormal), float(info.tiny), 1.0, float(info.max)]
    g = np.array([v * s for v in values for s in (1.0, -1.0)]).astype(dtype)
    for c in (0.3, 1.0, 4.0):
        stats, s = cprop_step(init_stats(g.shape, g.dtype), g, 0.9, c, 0.0, cdf)
        assert (stats.m == 0.0).sum() == 4  # the zeros and the subnormals
        np.testing.assert_array_equal(s, np.where(stats.m != 0.0, dtype(min(c, 1.0)), dtype(0.0)))
        stats = init_stats(g.shape, g.dtype)
        for t in range(4):  # beta = 0: every step holds one sample, m = g
            stats, s = cprop_step(stats, np.roll(g, t), 0.0, c, 0.0, cdf)
            np.testing.assert_array_equal(stats.m, np.roll(g, t))
            np.testing.assert_array_equal(s, np.where(np.roll(g, t) != 0.0, dtype(min(c, 1.0)), dtype(0.0)))


def test_eps_zero_with_a_zero_history_is_zero_not_nan():
    """t = 3 with eps = 0: zero moments give se = 0 and m_hat = 0: the limit z = 0, s = 0."""
    stats = CPropStats(np.zeros(2), np.zeros(2), 3)
    np.testing.assert_array_equal(cprop_scale(stats, 0.9, 1.0, 0.0, "normal"), [0.0, 0.0])


# -- beta = 0.99999 over 10^6 steps -------------------------------------------------------

LONG_BETA = 0.99999
LONG_STEPS = 1_000_000
CHECK_EVERY = 50_000
#: Columns of the long run: what each element is fed, step t = 1, 2, ...
LONG_COLUMNS = ("constant 1", "alternating +-1", "constant -1e-300", "constant 1e150", "constant 1e300", "zero")


def _long_gradient(t: int) -> np.ndarray:
    return np.array([1.0, (-1.0) ** t, -1e-300, 1e150, 1e300, 0.0])


def _closed_form_moments(t: int) -> tuple[np.ndarray, np.ndarray]:
    """Exact ``m_t`` and ``v_t`` of the columns (beta is the float64 value; ``1 - beta`` is
    exact in float64 by Sterbenz's lemma). ``1 - beta^t = -expm1(t log beta)``."""
    one_minus_bt = -math.expm1(t * math.log(LONG_BETA))
    alternating = (1.0 - LONG_BETA) * (-1.0) ** t * (1.0 - (-LONG_BETA) ** t) / (1.0 + LONG_BETA)
    m = np.array([one_minus_bt, alternating, -1e-300 * one_minus_bt, 1e150 * one_minus_bt, 1e300 * one_minus_bt, 0.0])
    v = np.array([one_minus_bt, one_minus_bt, 0.0, 1e300 * one_minus_bt, np.inf, 0.0])
    return m, v


def _moment_error_bound(t: int, magnitude: np.ndarray) -> np.ndarray:
    """``|m_computed - m_exact| <= 3 u |g| (1 - beta^t) / (1 - beta) + 16 u |g|``.

    Each update rounds two products and a sum, each by at most ``u`` times a magnitude
    ``<= |g|`` (``|m| <= max |g|``): at most ``2u|g|(1 + u)`` per step, rounded up to
    ``3u|g|``, and the error carried over shrinks by beta. ``16 u |g|`` covers the
    float64 evaluation of the closed form (``expm1``, ``log``, products).
    """
    u = 2.0**-53
    return 3.0 * u * magnitude * bias_correction(LONG_BETA, t) / (1.0 - LONG_BETA) + 16.0 * u * magnitude


def _check_long_run_point(t: int, m: np.ndarray, v: np.ndarray, s: np.ndarray) -> None:
    exact_m, exact_v = _closed_form_moments(t)
    # "<=": a bound that is 0 (the zero column) must be met exactly.
    assert (np.abs(m - exact_m) <= _moment_error_bound(t, np.abs(_long_gradient(t)))).all(), (t, m, exact_m)
    finite = np.isfinite(exact_v)
    v_bound = _moment_error_bound(t, _long_gradient(t)[finite] ** 2)
    assert (np.abs(v[finite] - exact_v[finite]) <= v_bound).all(), (t, v, exact_v)
    assert np.isinf(v[4])  # 1e300 squared overflows: se = inf, s = 0 (the documented rule)
    assert not np.isnan(s).any() and (s >= 0).all() and (s <= 1).all()
    assert s[0] == 1.0 and s[3] == 1.0  # a constant sign is certain
    assert s[2] == 0.0  # 1e-300 is nothing next to eps = 1e-8
    assert s[5] == 0.0
    # One sample has no spread (t = 1): s = 1 even for 1e300; from t = 2 on the overflowed v rules.
    assert s[4] == (1.0 if t == 1 else 0.0)
    if t >= 100:
        # Alternating signs: |m_hat| <= (1 - beta) / (1 + beta) / b and se ~ 1 / sqrt(n - 1),
        # so |z| <= 0.02 from t = 100 on and s <= 2 * max density * |z| < 0.02.
        assert s[1] < 0.02


@pytest.mark.slow
def test_beta_0_99999_over_a_million_steps():
    """The pure functions of the reference (``update_moments``, ``cprop_scale``) on a tiny
    tensor, 10^6 steps, checked every 50 000 steps (and at the first ones). About 13 s of
    CPU: marked slow, with the same run through the optimizers below."""
    m, v = np.zeros(6), np.zeros(6)
    checked = 0
    for t in range(1, LONG_STEPS + 1):
        m, v = update_moments(m, v, _long_gradient(t), LONG_BETA)
        if t in (1, 2, 3, 100) or t % CHECK_EVERY == 0:
            s = cprop_scale(CPropStats(m, v, t), LONG_BETA, 1.0, 1e-8, "bft")
            _check_long_run_point(t, m, v, s)
            checked += 1
    assert checked == 4 + LONG_STEPS // CHECK_EVERY


@pytest.mark.slow
@pytest.mark.parametrize("backend", BACKENDS)
def test_beta_0_99999_over_a_million_optimizer_steps(backend):
    """The same run through ``CPropSGD`` (lr = 0, so the parameter never moves): the NumPy
    backend must match the pure functions bit for bit; every backend must satisfy the
    bounds. About a minute per backend: marked slow."""
    param = np.zeros(6)
    optimizer = CPropSGD([param], lr=0.0, cprop_beta=LONG_BETA, cprop_cdf="bft", backend=backend)
    m, v = np.zeros(6), np.zeros(6)
    for t in range(1, LONG_STEPS + 1):
        g = _long_gradient(t)
        optimizer.step([g])
        m, v = update_moments(m, v, g, LONG_BETA)
        if t in (1, 2, 3, 100) or t % CHECK_EVERY == 0:
            state = optimizer.state_dict()["state"][0]
            assert state["step"] == t
            (s,) = optimizer.scales()
            _check_long_run_point(t, state["cprop_m"], state["cprop_v"], s)
            if backend == "numpy":
                assert state["cprop_m"].tobytes() == m.tobytes() and state["cprop_v"].tobytes() == v.tobytes()
    assert (param == 0.0).all()
