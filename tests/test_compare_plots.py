"""Helpers of the compare plots: thinning long series, PNG size and palette."""

from __future__ import annotations

import warnings

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from cprop_ref.compare import compare, optimizer_specs
from cprop_ref.compare_plots import (
    DIVERGED_HEADROOM,
    clip_to,
    loss_figure,
    loss_gap,
    scale_figure,
    thin,
    write_plots,
)
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


# -- diverged runs and legends -------------------------------------------------------------------


def test_diverged_runs_are_cut_where_they_leave_the_plot_without_warnings(tmp_path):
    """Four optimizers at lr=100 on Rosenbrock, two of them diverged (a last
    finite loss of 5.5e301). The loss plot used to show no curve at all, with a matplotlib
    overflow warning. Now: no warning of any kind, the y range is that of the runs that did not
    diverge (times the headroom), and the plot says what it left out."""
    pytest.importorskip("matplotlib")
    problem = make_problem("rosenbrock")
    specs = optimizer_specs("sgd:lr=100,cprop-sgd:lr=100,adam:lr=100,cprop-adam:lr=100")
    histories = compare(problem, specs, 200)
    assert [bool(h.diverged) for h in histories] == [True, True, False, False]
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        fig = loss_figure(histories, problem, target=1e-2)
        fig.canvas.draw()
        written = write_plots(histories, problem, tmp_path, "r", target=1e-2)
    assert [p.name for p in written] == ["r-loss.png", "r-scale.png", "r-trajectories.png"]
    ax = fig.axes[0]
    kept = max(float(np.max(h.loss - problem.minimum)) for h in histories[2:])
    low, high = ax.get_ylim()
    assert high == pytest.approx(2 * DIVERGED_HEADROOM * kept)
    labels = [text.get_text() for text in ax.get_legend().get_texts()]
    assert labels[0].startswith("sgd:lr=100 (diverged at step") and labels[2] == "adam:lr=100"
    notes = [text.get_text() for text in fig.texts]
    assert any(note.startswith("not drawn: sgd:lr=100, cprop-sgd:lr=100 above") for note in notes)
    for line in ax.get_lines():
        y = np.asarray(line.get_ydata(), dtype=float)
        assert np.all(np.isnan(y) | (y <= high))


@given(
    st.lists(st.floats(1e-20, 1e300), min_size=1, max_size=50),
    st.floats(1e-10, 1e10),
)
def test_clip_to_keeps_the_curve_up_to_where_it_leaves(values, high):
    values = np.array(values)
    shown, cut = clip_to(values, high)
    above = np.flatnonzero(values > high)
    assert cut == bool(above.size)
    if not cut:
        assert shown is values
        return
    first = above[0]
    np.testing.assert_array_equal(shown[:first], values[:first])
    assert shown[first] == high and np.all(np.isnan(shown[first + 1 :]))


def test_the_legends_cover_no_curve():
    """The scale plot's legend covered a curve: the legends now sit beside the axes."""
    pytest.importorskip("matplotlib")
    problem = make_problem("rosenbrock", noise=1.0)
    histories = compare(problem, optimizer_specs("sgd,cprop-sgd,adam,cprop-adam"), 300, runs=2)
    for fig in (scale_figure(histories, problem), loss_figure(histories, problem, target=1e-2)):
        fig.canvas.draw()
        ax = fig.axes[0]
        legend = ax.get_legend().get_window_extent()
        assert not legend.overlaps(ax.get_window_extent())
        assert fig.get_window_extent().contains(legend.x1 - 1, legend.y0 + 1)  # and it is on the picture
