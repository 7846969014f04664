"""The pytest entry for users' ports: ``CPROP_PORT=module:factory pytest --pyargs
cprop_ref.conformance.test_port`` passes a conforming port and fails a broken one with the
harness's report in pytest's output."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

pytest.importorskip("torch")

ROOT = Path(__file__).resolve().parent.parent


def _run_entry(port: str, examples: int) -> subprocess.CompletedProcess:
    env = {**os.environ, "CPROP_PORT": port, "CPROP_PORT_EXAMPLES": str(examples), "PYTHONPATH": str(ROOT)}
    command = [
        sys.executable,
        "-m",
        "pytest",
        "-q",
        "-p",
        "no:cacheprovider",
        "--pyargs",
        "cprop_ref.conformance.test_port",
    ]
    return subprocess.run(command, cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)


def test_entry_passes_the_torch_port():
    result = _run_entry("cprop_ref.conformance:torch_port", 5)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "7 passed" in result.stdout  # six checks and the golden fixtures


def test_entry_fails_a_broken_port_with_the_report():
    result = _run_entry("tests.conformance_broken_ports:no_bias_correction", 30)
    assert result.returncode == 1, result.stdout + result.stderr
    assert "MISMATCH in check" in result.stdout and "reproduce with" in result.stdout
