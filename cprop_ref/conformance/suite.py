"""The whole harness against one port: every check over hypothesis-generated cases.

``run_suite(port)`` runs the open-loop, injected-state and closed-loop checks (and the
golden fixtures, when a fixture directory is given) and returns a
:class:`~.report.SuiteReport`: coverage on success, the first mismatch of each check,
shrunk by hypothesis to a small example, on failure. ``cprop-ref verify`` and the pytest
entry (:mod:`cprop_ref.conformance.test_port`) are thin shells over it.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from .dtypes import DTYPES
from .protocol import Unsupported
from .report import ConformanceMismatch, Coverage, SuiteReport

CHECKS: tuple[str, ...] = ("open_loop", "injected", "closed_loop", "resume")


def case_strategy(check: str, dtypes: tuple[str, ...] = DTYPES) -> Any:
    """The hypothesis strategy of ``check``'s cases."""
    from . import strategies

    if check == "open_loop":
        return strategies.open_loop_cases(dtypes)
    if check == "injected":
        return strategies.injected_cases(dtypes)
    if check == "closed_loop":
        return strategies.closed_loop_cases(dtypes)
    if check == "resume":
        return strategies.resume_cases(dtypes)
    raise ValueError(f"invalid check={check!r}: one of {', '.join(CHECKS)}")


def run_case(case: Any, port: Any, coverage: Coverage, port_spec: str | None) -> None:
    """Run one case; a configuration the port declines is counted, not failed."""
    try:
        case.run(port, port_spec=port_spec, coverage=coverage)
    except Unsupported as err:
        coverage.add_unsupported(str(err) or type(err).__name__)


def run_check(
    check: str,
    port: Any,
    *,
    port_spec: str | None = None,
    max_examples: int = 50,
    derandomize: bool = True,
    dtypes: tuple[str, ...] = DTYPES,
    shrink: bool = True,
) -> tuple[Coverage, ConformanceMismatch | None]:
    """One check over ``max_examples`` generated cases; the first mismatch, if any, shrunk
    unless ``shrink`` is false (mutation testing needs only whether a check fails)."""
    try:
        from hypothesis import HealthCheck, Phase, given, settings
    except ImportError as err:
        raise ImportError("the conformance suite needs hypothesis: pip install 'cprop-ref[test]'") from err

    coverage = Coverage()
    phases = [Phase.explicit, Phase.generate] + ([Phase.shrink] if shrink else [])

    @settings(
        max_examples=max_examples,
        derandomize=derandomize,
        database=None,
        deadline=None,
        phases=phases,
        suppress_health_check=list(HealthCheck),
        print_blob=False,
        report_multiple_bugs=False,
    )
    @given(case=case_strategy(check, dtypes))
    def run(case: Any) -> None:
        run_case(case, port, coverage, port_spec)

    try:
        run()
    except ConformanceMismatch as err:
        return coverage, err
    return coverage, None


def run_suite(
    port: Any,
    *,
    port_spec: str | None = None,
    checks: tuple[str, ...] = CHECKS,
    max_examples: int = 50,
    derandomize: bool = True,
    dtypes: tuple[str, ...] = DTYPES,
    fixtures: str | None = None,
    progress: Callable[[str], None] | None = None,
) -> SuiteReport:
    """Every check in ``checks`` against ``port``; ``fixtures``: also the golden fixture directory."""
    report = SuiteReport(port=port_spec or getattr(port, "__name__", repr(port)))
    for check in checks:
        if progress:
            progress(f"running {check} ({max_examples} examples)")
        coverage, failure = run_check(
            check, port, port_spec=port_spec, max_examples=max_examples, derandomize=derandomize, dtypes=dtypes
        )
        report.coverage[check] = coverage
        if failure is not None:
            report.failures.append(failure.mismatch)
    if fixtures is not None:
        from .golden import check_fixtures

        if progress:
            progress(f"running the golden fixtures in {fixtures}")
        coverage = Coverage()
        try:
            check_fixtures(fixtures, port, port_spec=port_spec, coverage=coverage)
        except ConformanceMismatch as err:
            report.failures.append(err.mismatch)
        report.coverage["golden"] = coverage
    return report
