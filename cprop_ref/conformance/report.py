"""What the harness reports: the first mismatch of a check, in full, or what was covered.

A :class:`Mismatch` names the check, the step, the tensor, the element and the quantity
(``param``, ``scale``, ``cprop_m``, ``cprop_v``, ``step`` or ``exception``), the port's
and the reference's values, the absolute, relative and ulp errors, the bound they broke,
the configuration and a self-contained Python snippet that reproduces it.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from .config import PortConfig
from .dtypes import compute_dtype


def ulp_error(port: float, reference: float, dtype: np.dtype | str) -> float:
    """``|port - reference|`` in units of the spacing of ``dtype`` at the reference value
    (``"bfloat16"``: float32's spacing times 2^16, its 8-bit significand)."""
    if not (math.isfinite(port) and math.isfinite(reference)):
        return math.inf if port != reference else 0.0
    widen = 1.0
    if dtype == "bfloat16":
        dtype, widen = np.dtype(np.float32), 2.0**16
    dtype = np.dtype(dtype)
    spacing = float(np.spacing(np.abs(np.asarray(reference, dtype=dtype)))) * widen
    tiny = float(np.finfo(dtype).smallest_subnormal) * widen
    return abs(port - reference) / max(spacing, tiny)


def relative_error(port: float, reference: float) -> float:
    if port == reference:
        return 0.0
    if reference == 0.0 or not math.isfinite(reference):
        return math.inf
    return abs(port - reference) / abs(reference)


@dataclass
class Mismatch:
    """The first place where a port and the reference differ beyond the bound."""

    check: str
    step: int
    tensor: int
    element: tuple[int, ...]
    quantity: str
    port_value: float
    reference_value: float
    bound: float
    config: PortConfig
    detail: str = ""
    snippet: str = ""
    unconstrained: int = 0
    #: The port's own traceback of a crash (quantity ``exception``), innermost frames last.
    trace: str = ""
    #: The injected state's step count (injected check), 0 otherwise.
    start_t: int = 0

    @property
    def signature(self) -> tuple[str, str]:
        """What groups mismatches: a value's quantity and the optimizer family (``CProp(Adam)``);
        a crash by the call and exception type, a malformed read-out by the read-out, whatever
        the optimizer (one broken feature crashes every family it reaches)."""
        if self.quantity == "exception":
            call, _, rest = self.detail.partition(": ")
            return (f"crash in {call}: {rest.partition(':')[0]}", "any optimizer")
        if self.quantity == "read-out":
            return (f"malformed {self.detail.partition(' is malformed')[0]}", "any optimizer")
        return (self.quantity, self.config.name)

    @property
    def abs_error(self) -> float:
        if self.port_value == self.reference_value:
            return 0.0
        return abs(self.port_value - self.reference_value)

    def format(self) -> str:
        # CProp's statistics and scale live in the compute dtype (float32 for 16-bit parameters)
        dtype = self.config.dtype if self.quantity == "param" else compute_dtype(self.config.dtype)
        when = f"after step {self.step}"
        if self.start_t:
            when += f" from the injected state at t = {self.start_t} (CProp's t is {self.start_t + self.step} there)"
        if self.quantity == "exception":
            headline = f"CRASH in check '{self.check}' {when}: the port raised"
        elif self.quantity == "read-out":
            headline = f"MALFORMED READ-OUT in check '{self.check}' {when}"
        elif self.quantity == "refusal":
            headline = f"NOT REFUSED in check '{self.check}': an invalid hyperparameter, when building the optimizer"
        else:
            headline = f"MISMATCH in check '{self.check}': {self.quantity} of tensor {self.tensor}, element {self.element}, {when}"
        lines = [headline, f"  configuration : {self.config.describe()}"]
        if self.quantity == "exception":
            lines.append(f"  the port raised: {self.detail}")
            if self.trace:
                lines += ["  in the port:", *("    " + line for line in self.trace.splitlines())]
        elif self.quantity in ("read-out", "refusal"):
            lines.append(f"  {self.detail}")
        else:
            lines += [
                f"  port          : {self.port_value!r}",
                f"  reference     : {self.reference_value!r}",
                f"  abs error     : {self.abs_error:.6g}   (bound {self.bound:.6g})",
                f"  rel error     : {relative_error(self.port_value, self.reference_value):.6g}",
                f"  ulp error     : {ulp_error(self.port_value, self.reference_value, dtype):.6g} ulp of {np.dtype(dtype) if dtype != 'bfloat16' else dtype}",
            ]
            if self.detail:
                lines.append(f"  note          : {self.detail}")
            if self.unconstrained:
                lines.append(
                    f"  ({self.unconstrained} unconstrained (ill-conditioned) elements of this case were counted, not compared)"
                )
        if self.snippet:
            lines += ["  reproduce with:", *("    " + line for line in self.snippet.splitlines())]
        return "\n".join(lines)


class ConformanceMismatch(AssertionError):
    """Raised by a check on the first mismatch; ``str()`` is the full report."""

    def __init__(self, mismatch: Mismatch) -> None:
        super().__init__(mismatch.format())
        self.mismatch = mismatch


#: The code-path switches of a CProp implementation that the coverage report accounts for.
PATH_SWITCHES: tuple[str, ...] = (
    "beta = 0 (n = 1 at every step)",
    "beta near 1 (>= 0.999)",
    "c = 0",
    "eps = 0",
    "cdf normal",
    "cdf bft",
    "cdf bfo",
    "cdf logistic",
    "momentum with dampening",
    "Nesterov",
    "AMSGrad",
    "weight decay >= 1",
    "CPropAdam beta1 == cprop_beta (shared m)",
    "CPropAdam beta2 == cprop_beta (shared v)",
    "Adam beta == 1 - cprop_beta",
    "16-bit parameters",
    "non-contiguous layouts",
    "t > 1000",
    "v overflowed to inf",
    "a variance of exactly 1.0",
    "scale exactly 0",
    "scale saturated at 1",
    "zero gradient",
    "update overflowed to inf",
)


@dataclass
class Coverage:
    """What one check compared: examples run, steps, elements compared per quantity, the
    ill-conditioned scale elements counted instead, configurations the port declined."""

    examples: int = 0
    #: The edge cases by construction that ran (:mod:`.edges`), besides the generated ``examples``.
    edge_examples: int = 0
    steps: int = 0
    compared: dict[str, int] = field(default_factory=dict)
    unconstrained: int = 0
    unsupported: dict[str, int] = field(default_factory=dict)
    configurations: set[str] = field(default_factory=set)
    #: Parameter elements that differ where the wrapped framework optimizer's own arithmetic
    #: overflowed and the reference's did not (``docs/conformance.md``, "Base optimizers").
    base_differences: int = 0
    #: Cases that failed again in a way already reported (by signature), while searching for others.
    seen_again: dict[tuple[str, ...], int] = field(default_factory=dict)
    #: The code-path switches (``PATH_SWITCHES``) the cases exercised.
    paths: set[str] = field(default_factory=set)
    #: Declines because the port has no optional method or hook the check needs (:class:`.protocol.MissingMethod`).
    missing_methods: set[str] = field(default_factory=set)

    def add_compared(self, quantity: str, count: int) -> None:
        self.compared[quantity] = self.compared.get(quantity, 0) + count

    def add_unsupported(self, reason: str, missing_method: bool = False) -> None:
        self.unsupported[reason] = self.unsupported.get(reason, 0) + 1
        if missing_method:
            self.missing_methods.add(reason)

    @property
    def declined_configurations(self) -> int:
        """Cases the port declined for their configuration (not for a missing optional method)."""
        return sum(n for reason, n in self.unsupported.items() if reason not in self.missing_methods)


#: The minimum-coverage rule: a port passes only if it ran at least this share of the open loop's
#: cases (generated and edge cases; the check every port can run, needing only ``step`` and
#: ``params``), and at least one case of every check it did not decline wholesale for a missing
#: optional method. A port that declines nearly everything has shown nothing.
MIN_OPEN_LOOP_SHARE = 0.05


def coverage_shortfalls(coverage: dict[str, Coverage]) -> list[str]:
    """Why ``coverage`` is too little to call a port conforming (empty: enough), each naming the
    check, what ran and what the port declined."""
    out = []
    for check, cov in coverage.items():
        ran = cov.examples + cov.edge_examples
        declined = cov.declined_configurations
        reasons = "; ".join(
            f"{reason} ({n})"
            for reason, n in sorted(cov.unsupported.items(), key=lambda kv: -kv[1])
            if reason not in cov.missing_methods
        )
        if check == "open_loop" and ran + declined and ran < MIN_OPEN_LOOP_SHARE * (ran + declined):
            out.append(
                f"open_loop: the port ran {ran} of {ran + declined} cases ({100.0 * ran / (ran + declined):.1f}%; "
                f"at least {100.0 * MIN_OPEN_LOOP_SHARE:g}% needed); declined: {reasons}"
            )
        elif ran == 0 and declined:
            out.append(f"{check}: the port ran none of its {declined} cases; declined: {reasons}")
    return out


@dataclass
class SuiteReport:
    """The outcome of :func:`cprop_ref.conformance.suite.run_suite`."""

    port: str
    coverage: dict[str, Coverage] = field(default_factory=dict)
    failures: list[Mismatch] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)

    @property
    def shortfalls(self) -> list[str]:
        """The minimum-coverage rule's findings (:func:`coverage_shortfalls`)."""
        return coverage_shortfalls(self.coverage)

    @property
    def passed(self) -> bool:
        return not self.failures and not self.errors and not self.shortfalls

    def format(self) -> str:
        if self.failures or self.errors:
            verdict = "FAILED"
        elif self.shortfalls:
            verdict = "FAILED: INSUFFICIENT COVERAGE (the port declined too much to be called conforming)"
        else:
            verdict = "PASSED"
        lines = [f"cprop-ref conformance report for port {self.port}: {verdict}"]
        lines += [f"  insufficient coverage: {why}" for why in self.shortfalls]
        for name, cov in self.coverage.items():
            compared = ", ".join(f"{q} {n}" for q, n in sorted(cov.compared.items())) or "nothing"
            lines.append(
                f"  {name:<12} {cov.examples} examples + {cov.edge_examples} edge cases, {cov.steps} steps, {len(cov.configurations)} optimizer "
                f"configurations; elements compared: {compared}; unconstrained (ill-conditioned) elements counted, not compared: "
                f"{cov.unconstrained}"
            )
            for reason, n in sorted(cov.unsupported.items()):
                lines.append(f"  {'':<12} declined by the port {n} times: {reason}")
            if cov.paths:
                missed = [p for p in PATH_SWITCHES if p not in cov.paths]
                lines.append(
                    f"  {'':<12} path switches exercised: {len([p for p in PATH_SWITCHES if p in cov.paths])} of "
                    f"{len(PATH_SWITCHES)}" + (f"; not exercised: {', '.join(missed)}" if missed else "")
                )
            if cov.base_differences:
                lines.append(
                    f"  {'':<12} {cov.base_differences} parameter elements differ where the wrapped framework "
                    "optimizer itself overflowed (not CProp's doing; counted, not compared: docs/conformance.md, "
                    "'Base optimizers')"
                )
        if self.failures:
            groups = [f"{m.check}: {m.signature[0]} ({m.signature[1]})" for m in self.failures]
            lines += ["", f"{len(self.failures)} distinct mismatches (by check, quantity or crash, optimizer):"]
            for group, m in zip(groups, self.failures):
                again = self.coverage[m.check].seen_again.get(m.signature, 0) if m.check in self.coverage else 0
                lines.append(f"  - {group}" + (f"; {again} more failing cases like it" if again else ""))
        for mismatch in self.failures:
            lines += ["", mismatch.format()]
        for error in self.errors:
            lines += ["", error]
        return "\n".join(lines)


def _literal(x: Any) -> str:
    if isinstance(x, list):
        return "[" + ", ".join(_literal(v) for v in x) + "]"
    if isinstance(x, float) and not math.isfinite(x):
        return f"float('{x}')"
    return repr(x)


def python_literal(x: Any) -> str:
    """Python source for plain data (dicts, lists, tuples, numbers, strings), non-finite floats as
    ``float('inf')`` so that the source runs (``repr`` writes a bare ``inf``)."""
    if isinstance(x, dict):
        return "{" + ", ".join(f"{python_literal(k)}: {python_literal(v)}" for k, v in x.items()) + "}"
    if isinstance(x, (list, tuple)):
        inner = ", ".join(python_literal(v) for v in x)
        return f"[{inner}]" if isinstance(x, list) else f"({inner}{',' if len(x) == 1 else ''})"
    if isinstance(x, float) and not math.isfinite(x):
        return f"float('{x}')"
    return repr(x)


def array_literal(a: np.ndarray | None) -> str:
    """Python source that rebuilds ``a`` exactly (``tolist`` floats repr round-trip)."""
    if a is None:
        return "None"
    a = np.asarray(a)
    return f"np.array({_literal(a.tolist())}, dtype=np.{a.dtype})"


def arrays_literal(arrays: Any, dtype: Any = None) -> str:
    """Python source for the list ``arrays`` (each as :func:`array_literal`, cast to ``dtype`` first where given)."""
    return "[" + ", ".join(array_literal(a if dtype is None else np.asarray(a, dtype)) for a in arrays) + "]"


def state_literal(state: dict[str, Any]) -> str:
    items = ", ".join(f"{k!r}: {array_literal(v) if isinstance(v, np.ndarray) else repr(v)}" for k, v in state.items())
    return "{" + items + "}"


def snippet(port_spec: str | None, config: PortConfig, call: str, **arrays_source: str) -> str:
    """A self-contained script: imports, the configuration, the data, and the check call."""
    port_line = (
        f"port = load_port({port_spec!r})"
        if port_spec
        else "port = ...  # your port factory (the harness was given an object, not MODULE:FACTORY)"
    )
    lines = [
        "import numpy as np",
        "from cprop_ref.conformance import PortConfig, load_port, " + call.split("(")[0],
        f"config = PortConfig.from_json({python_literal(config.to_json())})",
        port_line,
        *(f"{name} = {source}" for name, source in arrays_source.items()),
        call,
    ]
    return "\n".join(lines)
