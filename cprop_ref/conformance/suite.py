"""The whole harness against one port: every check over hypothesis-generated cases.

``run_suite(port)`` runs the open-loop, injected-state and closed-loop checks (and the
golden fixtures, when a fixture directory is given) and returns a
:class:`~.report.SuiteReport`: coverage on success, the first mismatch of each check,
shrunk by hypothesis to a small example, on failure: every distinct mismatch (by quantity or
crash, and optimizer family) up to a limit, so that one crash cannot mask the other differences. ``cprop-ref verify`` and the pytest
entry (:mod:`cprop_ref.conformance.test_port`) are thin shells over it.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from .dtypes import DTYPES
from .edges import edge_cases
from .protocol import MissingMethod, Unsupported
from .report import ConformanceMismatch, Coverage, SuiteReport

#: The checks that compare a port's numbers with the reference's after every step.
CHECKS: tuple[str, ...] = ("open_loop", "injected", "closed_loop", "resume")
#: The checks of what users rely on besides one parameter list's numbers (:mod:`.usage`).
USAGE_CHECKS: tuple[str, ...] = ("refusals", "groups")
#: What ``cprop-ref verify`` runs by default (and the mutation score is defined with): all of them.
VERIFY_CHECKS: tuple[str, ...] = CHECKS + USAGE_CHECKS


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
    if check == "refusals":
        return strategies.refusal_cases(dtypes)
    if check == "groups":
        return strategies.groups_cases(dtypes)
    raise ValueError(f"invalid check={check!r}: one of {', '.join(VERIFY_CHECKS)}")


def run_case(case: Any, port: Any, coverage: Coverage, port_spec: str | None) -> None:
    """Run one case; a configuration the port declines is counted, not failed."""
    try:
        case.run(port, port_spec=port_spec, coverage=coverage)
    except Unsupported as err:
        coverage.add_unsupported(str(err) or type(err).__name__, missing_method=isinstance(err, MissingMethod))


def run_check(
    check: str,
    port: Any,
    *,
    port_spec: str | None = None,
    max_examples: int = 50,
    derandomize: bool = True,
    dtypes: tuple[str, ...] = DTYPES,
    seed: int | None = None,
    shrink: bool = True,
) -> tuple[Coverage, ConformanceMismatch | None]:
    """One check over ``max_examples`` generated cases (and the edge cases); the first mismatch,
    if any, shrunk unless ``shrink`` is false (mutation testing needs only whether a check fails)."""
    coverage, failures = run_check_all(
        check,
        port,
        port_spec=port_spec,
        max_examples=max_examples,
        derandomize=derandomize,
        dtypes=dtypes,
        max_mismatches=1,
        seed=seed,
        shrink=shrink,
    )
    return coverage, (failures[0] if failures else None)


def run_check_all(
    check: str,
    port: Any,
    *,
    port_spec: str | None = None,
    max_examples: int = 50,
    derandomize: bool = True,
    dtypes: tuple[str, ...] = DTYPES,
    max_mismatches: int = 3,
    edges: bool = True,
    seed: int | None = None,
    shrink: bool = True,
) -> tuple[Coverage, list[ConformanceMismatch]]:
    """One check over ``max_examples`` generated cases; up to ``max_mismatches`` distinct
    mismatches, each shrunk unless ``shrink`` is false (mutation testing needs only whether
    a check fails).

    Distinct means another :attr:`~.report.Mismatch.signature` (quantity or crash, and the
    optimizer family). After each one is found, the search runs again with cases failing the
    same way counted as "seen again" instead of failed, so one crash or one bug cannot mask
    the others, neither in the search nor in hypothesis's shrinking. ``edges``: also the
    explicit edge cases of :mod:`.edges` (run first, in every run). ``seed``: hypothesis's
    random seed (with ``derandomize=False``), to reproduce a ``--random`` run.
    """
    try:
        from hypothesis import HealthCheck, Phase, example, given, settings
        from hypothesis import seed as hypothesis_seed
    except ImportError as err:
        raise ImportError("the conformance suite needs hypothesis: pip install 'cprop-ref[test]'") from err

    coverage = Coverage()
    phases = [Phase.explicit, Phase.generate] + ([Phase.shrink] if shrink else [])
    found: list[ConformanceMismatch] = []
    known: set[tuple[str, ...]] = set()
    rounds: list[Coverage] = []
    explicit = edge_cases(check, dtypes) if edges else []
    edge_ids = {id(case) for case in explicit}
    for round_number in range(max(1, max_mismatches)):
        rounds.append(coverage if round_number == 0 else Coverage())  # coverage: the first search only

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
            try:
                counted = rounds[-1]
                before = counted.examples
                run_case(case, port, counted, port_spec)
                if id(case) in edge_ids and counted.examples > before:  # counted apart from the generated ones
                    counted.examples -= 1
                    counted.edge_examples += 1
            except ConformanceMismatch as err:
                if err.mismatch.signature not in known:
                    raise
                coverage.seen_again[err.mismatch.signature] = coverage.seen_again.get(err.mismatch.signature, 0) + 1

        if edges:  # every run includes the edge cases by construction (:mod:`.edges`), whatever the seed
            for case in explicit:
                run = example(case=case)(run)
        if seed is not None and not derandomize:
            run = hypothesis_seed(seed)(run)

        try:
            run()
        except ConformanceMismatch as err:
            found.append(err)
            known.add(err.mismatch.signature)
            if "PortTimeout" in err.mismatch.signature[0]:
                break  # a hanging port would cost the time limit on every further case
            continue
        break
    return coverage, found


def run_suite(
    port: Any,
    *,
    port_spec: str | None = None,
    checks: tuple[str, ...] = VERIFY_CHECKS,
    max_examples: int = 50,
    derandomize: bool = True,
    dtypes: tuple[str, ...] = DTYPES,
    fixtures: str | None = None,
    progress: Callable[[str], None] | None = None,
    max_mismatches: int = 3,
    time_limit: float | None = 60.0,
) -> SuiteReport:
    """Every check in ``checks`` against ``port``; ``fixtures``: also the golden fixture directory."""
    report = SuiteReport(port=port_spec or getattr(port, "__name__", repr(port)))
    from . import checks as checks_module

    previous_limit = checks_module.CALL_TIME_LIMIT[0]
    checks_module.CALL_TIME_LIMIT[0] = time_limit
    try:
        _run_all(report, port, port_spec, checks, max_examples, derandomize, dtypes, fixtures, progress, max_mismatches)
    finally:
        checks_module.CALL_TIME_LIMIT[0] = previous_limit
    return report


def _run_all(
    report: SuiteReport,
    port: Any,
    port_spec: str | None,
    checks: tuple[str, ...],
    max_examples: int,
    derandomize: bool,
    dtypes: tuple[str, ...],
    fixtures: str | None,
    progress: Callable[[str], None] | None,
    max_mismatches: int,
) -> None:
    for check in checks:
        if progress:
            progress(f"running {check} ({max_examples} examples)")
        coverage, failures = run_check_all(
            check,
            port,
            port_spec=port_spec,
            max_examples=max_examples,
            derandomize=derandomize,
            dtypes=dtypes,
            max_mismatches=max_mismatches,
        )
        report.coverage[check] = coverage
        report.failures += [failure.mismatch for failure in failures]
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
