"""``cprop-ref compare`` and ``cprop-ref problems``: table, plots, errors."""

from __future__ import annotations

import subprocess
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


# -- misuse: everything checked before the first run, no traceback, warnings, layout -----------


def test_a_problem_name_alone_runs_compare_on_it(capsys):
    """``cprop-ref rosenbrock`` used to be argparse's "invalid choice"."""
    assert main(["beale", "--steps", "20", "--no-plots"]) == 0
    out = capsys.readouterr().out
    assert out.startswith("beale:") and list(table_rows(out)) == ["sgd", "cprop-sgd", "adam", "cprop-adam"]


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--optimizers", "sgd,cprop-sgd,adam:lr=-1"], r"optimizer 'adam:lr=-1': Adam: invalid lr=-1.0"),
        (["--optimizers", "sgd,cprop-adam:beta=1.5"], r"optimizer 'cprop-adam:beta=1.5': .*invalid cprop_beta=1.5"),
        (["--optimizers", "sgd,cprop-adamw:c=-1"], r"optimizer 'cprop-adamw:c=-1': CProp: invalid c=-1.0"),
        (["--seed", "-1"], r"invalid --seed=-1"),
        (["--target", "nan"], r"invalid --target=nan"),
        (["--target", "inf"], r"invalid --target=inf"),
        (["--lr-sgd", "nan"], r"invalid --lr-sgd=nan"),
        (["--prefix", "a/b"], r"invalid --prefix='a/b'"),
        (["--prefix", ""], r"invalid --prefix=''"),
    ],
)
def test_every_argument_is_checked_before_the_first_run(argv, message, capsys, tmp_path):
    """A bad spec late in ``--optimizers`` was found only after the earlier ones ran in full,
    ``--seed -1`` after the header was printed: now nothing is printed and nothing runs."""
    pytest.importorskip("matplotlib")
    with pytest.raises(SystemExit, match=message):
        main(["compare", "beale", "--steps", "5", "--out", str(tmp_path / "plots"), *argv])
    assert capsys.readouterr().out == ""


def test_a_bad_out_folder_is_refused_before_the_runs(tmp_path, capsys):
    """``--out`` naming a file, or a folder that cannot be made, gave tracebacks after all runs."""
    pytest.importorskip("matplotlib")
    a_file = tmp_path / "taken"
    a_file.write_text("keep me")
    for out, message in ((a_file, "is a file, not a folder"), (a_file / "sub", "cannot create the folder")):
        with pytest.raises(SystemExit, match=message):
            main(["compare", "beale", "--steps", "5", "--out", str(out)])
        assert capsys.readouterr().out == ""
    assert a_file.read_text() == "keep me"


def test_user_errors_never_print_a_traceback(tmp_path):
    """The real command line: exit code 1 and one line on stderr."""
    (tmp_path / "taken").write_text("")
    for argv in (
        ["compare", "beale", "--out", str(tmp_path / "taken")],
        ["beale", "--optimizers", "sgd:lr=-1", "--no-plots"],
        ["compare", "beale", "--seed", "-1", "--no-plots"],
    ):
        result = subprocess.run(
            [sys.executable, "-m", "cprop_ref.cli", *argv], capture_output=True, text=True, timeout=300
        )
        assert result.returncode == 1, result.stderr
        assert "Traceback" not in result.stderr and len(result.stderr.strip().splitlines()) == 1, result.stderr
        assert result.stdout == ""


def test_pointless_settings_are_warned_about(capsys):
    main(["compare", "beale", "--steps", "5", "--no-plots", "--optimizers", "sgd:lr=0,cprop-sgd:c=0,adam"])
    err = capsys.readouterr().err
    assert "warning: sgd:lr=0: lr=0, its parameters never move" in err
    assert "warning: cprop-sgd:c=0: c=0, every CProp scale is 0" in err
    assert "adam" not in err


def test_identical_runs_are_said_to_be_identical(capsys):
    """``--runs`` on a noise-free problem repeats the same run ("+- 0.00e+00"); with noise the
    runs differ and nothing is said."""
    main(["compare", "beale", "--steps", "20", "--runs", "3", "--no-plots", "--optimizers", "sgd,adam"])
    assert "note: the 3 runs of each optimizer are identical" in capsys.readouterr().out
    main(["compare", "beale", "--steps", "20", "--runs", "3", "--no-plots", "--set", "noise=0.1"])
    assert "identical" not in capsys.readouterr().out


def test_long_labels_widen_the_column_and_keep_the_rows_aligned():
    """Labels over 24 characters used to shift their row."""
    problem = make_problem("quadratic", dim=2)
    specs = optimizer_specs("sgd:lr=0.1,cprop-sgd:lr=0.1:c=3:beta=0.99:cdf=normal:momentum=0.5")
    table = format_table(compare(problem, specs, 10), target=1e-3)
    lines = [line for line in table.splitlines() if not line.startswith("note:")]
    assert len({len(line) for line in lines}) == 1, table
    header, rows = lines[0], lines[2:]
    for column in ("lr", "steps to target", "wall [s]"):
        end = header.index(column) + len(column)
        assert all(row[end - 1] != " " and (end == len(row) or row[end] == " ") for row in rows), (column, table)


def test_diverged_rows_say_diverged(capsys):
    """Not "> 3", as if three steps had been run without reaching the target."""
    main(
        ["compare", "rosenbrock", "--optimizers", "sgd:lr=100,adam", "--steps", "50", "--target", "1e-3", "--no-plots"]
    )
    rows = table_rows(capsys.readouterr().out)
    assert rows["sgd:lr=100"][4] == "diverged"
    assert rows["adam"][4:6] == [">", "50"]
