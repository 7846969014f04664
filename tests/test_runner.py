"""The runner: reproducible histories, what they record, divergence, progress, optimizer specs."""

from __future__ import annotations

import sys

import numpy as np
import pytest

from cprop_ref import SGD, AdamW, CProp, CPropAdam, CPropSGD
from cprop_ref.runner import OptimizerSpec, parse_optimizer_spec, run
from problems import make_problem


def test_same_seed_same_history_other_seed_other_history():
    problem = make_problem("nqm", dim=6)
    a = run(problem, "cprop-sgd", 50, seed=3, runs=2)
    b = run(problem, "cprop-sgd", 50, seed=3, runs=2)
    c = run(problem, "cprop-sgd", 50, seed=4, runs=2)
    for name in ("loss", "grad_norm", "distance", "scale_mean", "scale_min", "scale_ones"):
        np.testing.assert_array_equal(getattr(a, name), getattr(b, name))
    assert not np.array_equal(a.loss, c.loss)


def test_mlp_start_is_drawn_per_run_from_the_seed():
    pytest.importorskip("sklearn")
    problem = make_problem("digits-mlp", hidden=4, samples=50, batch_size=8)
    a = run(problem, "adam", 3, seed=1, runs=3, record_trajectory=True)
    b = run(problem, "sgd", 3, seed=1, runs=3, record_trajectory=True)
    np.testing.assert_array_equal(a.trajectory[0], b.trajectory[0])  # same seed, same start
    assert not np.array_equal(a.trajectory[0, 0], a.trajectory[0, 1])


@pytest.mark.parametrize("optimizer", ["sgd", "cprop-sgd", "adam", "cprop-adam", "adamw", "cprop-adamw"])
def test_batched_runs_equal_separate_runs_without_noise(optimizer):
    """Without noise every run follows the same deterministic path from its start, so
    ``runs`` rows advanced as one array equal ``runs`` separate runs, bit for bit (the
    optimizers are element-wise)."""
    problem = make_problem("rosenbrock", dim=3)
    starts = np.array([[-1.0, 1.0, 0.5], [0.3, -0.2, 1.5], [1.2, 1.1, 0.9]])
    together = run(problem, optimizer, 30, runs=3, start=starts, record_trajectory=True)
    for k in range(3):
        alone = run(problem, optimizer, 30, runs=1, start=starts[k], record_trajectory=True)
        np.testing.assert_array_equal(together.trajectory[:, k], alone.trajectory[:, 0])
        np.testing.assert_array_equal(together.loss[:, k], alone.loss[:, 0])


def test_history_records_loss_gradient_norm_distance_and_scale():
    problem = make_problem("quadratic", dim=5, noise=0.3)
    history = run(problem, "cprop-sgd:lr=0.3", 40, seed=0, runs=4, record_trajectory=True)
    assert history.steps == 40 and history.runs == 4 and history.lr == 0.3
    assert history.loss.shape == history.grad_norm.shape == history.distance.shape == (41, 4)
    assert history.trajectory.shape == (41, 4, 5)
    np.testing.assert_array_equal(history.loss, problem.value(history.trajectory))
    np.testing.assert_array_equal(history.grad_norm, np.linalg.norm(problem.gradient(history.trajectory), axis=-1))
    np.testing.assert_array_equal(history.distance, problem.distance_to_minimiser(history.trajectory))
    for stat in (history.scale_mean, history.scale_min, history.scale_ones):
        assert stat.shape == (40, 4)
        assert np.all((stat >= 0.0) & (stat <= 1.0))
    assert np.all(history.scale_min <= history.scale_mean)
    # spec: after one non-zero gradient the scale is exactly 1 everywhere
    np.testing.assert_array_equal(history.scale_mean[0], 1.0)
    np.testing.assert_array_equal(history.scale_ones[0], 1.0)


def test_scale_statistics_are_those_of_the_optimizer():
    """The recorded statistics equal the scale of a CProp-SGD driven by the same noise."""
    problem = make_problem("nqm", dim=4)
    history = run(problem, "cprop-sgd", 25, seed=9, runs=2)
    # replay with the runner's noise stream (the second child of the seed sequence)
    noise_rng = np.random.default_rng(np.random.SeedSequence(9).spawn(2)[1])
    x = np.tile(problem.default_start(), (2, 1))
    optimizer = CPropSGD([x], lr=problem.default_lr["sgd"])
    for step in range(25):
        optimizer.step([problem.stochastic_gradient(x, noise_rng)])
        s = optimizer.scales()[0]
        np.testing.assert_array_equal(history.scale_mean[step], s.mean(axis=-1))
        np.testing.assert_array_equal(history.scale_min[step], s.min(axis=-1))
        np.testing.assert_array_equal(history.scale_ones[step], (s == 1.0).mean(axis=-1))
    np.testing.assert_array_equal(history.loss[-1], problem.value(x))


def test_plain_optimizers_have_no_scale_statistics():
    history = run(make_problem("beale"), "adam", 5)
    assert history.scale_mean is None and history.scale_min is None and history.scale_ones is None


def test_divergence_stops_with_a_message_and_keeps_the_history():
    """SGD with ``lr = 0.1`` on Rosenbrock from (-2, 2) overshoots (the largest Hessian
    eigenvalue there is ~ 4170, so ``lr * curvature ~ 400 >> 2``) and the iterates blow up
    to inf within a few dozen steps."""
    problem = make_problem("rosenbrock")
    history = run(problem, "sgd:lr=0.1", 1000, record_trajectory=True)
    assert history.diverged is not None
    assert "diverged at step" in history.diverged and "sgd:lr=0.1 on rosenbrock" in history.diverged
    step = int(history.diverged.split("diverged at step ")[1].split(":")[0])
    assert history.steps == step - 1
    assert np.all(np.isfinite(history.loss)) and history.trajectory.shape[0] == step


def test_steps_to_target():
    problem = make_problem("quadratic", dim=3)
    history = run(problem, "sgd:lr=0.5", 200)
    target = 1e-2
    step = history.steps_to_target(target)
    assert history.mean_loss()[step] <= target < history.mean_loss()[step - 1]
    assert history.steps_to_target(-1.0) is None


def test_factory_and_spec_inputs():
    problem = make_problem("beale")
    history = run(problem, lambda params: CProp(SGD(params, lr=1e-3)), 5)
    assert history.scale_mean.shape == (5, 1)
    spec = parse_optimizer_spec("cprop-sgd:c=3:beta=0.99:lr=0.1:momentum=0.9:nesterov=true:cdf=normal")
    assert spec.options == {
        "cprop_c": 3.0,
        "cprop_beta": 0.99,
        "lr": 0.1,
        "momentum": 0.9,
        "nesterov": True,
        "cprop_cdf": "normal",
    }
    optimizer = spec.build([np.zeros(2)])
    assert isinstance(optimizer, CPropSGD) and optimizer.param_groups[0]["cprop_c"] == 3.0
    wrapped = parse_optimizer_spec("cprop-adamw:c=2:betas=0.8/0.99").build([np.zeros(2)], default_lr=0.01)
    assert isinstance(wrapped, CProp) and isinstance(wrapped.base_optimizer, AdamW)
    assert wrapped.c == 2.0 and wrapped.param_groups[0]["betas"] == (0.8, 0.99)
    assert isinstance(OptimizerSpec("cprop-adam").build([np.zeros(2)], default_lr=0.1), CPropAdam)


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("rmsprop", "unknown optimizer 'rmsprop'"),
        ("sgd:momentum", "'momentum' is not KEY=VALUE"),
        ("sgd:lr=fast", "cannot read lr='fast'"),
        ("sgd:betas=0.9/0.99", "unknown hyperparameter\\(s\\) betas"),
        ("cprop-adam:nesterov=true", "unknown hyperparameter\\(s\\) nesterov"),
        ("sgd:lr=-1", "invalid lr=-1.0"),
    ],
)
def test_bad_optimizer_specs_are_named(text, message):
    with pytest.raises(ValueError, match=message):
        run(make_problem("beale"), text, 1)


def test_bad_run_arguments():
    problem = make_problem("beale")
    with pytest.raises(ValueError, match="steps=-1"):
        run(problem, "sgd", -1)
    with pytest.raises(ValueError, match="runs=0"):
        run(problem, "sgd", 1, runs=0)
    with pytest.raises(ValueError, match="start has shape \\(3,\\)"):
        run(problem, "sgd", 1, start=np.zeros(3))


def test_progress_bar_on_stderr(capsys):
    pytest.importorskip("tqdm")
    run(make_problem("beale"), "adam", 20, progress=True)
    assert "adam on beale" in capsys.readouterr().err


def test_progress_without_tqdm_prints_lines(capsys, monkeypatch):
    monkeypatch.setitem(sys.modules, "tqdm", None)
    run(make_problem("beale"), "adam", 20, progress=True)
    err = capsys.readouterr().err
    assert "adam on beale: 20/20 steps" in err and err.count("\n") == 10


def test_warm_up_leaves_the_run_unchanged():
    """The throwaway warm-up step uses a copy and the exact gradient: the history is the
    same with and without it."""
    problem = make_problem("logistic", samples=40, features=3, noise=0.1)
    a = run(problem, "cprop-adam", 30, seed=5, runs=2, warm_up=True)
    b = run(problem, "cprop-adam", 30, seed=5, runs=2, warm_up=False)
    np.testing.assert_array_equal(a.loss, b.loss)
    np.testing.assert_array_equal(a.scale_mean, b.scale_mean)


def test_progress_by_default_only_on_a_terminal(capsys):
    """Under pytest stderr is captured, not a terminal: no bar unless asked for."""
    run(make_problem("beale"), "adam", 1200)
    assert capsys.readouterr().err == ""
