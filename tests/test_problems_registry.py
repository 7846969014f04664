"""The registry, the batch axis, dtypes, seeding and bad input of the test problems."""

from __future__ import annotations

import sys

import numpy as np
import pytest

from problems import PROBLEMS, describe_problems, make_problem, parse_options
from problems.mlp import load_digits_data

SMALL_OPTIONS = {
    "quadratic-deep": {"small": 6, "large": 2, "train_size": 30},
    "logistic": {"samples": 50, "features": 3},
    "digits-mlp": {"hidden": 4, "samples": 30},
}


def build(name: str):
    if name == "digits-mlp":
        pytest.importorskip("sklearn", reason="the digits-mlp problem needs the 'digits' extra")
    return make_problem(name, **SMALL_OPTIONS.get(name, {}))


def test_registry_lists_the_issue_problems():
    assert set(PROBLEMS) == {
        "rosenbrock",
        "beale",
        "branin",
        "rastrigin",
        "styblinski-tang",
        "quadratic",
        "nqm",
        "quadratic-deep",
        "logistic",
        "digits-mlp",
    }
    rows = {row["name"]: row for row in describe_problems()}
    assert rows["branin"]["minimum"] == pytest.approx(0.397887, abs=1e-6)
    assert rows["quadratic-deep"]["dim"] == 100
    assert rows["rosenbrock"]["dim"] == 2 and "noise" in rows["rosenbrock"]["noise"]


@pytest.mark.parametrize("name", sorted(PROBLEMS))
def test_batch_axis_evaluates_every_point_independently(name):
    """A stack of points gives, row by row, what each point gives alone. The two paths may
    sum in a different order inside BLAS, so they agree to rounding: ``1e-12`` relative."""
    problem = build(name)
    rng = np.random.default_rng(0)
    points = problem.default_start() + 0.3 * rng.standard_normal((2, 3, problem.dim))
    values, grads = problem.value(points), problem.gradient(points)
    assert values.shape == (2, 3) and grads.shape == (2, 3, problem.dim)
    for i in range(2):
        for j in range(3):
            assert values[i, j] == pytest.approx(float(problem.value(points[i, j])), rel=1e-12)
            np.testing.assert_allclose(grads[i, j], problem.gradient(points[i, j]), rtol=1e-12, atol=1e-14)
    assert problem.stochastic_gradient(points, rng).shape == points.shape


@pytest.mark.parametrize("name", sorted(PROBLEMS))
def test_float32_in_float32_out(name):
    """float32 points give float32 values and gradients (the optimizers require the
    gradient's dtype to be the parameter's)."""
    problem = build(name)
    x = problem.default_start().astype(np.float32)
    rng = np.random.default_rng(0)
    assert problem.value(x).dtype == np.float32
    assert problem.gradient(x).dtype == np.float32
    assert problem.stochastic_gradient(np.stack([x, x]), rng).dtype == np.float32


@pytest.mark.parametrize("name", sorted(PROBLEMS))
def test_same_seed_same_gradient_noise(name):
    problem = build(name)
    x = np.tile(problem.default_start(), (2, 1))
    a = problem.stochastic_gradient(x, np.random.default_rng(5))
    b = problem.stochastic_gradient(x, np.random.default_rng(5))
    np.testing.assert_array_equal(a, b)


def test_target_loss_is_a_gap_above_a_known_minimum_else_absolute():
    deep = make_problem("quadratic-deep", seed=3)
    assert deep.target_loss() == deep.minimum + deep.target_gap
    assert make_problem("nqm").target_loss() == 0.3


def test_target_loss_without_a_known_minimum_is_absolute():
    pytest.importorskip("sklearn")
    assert make_problem("digits-mlp", hidden=2, samples=10).target_loss() == 0.1


def test_quadratic_deep_is_seeded():
    """Two instances with the same seed are identical; another seed gives another Hessian."""
    a, b, c = make_problem("quadratic-deep"), make_problem("quadratic-deep"), make_problem("quadratic-deep", seed=1)
    np.testing.assert_array_equal(a.hessian, b.hessian)
    np.testing.assert_array_equal(a.data, b.data)
    assert not np.array_equal(a.hessian, c.hessian)
    eigenvalues = np.linalg.eigvalsh(a.hessian)
    assert np.sum(eigenvalues < 1.0) == 90 and np.sum((eigenvalues > 30.0) & (eigenvalues < 60.0)) == 10
    assert eigenvalues.min() > 0.0


def test_quadratic_condition_number():
    problem = make_problem("quadratic", dim=8, condition=1e4, rotate=True, seed=3)
    hessian = np.stack([problem.gradient(e) for e in np.eye(8)])
    assert np.linalg.cond(hessian) == pytest.approx(1e4, rel=1e-9)


def test_nqm_curvature_and_noise_covariance():
    problem = make_problem("nqm", dim=5, batch_size=4.0)
    np.testing.assert_allclose(problem.curvature, 1.0 / np.arange(1, 6))
    np.testing.assert_allclose(problem.noise_variance, problem.curvature / 4.0)


def test_mlp_initial_points_differ_per_run_and_follow_the_rng():
    pytest.importorskip("sklearn")
    problem = make_problem("digits-mlp", hidden=5, samples=20)
    a = problem.initial_points(3, np.random.default_rng(1))
    b = problem.initial_points(3, np.random.default_rng(1))
    np.testing.assert_array_equal(a, b)
    assert not np.array_equal(a[0], a[1])
    np.testing.assert_array_equal(problem.default_start(), problem.start_point(0))
    assert not np.array_equal(
        problem.start_point(0), make_problem("digits-mlp", hidden=5, samples=20, init_seed=5).start_point(0)
    )
    assert 0.0 <= float(problem.accuracy(a[0])) <= 1.0


def test_mlp_without_scikit_learn_says_which_extra(monkeypatch):
    monkeypatch.setitem(sys.modules, "sklearn", None)
    monkeypatch.setitem(sys.modules, "sklearn.datasets", None)
    load_digits_data.cache_clear()
    try:
        with pytest.raises(ImportError, match=r"cprop-ref\[digits\]"):
            make_problem("digits-mlp")
    finally:
        load_digits_data.cache_clear()


def test_unknown_problem_and_option_are_named():
    with pytest.raises(ValueError, match="unknown problem 'rosenbrok'.*rosenbrock"):
        make_problem("rosenbrok")
    with pytest.raises(ValueError, match="no option\\(s\\) dims"):
        make_problem("rosenbrock", dims=3)
    with pytest.raises(ValueError, match="no option 'batch'"):
        parse_options("nqm", ["batch=3"])
    with pytest.raises(ValueError, match="KEY=VALUE"):
        parse_options("nqm", ["dim"])
    with pytest.raises(ValueError, match="dim='x': expected int"):
        parse_options("nqm", ["dim=x"])


def test_parse_options_types():
    assert parse_options("quadratic", ["dim=3", "condition=1e3", "rotate=true", "noise=0.5"]) == {
        "dim": 3,
        "condition": 1000.0,
        "rotate": True,
        "noise": 0.5,
    }
    assert parse_options("nqm", ["batch-size=8"]) == {"batch_size": 8.0}


@pytest.mark.parametrize(
    ("name", "options", "message"),
    [
        ("rosenbrock", {"dim": 1}, "dim=1"),
        ("rosenbrock", {"noise": -1.0}, "noise=-1.0"),
        ("rastrigin", {"dim": 2.5}, "dim=2.5"),
        ("quadratic", {"condition": 0.5}, "condition=0.5"),
        ("nqm", {"batch_size": 0.0}, "batch_size=0.0"),
        ("quadratic-deep", {"batch_size": 0}, "batch_size=0"),
        ("logistic", {"l2": 0.0}, "l2=0.0"),
        ("digits-mlp", {"samples": 5000}, "samples=5000"),
    ],
)
def test_invalid_options_raise_naming_the_option(name, options, message):
    if name == "digits-mlp":
        pytest.importorskip("sklearn")
    with pytest.raises(ValueError, match=message.replace("(", r"\(")):
        make_problem(name, **options)


def test_bad_points_raise_naming_the_problem():
    problem = make_problem("rosenbrock", dim=3)
    with pytest.raises(ValueError, match="rosenbrock: x has shape \\(2,\\)"):
        problem.value(np.zeros(2))
    with pytest.raises(ValueError, match="dtype int64"):
        problem.gradient(np.zeros(3, dtype=np.int64))
    with pytest.raises(ValueError, match="numpy.ndarray"):
        problem.value([0.0, 0.0, 0.0])
    with pytest.raises(ValueError, match="Generator"):
        problem.stochastic_gradient(np.zeros(3), 0)
