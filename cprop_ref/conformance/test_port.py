"""The pytest entry of the conformance suite, for your own port.

Run it against any port factory (``port(config, params) -> run``, see
:mod:`cprop_ref.conformance.protocol`) named in the environment, as the Array API test
suite does::

    CPROP_PORT=my_package.cprop_port:make pytest --pyargs cprop_ref.conformance.test_port

``CPROP_PORT`` defaults to cprop-ref itself (a self-check). ``CPROP_PORT_EXAMPLES``
(default 50) sets the hypothesis examples per check, ``CPROP_PORT_DTYPES`` (default
``float32,float64,float16,bfloat16``) the dtypes. A failure prints the harness's full report, with a
snippet that reproduces it.
"""

from __future__ import annotations

import os

import pytest

from cprop_ref.conformance import load_port
from cprop_ref.conformance.dtypes import DTYPES as ALL_DTYPES
from cprop_ref.conformance.golden import check_fixtures, write_fixtures
from cprop_ref.conformance.report import ConformanceMismatch, Coverage
from cprop_ref.conformance.suite import VERIFY_CHECKS, run_check

PORT_SPEC = os.environ.get("CPROP_PORT", "cprop_ref.conformance:reference_port")
EXAMPLES = int(os.environ.get("CPROP_PORT_EXAMPLES", "50"))
DTYPES = tuple(os.environ.get("CPROP_PORT_DTYPES", ",".join(ALL_DTYPES)).split(","))


@pytest.fixture(scope="module")
def port():
    return load_port(PORT_SPEC)


@pytest.mark.parametrize("check", VERIFY_CHECKS)
def test_port_conforms(port, check):
    """Open loop, injected state and closed loop, each over ``EXAMPLES`` generated cases."""
    coverage, failure = run_check(check, port, port_spec=PORT_SPEC, max_examples=EXAMPLES, dtypes=DTYPES)
    if failure is not None:
        pytest.fail(str(failure), pytrace=False)
    if coverage.examples == 0 and coverage.missing_methods:  # an optional method left out: not covered
        pytest.skip("; ".join(sorted(coverage.missing_methods)))
    assert coverage.examples > 0


def test_port_matches_golden_fixtures(port, tmp_path):
    """The fixed golden cases (written by the reference here) within their stored tolerances."""
    write_fixtures(tmp_path)
    coverage, report = Coverage(), None
    try:
        check_fixtures(tmp_path, port, port_spec=PORT_SPEC, coverage=coverage)
    except ConformanceMismatch as err:
        report = str(err)
    if report is not None:
        pytest.fail(report, pytrace=False)
    assert coverage.examples > 0
