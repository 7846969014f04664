"""The runner: reproducible histories, what they record, divergence, progress, optimizer specs."""

from __future__ import annotations

import sys

import numpy as np
import pytest

from cprop_ref import SGD, AdamW, CProp, CPropAdam, CPropSGD
from cprop_ref.runner import OptimizerSpec, parse_optimizer_spec, run
from problems import make_problem
from problems.streams import RunStreams


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
    # replay with the runner's noise streams (one per run: seeds 9 and 10)
    noise_rng = RunStreams([9, 10])
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


def test_divergence_freezes_the_run_with_a_message():
    """SGD with ``lr = 0.1`` on Rosenbrock from (-2, 2) overshoots (the largest Hessian
    eigenvalue there is ~ 4170, so ``lr * curvature ~ 400 >> 2``) and the iterates blow up
    to inf within a few dozen steps: the run is marked diverged at that step, its entries
    are NaN from there on and its point stays at the last finite one."""
    problem = make_problem("rosenbrock")
    history = run(problem, "sgd:lr=0.1", 1000, record_trajectory=True)
    assert history.diverged is not None
    assert "1 of 1 run(s) diverged" in history.diverged and "sgd:lr=0.1 on rosenbrock" in history.diverged
    step = int(history.diverged_at[0])
    assert 1 <= step < 1000 and f"at step {step}" in history.diverged
    assert history.loss.shape == (1001, 1)
    assert np.all(np.isfinite(history.loss[:step])) and np.all(np.isnan(history.loss[step:]))
    assert np.all(np.isnan(history.mean_loss()))  # no run left to average
    np.testing.assert_array_equal(
        history.trajectory[step:, 0], np.broadcast_to(history.trajectory[step - 1, 0], (1001 - step, 2))
    )
    assert history.best_loss[0] == np.min(history.loss[:step, 0])


def test_divergence_is_per_run_and_the_others_go_on():
    """Run 1 starts where SGD at lr = 1e-3 overshoots (curvature ~ 1e4 at (5, 5)); runs 0
    and 2 go on exactly as they do alone, and the averages leave run 1 out."""
    problem = make_problem("rosenbrock", noise=1.0)
    starts = np.array([[-2.0, 2.0], [5.0, 5.0], [1.5, 1.0]])
    together = run(problem, "sgd:lr=1e-3", 300, seed=4, runs=3, start=starts, record_trajectory=True)
    step = int(together.diverged_at[1])
    assert step > 0 and together.diverged_at[0] == together.diverged_at[2] == -1
    assert together.diverged_count == 1 and list(together.finished) == [True, False, True]
    for k in (0, 2):
        alone = run(problem, "sgd:lr=1e-3", 300, seed=4 + k, start=starts[k], record_trajectory=True)
        np.testing.assert_array_equal(together.loss[:, k], alone.loss[:, 0])
        np.testing.assert_array_equal(together.trajectory[:, k], alone.trajectory[:, 0])
    assert np.all(np.isnan(together.loss[step:, 1])) and np.all(np.isfinite(together.loss[:step, 1]))
    np.testing.assert_array_equal(together.mean_loss(), together.loss[:, [0, 2]].mean(axis=1))


#: Problems whose gradient is element-wise per run (no matrix product over a batch): their
#: batched runs equal single runs bit for bit; the others within rounding (1e-12 relative:
#: BLAS may group a batched product's sums differently, 1e-16 per operation over a few
#: hundred operations per step and 40 steps stays far below it).
ELEMENTWISE = {
    "rosenbrock": {"dim": 3, "noise": 0.5},
    "beale": {"noise": 0.1},
    "branin": {"noise": 0.5},
    "rastrigin": {"dim": 3, "noise": 0.5},
    "styblinski-tang": {"dim": 3, "noise": 0.5},
    "quadratic": {"dim": 6, "noise": 0.1},
    "nqm": {"dim": 6},
}
BATCHED_PRODUCTS = {
    "quadratic-deep": {"small": 6, "large": 2, "train_size": 40, "batch_size": 8},
    "logistic": {"samples": 60, "features": 4, "batch_size": 8},
    "digits-mlp": {"hidden": 4, "samples": 60, "batch_size": 8, "noise": 0.01},
}


@pytest.mark.parametrize("name", [*ELEMENTWISE, *BATCHED_PRODUCTS])
def test_row_i_of_a_batch_equals_a_single_run_with_seed_plus_i(name):
    if name == "digits-mlp":
        pytest.importorskip("sklearn")
    problem = make_problem(name, **{**ELEMENTWISE, **BATCHED_PRODUCTS}[name])
    optimizer = "cprop-adam" if name in ("nqm", "logistic", "beale") else "cprop-sgd:momentum=0.5"
    batch = run(problem, optimizer, 40, seed=7, runs=4, record_trajectory=True)
    for i in range(4):
        alone = run(problem, optimizer, 40, seed=7 + i, record_trajectory=True)
        for field in ("loss", "grad_norm", "trajectory", "scale_mean"):
            got, want = getattr(batch, field)[:, i], getattr(alone, field)[:, 0]
            if name in ELEMENTWISE:
                np.testing.assert_array_equal(got, want, err_msg=f"{name} {field} run {i}")
            else:
                np.testing.assert_allclose(got, want, rtol=1e-12, atol=0, err_msg=f"{name} {field} run {i}")


def test_the_first_runs_of_a_larger_batch_are_the_smaller_batch():
    problem = make_problem("rosenbrock", noise=2.0)
    four = run(problem, "cprop-sgd", 60, seed=2, runs=4)
    eight = run(problem, "cprop-sgd", 60, seed=2, runs=8)
    np.testing.assert_array_equal(four.loss, eight.loss[:, :4])
    np.testing.assert_array_equal(four.mean_scale, eight.mean_scale[:4])


#: A second valid value for every problem option: each must change what a run records.
OTHER_VALUES: dict[str, dict[str, object]] = {
    "rosenbrock": {"noise": 0.5, "dim": 4},
    "beale": {"noise": 0.5},
    "branin": {"noise": 0.5},
    "rastrigin": {"noise": 0.5, "dim": 3},
    "styblinski-tang": {"noise": 0.5, "dim": 3},
    "quadratic": {"noise": 0.5, "dim": 5, "condition": 10.0, "rotate": True, "seed": 1},
    "nqm": {"noise": 0.5, "dim": 50, "batch_size": 4.0},
    "quadratic-deep": {
        "noise": 0.5,
        "small": 80,
        "large": 5,
        "train_size": 500,
        "batch_size": 16,
        "noise_level": 1.0,
        "seed": 1,
    },
    "logistic": {"noise": 0.5, "samples": 500, "features": 5, "batch_size": 8, "l2": 0.1, "seed": 1},
    "digits-mlp": {"noise": 0.5, "hidden": 8, "batch_size": 8, "samples": 500, "l2": 0.1, "init_seed": 5},
}


@pytest.mark.parametrize("name", list(OTHER_VALUES))
def test_every_problem_option_is_honoured(name):
    """Changing any one option from its default changes the recorded losses of a short run
    (the rotated quadratic keeps its loss on the all-ones start only by accident of
    symmetry, so the comparison is of the whole curve)."""
    from problems import PROBLEMS

    if name == "digits-mlp":
        pytest.importorskip("sklearn")
    defaults = PROBLEMS[name].options()
    assert set(OTHER_VALUES[name]) == set(defaults), "every option needs a second value here"
    base = {"rotate": True} if name == "quadratic" else {}  # the rotation seed acts only when rotated
    reference = run(make_problem(name, **base), "sgd", 5, seed=1).loss
    for option, value in OTHER_VALUES[name].items():
        options = {**base, option: value}
        if name == "quadratic" and option == "rotate":
            options = {"rotate": False}
        changed = run(make_problem(name, **options), "sgd", 5, seed=1).loss
        assert not np.array_equal(changed, reference), f"{name}: option {option}={value!r} changes nothing"


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
