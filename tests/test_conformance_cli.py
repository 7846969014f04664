"""``cprop-ref verify``: exit 0 for a conforming port, 1 with the report for a broken one,
2 for a port spec that cannot be loaded; bad options name themselves."""

from __future__ import annotations

import pytest

from cprop_ref.cli import main

pytest.importorskip("torch")


def test_verify_passes_the_torch_port(capsys, tmp_path):
    report = tmp_path / "report.txt"
    status = main(
        [
            "verify",
            "cprop_ref.conformance:torch_port",
            "--examples",
            "5",
            "--checks",
            "open_loop",
            "--report",
            str(report),
        ]
    )
    out = capsys.readouterr().out
    assert status == 0, out
    assert "PASSED" in out and "open_loop    5 examples" in out
    assert report.read_text().strip() == out.strip()


def test_verify_fails_a_broken_port_with_the_report(capsys):
    status = main(
        ["verify", "tests.conformance_broken_ports:unclamped_scale", "--examples", "50", "--checks", "open_loop"]
    )
    out = capsys.readouterr().out
    assert status == 1
    assert "FAILED" in out and "MISMATCH in check 'open_loop': scale" in out
    assert "port = load_port('tests.conformance_broken_ports:unclamped_scale')" in out


def test_verify_unloadable_port_exits_2(capsys):
    assert main(["verify", "no_such_module_here:make"]) == 2
    assert "no_such_module_here" in capsys.readouterr().err


@pytest.mark.parametrize(
    "args, message",
    [
        (["--examples", "0"], "--examples"),
        (["--checks", "open_loop,nope"], "--checks"),
        (["--dtypes", "int8"], "--dtypes"),
        (["--time-limit", "0"], "--time-limit"),
    ],
)
def test_verify_bad_options_name_themselves(args, message):
    with pytest.raises(SystemExit, match=message):
        main(["verify", "cprop_ref.conformance:reference_port", *args])


def test_verify_keep_going_lists_every_distinct_mismatch_in_16_bits(capsys):
    """A port keeping 16-bit statistics, run in float16 only with --keep-going: the report lists
    the distinct mismatches (statistics of CPropSGD) and each in full."""
    status = main(
        [
            "verify",
            "tests.conformance_broken_ports:statistics_in_16_bits",
            "--examples",
            "3",
            "--checks",
            "open_loop",
            "--dtypes",
            "float16",
            "--keep-going",
        ]
    )
    out = capsys.readouterr().out
    assert status == 1
    assert "distinct mismatches" in out and "open_loop: cprop_m (CPropSGD)" in out
    assert "MISMATCH in check 'open_loop': cprop_m" in out and "float16" in out
