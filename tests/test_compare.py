"""``cprop-ref compare`` and ``cprop-ref problems``: table, plots, errors."""

from __future__ import annotations

import sys

import numpy as np
import pytest

from cprop_ref.cli import main
from cprop_ref.compare import compare, format_table, optimizer_specs
from problems import PROBLEMS, make_problem

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def table_rows(out: str) -> dict[str, list[str]]:
    """Rows of the printed table by optimizer label."""
    lines = out.splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith("optimizer")) + 2
    rows = {}
    for line in lines[start:]:
        if not line or line.startswith(("plots:", "note:")):
            break
        rows[line.split()[0]] = line.split()
    return rows


def test_compare_prints_the_table_and_writes_the_plots(tmp_path, capsys):
    pytest.importorskip("matplotlib")
    code = main(["compare", "beale", "--steps", "300", "--out", str(tmp_path), "--target", "0.5"])
    assert code == 0
    out = capsys.readouterr().out
    rows = table_rows(out)
    assert list(rows) == ["sgd", "cprop-sgd", "adam", "cprop-adam"]
    assert rows["sgd"][-2] == "-" and 0.0 < float(rows["cprop-sgd"][-2]) <= 1.0  # mean scale
    for name in ("beale-loss.png", "beale-scale.png", "beale-trajectories.png"):
        data = (tmp_path / name).read_bytes()
        assert data.startswith(PNG_SIGNATURE) and len(data) < 250_000
    assert "plots: " in out


def test_table_numbers_are_the_histories(capsys):
    """The printed final loss, best loss and steps to target are those of the runs."""
    problem = make_problem("quadratic", dim=4, noise=0.05)
    specs = optimizer_specs("sgd,cprop-sgd:c=3", lr_sgd=0.3)
    histories = compare(problem, specs, 120, seed=2, runs=3)
    table = format_table(histories, target=1e-2)
    rows = table_rows(table)
    for h in histories:
        row = rows[h.optimizer]
        assert row[1] == "0.3"
        assert float(row[2]) == pytest.approx(h.mean_loss()[-1], rel=1e-4)  # printed with 5 digits
        assert float(row[5]) == pytest.approx(h.mean_loss().min(), rel=1e-4)
        assert row[6] == str(h.steps_to_target(1e-2))
    assert rows["cprop-sgd:c=3"][7] == f"{histories[1].scale_mean.mean():.3f}"
    # with a known minimum the table shows the gap loss - minimum
    gap_rows = table_rows(format_table(histories, target=1e-2, minimum=0.5))
    assert "final - min" in format_table(histories, target=None, minimum=0.5)
    for h in histories:
        assert float(gap_rows[h.optimizer][2]) == pytest.approx(h.mean_loss()[-1] - 0.5, rel=1e-4)


def test_compare_runs_every_optimizer_from_the_same_start_and_noise():
    """Same seed for all: the same start and, for additive noise (independent of the
    point), the same noise; so with ``lr = 0`` every optimizer stays at the start."""
    problem = make_problem("rosenbrock", noise=0.5)
    histories = compare(problem, optimizer_specs("sgd:lr=0,cprop-sgd:lr=0,adam:lr=0"), 20, seed=4)
    for h in histories:
        np.testing.assert_array_equal(h.trajectory, np.broadcast_to(problem.default_start(), h.trajectory.shape))


def test_no_plots_and_no_trajectory_for_higher_dimensions(tmp_path, capsys):
    pytest.importorskip("matplotlib")
    main(["compare", "nqm", "--set", "dim=8", "--steps", "50", "--out", str(tmp_path / "a"), "--no-plots"])
    assert not (tmp_path / "a").exists()
    main(
        ["compare", "nqm", "--set", "dim=8", "--steps", "50", "--out", str(tmp_path / "b"), "--optimizers", "sgd,adam"]
    )
    assert sorted(p.name for p in (tmp_path / "b").iterdir()) == ["nqm-loss.png"]  # no CProp, not 2-D
    main(["compare", "nqm", "--steps", "20", "--runs", "3", "--out", str(tmp_path / "c"), "--prefix", "x"])
    assert sorted(p.name for p in (tmp_path / "c").iterdir()) == ["x-loss.png", "x-scale.png"]
    assert "(+- sd over runs)" in capsys.readouterr().out


def test_missing_matplotlib_names_the_extra(monkeypatch, tmp_path):
    monkeypatch.setitem(sys.modules, "matplotlib", None)
    with pytest.raises(SystemExit, match=r"pip install 'cprop-ref\[plot\]'"):
        main(["compare", "beale", "--steps", "5", "--out", str(tmp_path)])
    assert not any(tmp_path.iterdir())
    assert main(["compare", "beale", "--steps", "5", "--no-plots"]) == 0


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["compare", "rosenbrok"], "unknown problem 'rosenbrok'"),
        (["compare", "nqm", "--set", "dims=3"], "no option 'dims'"),
        (["compare", "nqm", "--set", "dim=0"], "dim=0"),
        (["compare", "beale", "--optimizers", "sgd,lion"], "unknown optimizer 'lion'"),
        (["compare", "beale", "--optimizers", "sgd,,adam"], "empty entry"),
        (["compare", "beale", "--steps", "0"], "--steps=0"),
        (["compare", "beale", "--runs", "0"], "--runs=0"),
    ],
)
def test_bad_arguments_exit_with_a_message(argv, message):
    with pytest.raises(SystemExit, match=message):
        main([*argv, "--no-plots"])


def test_divergence_is_reported_in_the_table(capsys):
    main(["compare", "rosenbrock", "--optimizers", "sgd:lr=0.1,adam", "--steps", "200", "--no-plots"])
    out = capsys.readouterr().out
    assert "note: sgd:lr=0.1 on rosenbrock: 1 of 1 run(s) diverged (run 0 at step" in out


def test_default_command_is_compare_on_rosenbrock(capsys):
    main(["--steps", "30", "--no-plots"])
    out = capsys.readouterr().out
    assert out.startswith("rosenbrock:") and list(table_rows(out)) == ["sgd", "cprop-sgd", "adam", "cprop-adam"]


def test_problems_command_lists_every_problem(capsys):
    assert main(["problems"]) == 0
    out = capsys.readouterr().out
    names = [line.split()[0] for line in out.splitlines()[1:] if line and not line.startswith(" ")]
    assert names[: len(PROBLEMS)] == list(PROBLEMS)
    assert "0.397887" in out and "batch_size" in out
