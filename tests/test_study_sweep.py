"""Sweeps in this process: every entry is the single run it names, whatever the chunking or
order; the zarr store resumes (after SIGKILL too) and refuses another sweep; bad input is
refused before any run; the report's arithmetic."""

from __future__ import annotations

import itertools
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

pytest.importorskip("xarray")
pytest.importorskip("zarr")
pytest.importorskip("dask")

from cprop_ref.runner import run  # noqa: E402
from cprop_ref.study import make_config, open_sweep, report, store, sweep  # noqa: E402  # noqa: E402
from cprop_ref.study.engine import compute_unit  # noqa: E402
from problems import make_problem  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]

#: A small sweep with every feature: sgd does not take c (broadcast), lr = 0.05 makes SGD
#: diverge on Rosenbrock (curvature ~ 4000 at the start), 60 steps recorded every 7 (the
#: last step is recorded too), seeds not starting at 0.
SMALL = dict(
    problem="rosenbrock",
    optimizers=["sgd", "cprop-sgd"],
    grid={"lr": [1e-4, 1e-3, 0.05], "c": [0.5, 2.0]},
    seeds=[0, 3],
    steps=60,
    problem_options={"noise": 1.0},
    record_every=7,
)


def small_sweep(**overrides):
    arguments = {**SMALL, **overrides}
    return sweep(
        arguments.pop("problem"),
        arguments.pop("optimizers"),
        arguments.pop("grid"),
        arguments.pop("seeds"),
        arguments.pop("steps"),
        progress=False,
        **arguments,
    )


@pytest.fixture(scope="module")
def reference():
    return small_sweep()


def test_every_entry_equals_the_single_run_it_names(reference):
    ds = reference
    assert ds["loss"].dims == ("optimizer", "lr", "cprop_c", "seed", "step")
    steps = ds["step"].values
    assert list(steps) == [0, 7, 14, 21, 28, 35, 42, 49, 56, 60]
    problem = make_problem("rosenbrock", noise=1.0)
    target = problem.target_loss()
    for optimizer, lr, c, seed in itertools.product(["sgd", "cprop-sgd"], [1e-4, 1e-3, 0.05], [0.5, 2.0], [0, 3]):
        spec = f"{optimizer}:lr={lr!r}" + (f":cprop_c={c!r}" if optimizer == "cprop-sgd" else "")
        history = run(problem, spec, 60, seed=seed)
        entry = ds.sel(optimizer=optimizer, lr=lr, cprop_c=c, seed=seed)
        where = f"{spec} seed {seed}"
        np.testing.assert_array_equal(entry["loss"].values, history.loss[steps, 0], err_msg=where)
        np.testing.assert_array_equal(entry["final_loss"].item(), history.loss[-1, 0], err_msg=where)
        assert entry["best_loss"].item() == history.best_loss[0], where
        reached = np.flatnonzero(history.loss[:, 0] <= target)
        assert entry["steps_to_target"].item() == (reached[0] if reached.size else -1), where
        assert entry["diverged"].item() == (history.diverged_at[0] >= 0), where
        assert entry["diverged_step"].item() == history.diverged_at[0], where
        if optimizer == "sgd":
            assert np.isnan(entry["mean_scale"].item())
        else:
            # the sweep averages the scale over its recorded steps (summed in another order: 1e-15)
            at_recorded = history.scale_mean[steps[1:] - 1, 0]
            at_recorded = at_recorded[np.isfinite(at_recorded)]
            expected = at_recorded.mean() if at_recorded.size else np.nan
            np.testing.assert_allclose(entry["mean_scale"].item(), expected, rtol=1e-15, err_msg=where)
    assert bool(ds["diverged"].sel(optimizer="sgd", lr=0.05).all())
    assert not bool(ds["diverged"].sel(lr=1e-4).any())


def test_chunking_and_order_do_not_change_the_dataset(reference):
    one_point_per_unit = small_sweep(chunk_rows=1)
    assert one_point_per_unit.equals(reference)
    config = make_config(**{k: v for k, v in SMALL.items() if k != "problem"}, problem="rosenbrock", chunk_rows=2)
    arrays = store.empty_arrays(config)
    for unit in reversed(config.units()):
        store.fill(config, arrays, unit, compute_unit(config, unit))
    assert store.as_dataset(config, arrays).equals(reference)


def files_with_times(path: Path) -> dict[str, int]:
    return {str(p.relative_to(path)): p.stat().st_mtime_ns for p in path.rglob("*") if p.is_file()}


def test_store_equals_memory_resumes_without_rewriting_and_refuses_another_sweep(reference, tmp_path):
    path = tmp_path / "sweep.zarr"
    ds = small_sweep(store=path, chunk_rows=2)
    assert ds.equals(reference)
    assert open_sweep(path).equals(reference)
    before = files_with_times(path)
    again = small_sweep(store=path, chunk_rows=2)  # every unit is complete: nothing is written
    assert again.equals(reference) and files_with_times(path) == before
    with pytest.raises(ValueError, match=r"holds a different sweep: steps 61 \(store: 60\)"):
        small_sweep(store=path, chunk_rows=2, steps=61)
    with pytest.raises(ValueError, match=r"seeds \(0, 1\) \(store: \(0, 3\)\)"):
        small_sweep(store=path, chunk_rows=2, seeds=2)
    assert files_with_times(path) == before


KILLED_SWEEP = """
import sys
from cprop_ref.study import sweep
sweep("rosenbrock", ["cprop-sgd"], {"lr": [1e-4, 2e-4, 4e-4, 8e-4]}, 2, 1000,
      problem_options={"noise": 1.0}, store=sys.argv[1], chunk_rows=2, progress=False)
"""


def test_a_sweep_killed_with_sigkill_resumes_to_the_uninterrupted_dataset(tmp_path):
    """A real subprocess runs a 4-unit sweep into a store and is killed with SIGKILL as soon
    as one unit is flagged complete; the resumed sweep recomputes only the other units
    (the files of the complete ones are not written again) and equals an uninterrupted sweep."""
    path = tmp_path / "killed.zarr"
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1", "OPENBLAS_NUM_THREADS": "1"}
    child = subprocess.Popen([sys.executable, "-c", textwrap.dedent(KILLED_SWEEP), str(path)], env=env, cwd=ROOT)
    import xarray as xr

    done = None
    deadline = time.monotonic() + 300
    try:
        while time.monotonic() < deadline and child.poll() is None:
            try:
                flags = xr.open_zarr(path, consolidated=False, chunks=None)["complete"].values
            except (OSError, KeyError, ValueError):
                flags = None  # not created yet
            if flags is not None and flags.any():
                os.kill(child.pid, signal.SIGKILL)
                done = flags
                break
            time.sleep(0.05)
    finally:
        if child.poll() is None:
            os.kill(child.pid, signal.SIGKILL)
        child.wait()
    assert child.returncode == -signal.SIGKILL, "the sweep finished before it could be killed"
    done = xr.open_zarr(path, consolidated=False, chunks=None)["complete"].values  # what survived the kill
    assert 0 < done.sum() < done.size
    before = files_with_times(path)
    arguments = dict(problem_options={"noise": 1.0}, chunk_rows=2, progress=False)
    resumed = sweep("rosenbrock", ["cprop-sgd"], {"lr": [1e-4, 2e-4, 4e-4, 8e-4]}, 2, 1000, store=path, **arguments)
    uninterrupted = sweep("rosenbrock", ["cprop-sgd"], {"lr": [1e-4, 2e-4, 4e-4, 8e-4]}, 2, 1000, **arguments)
    assert resumed.equals(uninterrupted)
    after = files_with_times(path)
    # zarr v3 chunk files: VARIABLE/c/<optimizer>/<lr block>/...; a complete unit's stay as they were
    variables = {*resumed.data_vars, "complete"}
    chunk_files = [name for name in before if name.split("/")[0] in variables and "/c/" in name]
    kept = [name for name in chunk_files if done[0, int(name.split("/")[3])]]
    assert kept and all(after[name] == before[name] for name in kept)


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (
            {"grid": {"lr": [1e-3], "momentum": [0.9]}, "optimizers": ["adam"]},
            "none of the optimizers \\(adam\\) takes momentum",
        ),
        ({"grid": {"lr": []}}, "grid key 'lr': the value list is empty"),
        ({"grid": {"lr": ["fast"]}}, "grid key 'lr': value 'fast' is not a number"),
        ({"grid": {"lr": [1e-3, -1.0]}}, "grid key 'lr', value -1.0 for 'sgd'"),
        ({"grid": {"speed": [1.0]}}, "grid key 'speed': not a numeric hyperparameter"),
        ({"seeds": 0}, "invalid seeds=0"),
        ({"seeds": [1, 1]}, "seeds repeat"),
        ({"problem_options": {"colour": 1}}, "has no option\\(s\\) colour"),
        ({"optimizers": ["sgd:lr=0.1"]}, "optimizer 'sgd:lr=0.1' already sets lr"),
        ({"workers": 0}, "invalid workers=0"),
        ({"workers": 2, "scheduler": "tcp://127.0.0.1:1"}, "workers or scheduler, not both"),
    ],
)
def test_bad_input_is_refused_before_any_run(change, message, tmp_path):
    path = tmp_path / "never.zarr"
    with pytest.raises(ValueError, match=message):
        small_sweep(**change, store=path)
    assert not path.exists()


def test_a_store_path_that_is_a_file_is_refused(tmp_path):
    path = tmp_path / "file.zarr"
    path.write_text("not a store")
    with pytest.raises(OSError, match="is a file, not a zarr store"):
        small_sweep(store=path)
    assert path.read_text() == "not a store"


@given(values=st.lists(st.floats(0.0, 10.0), min_size=1, max_size=5), k=st.integers(1, 4))
def test_expected_best_of_k_equals_the_average_over_every_draw(values, k):
    """The closed form against the definition: the mean, over all N^k equally likely
    ordered draws with replacement, of the smallest value drawn (sums of <= 625 terms of
    size <= 10: 1e-12 absolute is far above their rounding)."""
    brute = np.mean([min(draw) for draw in itertools.product(values, repeat=k)])
    np.testing.assert_allclose(report.expected_best(np.array(values), np.array([k]))[0], brute, rtol=0, atol=1e-12)


def test_table_best_setting_good_band_and_share_diverged(reference):
    rows = {row.optimizer: row for row in report.summarise(reference)}
    score = report.scores(reference)
    for name, row in rows.items():
        assert row.best_score == float(score.sel(optimizer=name).min())
        assert set(row.best) == ({"lr"} if name == "sgd" else {"lr", "cprop_c"})
        assert row.band[0] <= row.best["lr"] <= row.band[1]
        assert row.band_decades == pytest.approx(np.log10(row.band[1] / row.band[0]))
    assert rows["sgd"].diverged_share == float(reference["diverged"].sel(optimizer="sgd").mean())
    table = report.format_table(reference)
    assert "sgd" in table and "good lr band" in table


def test_good_band_is_the_contiguous_run_within_2x():
    config = make_config("quadratic", ["sgd"], {"lr": [0.01, 0.1, 0.2, 0.4, 0.8, 1.6]}, 1, 5)
    arrays = store.empty_arrays(config)
    arrays["final_loss"][0, :, 0] = [1.0, 0.3, 0.1, 0.15, 0.5, 0.19]  # 1.6 is within 2x but not contiguous
    row = report.summarise(store.as_dataset(config, arrays))[0]
    assert row.best == {"lr": 0.2} and row.band == (0.2, 0.4)
    assert row.band_decades == pytest.approx(np.log10(2.0))
