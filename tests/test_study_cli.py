"""``cprop-ref sweep`` and ``cprop-ref sweep-report``: table, PNGs, store, and bad input
refused before any run with one line and exit code 1."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

pytest.importorskip("xarray")
pytest.importorskip("zarr")
pytest.importorskip("matplotlib")

from cprop_ref.cli import main  # noqa: E402
from cprop_ref.study import parse_grid_values  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]


def test_sweep_prints_the_table_writes_the_pictures_and_report_redraws_them(tmp_path, capsys):
    store = tmp_path / "s.zarr"
    argv = ["sweep", "rosenbrock", "--optimizers", "sgd,cprop-sgd", "--grid", "lr=1e-4:1e-2:3:log"]
    argv += ["--grid", "c=0.5,2", "--seeds", "2", "--steps", "50", "--set", "noise=1", "--store", str(store)]
    assert main([*argv, "--out", str(tmp_path / "a"), "--progress", "--chunk-rows", "4"]) == 0
    captured = capsys.readouterr()
    out = captured.out
    assert (
        "sweep on rosenbrock" in captured.err and "6/6" in captured.err
    )  # tqdm over the 6 units: sgd 3 lr blocks, cprop-sgd 3 (lr x both c)
    assert "2 optimizer(s) x 3 lr x 2 cprop_c x 2 seeds = 24 runs of 50 steps" in out
    table = [line for line in out.splitlines() if line.startswith(("sgd ", "cprop-sgd "))]
    assert len(table) == 2 and "cprop_c=" in table[1] and "cprop_c=" not in table[0]
    pictures = sorted(p.name for p in (tmp_path / "a").iterdir())
    assert pictures == ["rosenbrock-heatmap.png", "rosenbrock-sensitivity.png", "rosenbrock-tuning.png"]
    assert main(["sweep-report", str(store), "--out", str(tmp_path / "b")]) == 0
    again = capsys.readouterr().out
    assert [line for line in again.splitlines() if line.startswith(("sgd ", "cprop-sgd "))] == table
    assert sorted(p.name for p in (tmp_path / "b").iterdir()) == pictures


def test_grid_ranges():
    assert parse_grid_values("lr", "1e-4:1:5:log") == (1e-4, 1e-3, 1e-2, 1e-1, 1.0)
    assert parse_grid_values("c", "0:1:3") == (0.0, 0.5, 1.0)
    assert parse_grid_values("c", "0.5, 1,2") == (0.5, 1.0, 2.0)


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (["--grid", "momentum=0.9", "--optimizers", "adam"], "none of the optimizers (adam) takes momentum"),
        (["--grid", "lr="], "--grid lr='': empty value"),
        (["--grid", "lr=a,b"], "--grid lr=a,b: not a list of numbers"),
        (["--grid", "lr=1e-4:1"], "a range is LOW:HIGH:COUNT[:log|lin]"),
        (["--grid", "lr=0:1:3:log"], "a log range needs positive ends"),
        (["--grid", "lr=1e-3", "--seeds", "0"], "invalid seeds=0"),
        (["--grid", "lr=1e-3", "--set", "colour=red"], "has no option 'colour'"),
        (["--grid", "lr=1e-3", "--steps", "0"], "invalid steps=0"),
        ([], "no --grid given"),
    ],
)
def test_bad_input_is_one_line_before_any_run(extra, message, tmp_path):
    store = tmp_path / "never.zarr"
    with pytest.raises(SystemExit) as stop:
        main(["sweep", "rosenbrock", "--store", str(store), "--no-plots", *extra])
    text = str(stop.value.code)
    assert text.startswith("cprop-ref sweep: ") and message in text and "\n" not in text
    assert not store.exists()


def test_exit_code_1_and_no_traceback(tmp_path):
    store = tmp_path / "file"
    store.write_text("x")
    result = subprocess.run(
        [sys.executable, "-m", "cprop_ref.cli", "sweep", "--grid", "lr=1e-3", "--store", str(store)],
        cwd=ROOT,
        capture_output=True,
        text=True,
    )
    assert result.returncode == 1 and result.stdout == ""
    assert result.stderr.strip() == f"cprop-ref sweep: store {str(store)!r} is a file, not a zarr store (a folder)"
    with pytest.raises(SystemExit, match="cprop-ref sweep-report: store .* does not exist"):
        main(["sweep-report", str(tmp_path / "nothing")])
