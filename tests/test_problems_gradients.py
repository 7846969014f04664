"""Hand-derived gradients against finite differences, unbiased stochastic gradients,
zero gradients at the known minimisers, and the NQM's closed-form SGD loss."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from scipy.optimize import rosen, rosen_der
from scipy.stats import norm

from cprop_ref import SGD
from problems import NoisyQuadraticModel, make_problem

EPS = np.finfo(np.float64).eps

#: (registry name, options, half-width of the sampling box around the centre).
#: The boxes cover the region the optimizers visit from the default starts.
CASES = [
    ("rosenbrock", {"dim": 2}, 2.5),
    ("rosenbrock", {"dim": 5}, 2.0),
    ("beale", {}, 3.0),
    ("branin", {}, 7.5),
    ("rastrigin", {"dim": 3}, 3.0),
    ("styblinski-tang", {"dim": 3}, 4.0),
    ("quadratic", {"dim": 6, "condition": 1e3, "rotate": True}, 2.0),
    ("nqm", {"dim": 8}, 2.0),
    ("quadratic-deep", {"small": 9, "large": 3, "train_size": 50, "batch_size": 4}, 2.0),
    ("logistic", {"samples": 60, "features": 4, "batch_size": 5}, 2.0),
    ("digits-mlp", {"hidden": 3, "samples": 40, "batch_size": 6, "l2": 1e-3}, 0.5),
]
IDS = [f"{name}-{i}" for i, (name, _, _) in enumerate(CASES)]


def build(name: str, options: dict) -> object:
    if name == "digits-mlp":
        pytest.importorskip("sklearn", reason="the digits-mlp problem needs the 'digits' extra")
    return make_problem(name, **options)


def centre(problem) -> np.ndarray:
    """The middle of the sampling box: the plot box's centre in 2-D, else the default start."""
    if problem.plot_box is not None and problem.dim == 2:
        return np.array([(lo + hi) / 2 for lo, hi in problem.plot_box])
    return problem.default_start()


def central_differences(f, x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Central differences ``(f(x + h e_i) - f(x - h e_i)) / (2 h)`` with
    ``h_i = eps^(1/3) max(1, |x_i|)`` (the step that balances truncation and rounding)."""
    steps = EPS ** (1 / 3) * np.maximum(1.0, np.abs(x))
    shifts = np.diag(steps)
    return (f(x + shifts) - f(x - shifts)) / (2.0 * steps), steps


@pytest.mark.parametrize(("name", "options", "half_width"), CASES, ids=IDS)
def test_gradient_matches_finite_differences(name, options, half_width):
    """Every component of the gradient agrees with central differences in float64.

    Error of a central difference with step ``h``: truncation ``h^2 |f'''| / 6`` plus
    rounding ``~ eps |f| / h``; with ``h = eps^(1/3)`` (times the scale of ``x_i``) both
    are ``~ eps^(2/3) = 3.7e-11`` times ``|f'''|`` and ``|f|`` (times ``max(1, |x_i|)^2``).
    On these boxes ``|f'''|`` stays below ``1e4 (1 + |f| + |g|)`` (Rosenbrock's largest
    third derivative is ``2400 |x|``, Rastrigin's ``80 pi^3 < 2500``), so the expected error
    is below ``4e-7`` of the scale ``S = (1 + |f| + max |g|) max(1, |x|)^2``; we allow
    ``1e-6 S``. A wrong term or factor in a hand-derived gradient is an O(1) relative error.
    """
    problem = build(name, options)
    dim = problem.dim
    c = centre(problem)

    @settings(max_examples=15 if name == "digits-mlp" else 40)
    @given(st.lists(st.floats(-1.0, 1.0), min_size=dim, max_size=dim))
    def check(offsets):
        x = c + half_width * np.array(offsets)
        g = problem.gradient(x)
        fd, _ = central_differences(problem.value, x)
        scale = (1.0 + abs(float(problem.value(x))) + np.max(np.abs(g))) * max(1.0, np.max(np.abs(x))) ** 2
        np.testing.assert_allclose(g, fd, rtol=0, atol=1e-6 * scale)

    check()


def test_rosenbrock_is_scipys_definition():
    """Same formula as ``scipy.optimize.rosen`` / ``rosen_der``; the two evaluate the same sums
    in a different order, so they agree to a few ulps of the largest term (``1e-13`` relative)."""
    rng = np.random.default_rng(1)
    problem = make_problem("rosenbrock", dim=7)
    for _ in range(20):
        x = rng.uniform(-2, 2, 7)
        assert problem.value(x) == pytest.approx(rosen(x), rel=1e-13)
        np.testing.assert_allclose(
            problem.gradient(x), rosen_der(x), rtol=1e-13, atol=1e-13 * np.abs(rosen_der(x)).max()
        )


#: Problems with their noise switched on, for the unbiasedness test.
NOISY_CASES = [
    ("rosenbrock", {"dim": 3, "noise": 0.5}),
    ("beale", {"noise": 0.5}),
    ("branin", {"noise": 0.5}),
    ("rastrigin", {"dim": 3, "noise": 0.5}),
    ("styblinski-tang", {"dim": 3, "noise": 0.5}),
    ("quadratic", {"dim": 5, "rotate": True, "noise": 0.5}),
    ("nqm", {"dim": 6, "batch_size": 2.0}),
    ("nqm", {"dim": 6, "batch_size": 2.0, "noise": 0.3}),
    ("quadratic-deep", {}),
    ("logistic", {"batch_size": 4}),
    ("logistic", {"batch_size": 4, "noise": 0.2}),
    ("digits-mlp", {"hidden": 8, "batch_size": 8}),
]


@pytest.mark.parametrize(("name", "options"), NOISY_CASES, ids=[f"{n}-{i}" for i, (n, _) in enumerate(NOISY_CASES)])
def test_stochastic_gradient_is_unbiased(name, options):
    """The mean of ``K`` stochastic gradients at a point is within sampling error of the
    exact gradient, component by component.

    Statistic: ``z_i = (mean_i - g_i) / (sd_i / sqrt(K))`` with the sample standard
    deviation ``sd_i``; under unbiasedness ``z_i`` is approximately standard normal (CLT,
    ``K = 3000`` draws of a bounded or Gaussian variable). Two-sided threshold at level
    ``1e-6 / dim`` per component (Bonferroni): the family-wise false-alarm rate of the test
    is at most ``1e-6`` (it is seeded, so it either always passes or always fails).
    Components with no noise at all (``sd_i = 0``: pixels that are zero in every digit
    image) must match to rounding, ``1e-12`` of the gradient's scale.
    """
    problem = build(name, options)
    draws = 3000
    rng = np.random.default_rng(12345)
    x = problem.default_start() + 0.1 * rng.standard_normal(problem.dim)
    samples = problem.stochastic_gradient(np.tile(x, (draws, 1)), rng)
    exact = problem.gradient(x)
    mean, sd = samples.mean(axis=0), samples.std(axis=0, ddof=1)
    threshold = norm.isf(1e-6 / problem.dim / 2)
    noisy = sd > 1e-12 * (1 + np.abs(exact).max())
    z = (mean[noisy] - exact[noisy]) / (sd[noisy] / np.sqrt(draws))
    assert np.max(np.abs(z), initial=0.0) < threshold, f"max |z| = {np.max(np.abs(z)):.2f} >= {threshold:.2f}"
    np.testing.assert_allclose(mean[~noisy], exact[~noisy], rtol=0, atol=1e-12 * (1 + np.abs(exact).max()))
    assert noisy.sum() >= problem.dim // 2  # the noise is really there


def test_unbiasedness_statistic_detects_a_biased_gradient():
    """The z-test above has power: a 2% bias in the NQM's gradient mean is caught.

    At ``x = 1``, ``g_i = h_i`` with noise sd ``sqrt(h_i / 2)``; a bias of ``0.02 h_1 = 0.02``
    in the first component is ``0.02 / (0.71 / sqrt(3000)) = 1.5`` standard errors, far
    below the threshold, but a bias of ``0.2 h_1`` is ``15`` standard errors, above ``5.6``.
    """
    problem = NoisyQuadraticModel(dim=6, batch_size=2.0)
    draws = 3000
    rng = np.random.default_rng(7)
    x = np.ones(6)
    samples = problem.stochastic_gradient(np.tile(x, (draws, 1)), rng)
    samples[:, 0] += 0.2 * problem.curvature[0]
    z = (samples.mean(axis=0) - problem.gradient(x)) / (samples.std(axis=0, ddof=1) / np.sqrt(draws))
    assert abs(z[0]) > norm.isf(1e-6 / 6 / 2)


MINIMISER_CASES = [
    ("rosenbrock", {"dim": 4}),
    ("beale", {}),
    ("branin", {}),
    ("rastrigin", {"dim": 3}),
    ("styblinski-tang", {"dim": 3}),
    ("quadratic", {"dim": 5, "rotate": True}),
    ("nqm", {"dim": 7}),
    ("quadratic-deep", {}),
    ("logistic", {}),
]


@pytest.mark.parametrize(("name", "options"), MINIMISER_CASES, ids=[n for n, _ in MINIMISER_CASES])
def test_known_minimisers_have_zero_gradient_and_the_minimum(name, options):
    """At every known minimiser the gradient vanishes and the value is the stated minimum.

    The minimisers are exact or accurate to a few ulps (Branin's ``pi``, Styblinski-Tang's
    Newton-polished root, the logistic regression's Newton solution), so the gradient is a
    few ulps of the terms it sums: with Hessian norms below ``1e3`` here (Rosenbrock at the
    minimiser: ``1002``) that is below ``1e3 * 10 eps * max(1, |x*|)``; we allow ``1e-11``
    times ``max(1, |x*|)``. The value agrees with ``minimum`` to ``1e-12`` relative.
    """
    problem = build(name, options)
    minimisers = problem.minimisers
    assert minimisers.shape[1] == problem.dim
    scale = max(1.0, np.abs(minimisers).max())
    np.testing.assert_allclose(problem.gradient(minimisers), 0.0, atol=1e-11 * scale)
    np.testing.assert_allclose(problem.value(minimisers), problem.minimum, rtol=1e-12, atol=1e-14)
    np.testing.assert_allclose(problem.distance_to_minimiser(minimisers), 0.0, atol=1e-14)


def test_published_minima():
    """Branin's three minima are 0.397887 at (-pi, 12.275), (pi, 2.275), (9.42478, 2.475);
    Styblinski-Tang's minimiser is -2.903534 per coordinate with -39.16617 per dimension."""
    branin = make_problem("branin")
    np.testing.assert_allclose(branin.minimisers, [[-np.pi, 12.275], [np.pi, 2.275], [9.42478, 2.475]], atol=1e-5)
    assert branin.minimum == pytest.approx(0.397887, abs=5e-7)
    tang = make_problem("styblinski-tang", dim=4)
    np.testing.assert_allclose(tang.minimisers, -2.903534, atol=5e-7)
    assert tang.minimum == pytest.approx(4 * -39.16617, abs=4 * 5e-6)


def test_nqm_closed_form_matches_simulated_sgd():
    """The mean loss of ``R`` independent SGD runs (one ``(R, dim)`` array, the optimizer
    is element-wise) matches ``expected_sgd_loss`` at every checked step.

    ``z_t = (mean loss_t - E[loss_t]) / (sd_t / sqrt(R))`` is approximately standard
    normal (``R = 20000``); two-sided threshold at ``1e-6 / (number of checked steps)``
    (Bonferroni): false-alarm rate at most ``1e-6``.
    """
    problem = NoisyQuadraticModel(dim=4, batch_size=2.0, noise=0.1)
    runs, steps, lr = 20000, 40, 0.8
    rng = np.random.default_rng(2024)
    x = np.tile(problem.default_start(), (runs, 1))
    optimizer = SGD([x], lr=lr)
    expected = problem.expected_sgd_loss(lr, steps)
    checked = range(0, steps + 1, 4)
    threshold = norm.isf(1e-6 / len(checked) / 2)
    losses = [problem.value(x)]
    for _ in range(steps):
        optimizer.step([problem.stochastic_gradient(x, rng)])
        losses.append(problem.value(x))
    for t in checked:
        loss = losses[t]
        if t == 0:
            assert loss.mean() == pytest.approx(expected[0], rel=1e-15)
            continue
        z = (loss.mean() - expected[t]) / (loss.std(ddof=1) / np.sqrt(runs))
        assert abs(z) < threshold, f"step {t}: simulated {loss.mean():.5g}, closed form {expected[t]:.5g}, z={z:.2f}"


def test_nqm_closed_form_without_noise_is_the_deterministic_recursion():
    """With no gradient noise (``batch_size`` huge, ``noise = 0``) SGD is deterministic and
    the closed form is ``0.5 sum h (1 - lr h)^(2t) x0^2``; both sides agree to ``1e-12``
    relative (a ``dim``-term sum of products of ``t`` factors, well within ``100 t eps``)."""
    problem = NoisyQuadraticModel(dim=5, batch_size=1e300)
    x = problem.default_start()
    expected = problem.expected_sgd_loss(1.3, 30)
    for t in range(31):
        assert expected[t] == pytest.approx(float(problem.value(x)), rel=1e-12)
        x = x - 1.3 * problem.gradient(x)


def test_nqm_closed_form_handles_lr_h_equal_two():
    """Where ``lr h_i = 2`` (``r_i = 1``) the geometric sum is ``t``, not ``0/0``."""
    problem = NoisyQuadraticModel(dim=1, batch_size=1.0)
    expected = problem.expected_sgd_loss(2.0, 3)
    # x0^2 = 1 stays; noise adds lr^2 c = 4 per step: E[x^2] = 1 + 4 t, loss = 0.5 (1 + 4 t)
    np.testing.assert_allclose(expected, 0.5 * (1.0 + 4.0 * np.arange(4)), rtol=1e-15)
