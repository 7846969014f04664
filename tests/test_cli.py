"""The command line as a user meets it: help, version, a closed pipe."""

from __future__ import annotations

import os
import subprocess
import sys

from cprop_ref import __version__


def run_cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "cprop_ref.cli", *args], capture_output=True, text=True, timeout=120)


def test_help_lists_every_command():
    result = run_cli("--help")
    assert result.returncode == 0
    for command in ("demo", "compare", "problems", "golden", "verify", "bench"):
        assert command in result.stdout


def test_version():
    result = run_cli("--version")
    assert result.returncode == 0 and __version__ in result.stdout


def test_a_closed_pipe_ends_quietly():
    """`cprop-ref problems | head -0`: the reader is gone before anything is written; no
    BrokenPipeError traceback, neither from the command nor at interpreter exit."""
    read_end, write_end = os.pipe()
    os.close(read_end)  # every write, and every flush, now fails with EPIPE
    try:
        result = subprocess.run(
            [sys.executable, "-m", "cprop_ref.cli", "problems"],
            stdout=write_end,
            stderr=subprocess.PIPE,
            text=True,
            timeout=120,
        )
    finally:
        os.close(write_end)
    assert "Traceback" not in result.stderr and "BrokenPipe" not in result.stderr, result.stderr
    assert result.returncode == 0


def test_a_problem_name_is_the_main_job_on_it_and_a_typo_gets_a_hint():
    """``cprop-ref rosenbrock`` was argparse's "invalid choice"; it now runs ``compare`` on that
    problem. A word that is neither a command nor a problem lists both (exit code 2)."""
    result = run_cli("beale", "--steps", "5", "--no-plots", "--optimizers", "adam")
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith("beale:")
    result = run_cli("rosenbrok")
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert "'rosenbrok' is neither a command (" in result.stderr and "nor a problem (rosenbrock," in result.stderr
