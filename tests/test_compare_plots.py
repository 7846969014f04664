"""Helpers of the compare plots: thinning long series, PNG size and palette."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from cprop_ref.compare import compare, optimizer_specs
from cprop_ref.compare_plots import loss_gap, thin, write_plots
from problems import make_problem


@given(st.integers(1, 100_000), st.integers(1, 2_000))
def test_thin_keeps_ends_order_and_at_most_about_limit_points(length, limit):
    idx = thin(length, limit)
    assert idx[0] == 0 and idx[-1] == length - 1
    assert np.all(np.diff(idx) > 0)
    assert len(idx) <= limit + 1  # evenly spaced points plus, perhaps, the last one
    if length <= limit:
        np.testing.assert_array_equal(idx, np.arange(length))


def test_loss_gap_subtracts_the_known_minimum_only():
    branin = make_problem("branin")
    (history,) = compare(branin, optimizer_specs("adam"), 5)
    gap, label = loss_gap(history, branin)
    np.testing.assert_array_equal(gap, history.loss - branin.minimum)
    assert label == "loss - minimum"
    pytest.importorskip("sklearn")
    mlp = make_problem("digits-mlp", hidden=3, samples=20)
    (history,) = compare(mlp, optimizer_specs("adam"), 2)
    gap, label = loss_gap(history, mlp)
    assert gap is history.loss and label == "training loss"


def test_long_noisy_runs_still_give_small_palette_pngs(tmp_path):
    """5000 noisy steps for 4 optimizers: thinning and the 256-colour palette keep each PNG
    under 150 kB (the true-colour, unthinned PNGs were up to 170 kB)."""
    Image = pytest.importorskip("PIL.Image")
    pytest.importorskip("matplotlib")
    problem = make_problem("rosenbrock", noise=10.0)
    histories = compare(problem, optimizer_specs("sgd,cprop-sgd,adam,cprop-adam"), 5000, runs=2)
    for path in write_plots(histories, problem, tmp_path, "r", target=1e-2):
        assert path.stat().st_size < 150_000
        with Image.open(path) as image:
            assert image.mode == "P" and image.size[0] >= 600
