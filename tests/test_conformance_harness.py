"""The conformance harness itself: it passes the reference and legitimate re-roundings of it,
catches every deliberately broken port with a clear report, and its comparison rule
neither flakes on ill-conditioned scales nor hides impossible values there."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import assume, given, settings

from cprop_ref.conformance import (
    ConformanceMismatch,
    PortConfig,
    ReferenceRun,
    check_open_loop,
    load_port,
    reference_port,
)
from cprop_ref.conformance.checks import _Comparer
from cprop_ref.conformance.report import Coverage
from cprop_ref.conformance.strategies import open_loop_cases
from cprop_ref.conformance.suite import CHECKS, run_check, run_suite

pytest.importorskip("torch")

from tests import conformance_broken_ports as broken  # noqa: E402

SGD_CONFIG = PortConfig(
    "CPropSGD",
    dict(
        lr=0.1,
        cprop_beta=0.9,
        cprop_c=1.0,
        cprop_eps=1e-8,
        cprop_cdf="bft",
        momentum=0.0,
        dampening=0.0,
        weight_decay=0.0,
        nesterov=False,
    ),
    "float32",
)


def test_reference_conforms_to_itself():
    """Same code on both sides: every check passes (and compares something)."""
    report = run_suite(reference_port, port_spec="cprop_ref.conformance:reference_port", max_examples=25)
    assert report.passed, report.format()
    for check in CHECKS:
        assert report.coverage[check].examples == 25
        assert report.coverage[check].compared["param"] > 0


class PreciseRun(ReferenceRun):
    """A legitimate float32 port that rounds differently: it computes every step in float64
    and rounds its parameters to float32 after each step (it keeps its float64 state). Its
    difference from the float32 reference is the reference's own rounding, which the
    tolerance policy must cover."""

    def __init__(self, config: PortConfig, params):
        self.out_dtype = config.np_dtype
        wide = PortConfig(config.optimizer, config.hyperparams, "float64", config.base, config.base_hyperparams)
        super().__init__(wide, params)

    def params(self):
        return [p.astype(self.out_dtype) for p in self._params]

    def step(self, grads):
        super().step([None if g is None else g.astype(np.float64) for g in grads])
        for p in self._params:  # the parameters live in float32
            p[...] = p.astype(self.out_dtype)

    def scales(self):
        return [None if s is None else s.astype(self.out_dtype) for s in super().scales()]

    def cprop_state(self):
        return [
            None if st is None else (st[0].astype(self.out_dtype), st[1].astype(self.out_dtype), st[2])
            for st in super().cprop_state()
        ]


def _within_float32_range(case) -> bool:
    """Gradients whose squares neither overflow nor underflow in float32: there the float64
    port differs from the float32 reference by rounding only, not by range."""
    values = np.concatenate([np.abs(g).ravel() for gs in case.grads for g in gs if g is not None] + [np.zeros(0)])
    values = values[values > 0]
    return bool(np.all((values > 1e-15) & (values < 1e15)))


@settings(max_examples=40)
@given(case=open_loop_cases(dtypes=("float32",)))
def test_a_more_precise_port_passes(case):
    """Property: a port that is *more* accurate than the float32 reference (float64 inside)
    is never reported; the bounds are derived for the rounding of either side."""
    assume(_within_float32_range(case))
    case.run(lambda config, params: PreciseRun(config, params))


EXPECTED_QUANTITY = {
    "n instead of n - 1": {"scale"},
    "missing bias correction": {"scale"},
    "wrong bft constant": {"scale"},
    "unclamped scale": {"scale"},
    "statistics after weight decay": {"cprop_m"},
    "step counter off by one": {"scale", "step"},
    # The read-out scales() is a function of the (correct) statistics; the applied scale is
    # wrong, which the parameter shows.
    "moments updated after the scale": {"param"},
    "scale applied before momentum": {"param"},
    "CPropAdam statistics after weight decay": {"cprop_m"},
}
FACTORY_NAMES = {
    "n instead of n - 1": "n_instead_of_n_minus_one",
    "missing bias correction": "no_bias_correction",
    "wrong bft constant": "wrong_bft_constant",
    "unclamped scale": "unclamped_scale",
    "statistics after weight decay": "statistics_after_weight_decay",
    "step counter off by one": "step_off_by_one",
    "moments updated after the scale": "moments_after_scale",
    "scale applied before momentum": "scale_before_momentum",
    "CPropAdam statistics after weight decay": "adam_statistics_after_weight_decay",
}


@pytest.mark.parametrize("bug", sorted(broken.BROKEN))
def test_each_broken_port_is_caught_with_a_clear_report(bug):
    """The open-loop check (derandomized, 100 examples) finds the bug, names the quantity
    where it shows first, and the report's snippet reproduces the mismatch on its own."""
    spec = f"tests.conformance_broken_ports:{FACTORY_NAMES[bug]}"
    port = load_port(spec)
    coverage, failure = run_check("open_loop", port, port_spec=spec, max_examples=100)
    assert failure is not None, f"the harness missed the bug {bug!r} ({coverage.examples} examples)"
    mismatch = failure.mismatch
    assert mismatch.quantity in EXPECTED_QUANTITY[bug], mismatch.format()
    text = mismatch.format()
    for field in (
        "MISMATCH in check 'open_loop'",
        "configuration",
        "port ",
        "reference",
        "abs error",
        "rel error",
        "ulp error",
        "reproduce with",
    ):
        assert field in text, text
    assert mismatch.step >= 1 and mismatch.tensor >= 0
    namespace: dict = {}
    with pytest.raises(ConformanceMismatch) as reproduced:
        exec(mismatch.snippet, namespace)  # noqa: S102 - the snippet is the harness's own output
    again = reproduced.value.mismatch
    assert (again.step, again.tensor, again.element, again.quantity) == (
        mismatch.step,
        mismatch.tensor,
        mismatch.element,
        mismatch.quantity,
    )


@pytest.mark.parametrize("bug", ["n instead of n - 1", "unclamped scale", "scale applied before momentum"])
def test_injected_and_closed_loop_checks_catch_bugs_too(bug):
    port = load_port(f"tests.conformance_broken_ports:{FACTORY_NAMES[bug]}")
    for check in ("injected", "closed_loop"):
        _, failure = run_check(check, port, max_examples=100)
        assert failure is not None, f"{check} missed {bug!r}"


def test_a_crashing_port_is_reported_not_raised():
    class Crashing(ReferenceRun):
        def step(self, grads):
            raise RuntimeError("kernel launch failed")

    params = [np.ones(3, np.float32)]
    with pytest.raises(ConformanceMismatch) as info:
        check_open_loop(Crashing, SGD_CONFIG, params, [[np.ones(3, np.float32)]])
    assert info.value.mismatch.quantity == "exception"
    assert "kernel launch failed" in str(info.value)


def _comparer() -> _Comparer:
    return _Comparer("unit", SGD_CONFIG, Coverage(), lambda step: "")


def test_ill_conditioned_scale_elements_are_counted_not_compared():
    """Bound 1 (ill-conditioned): any value in [0, 1] passes and is counted..."""
    comparer = _comparer()
    comparer.compare(1, 0, "scale", np.array([0.9, 0.5]), np.array([0.1, 0.5]), np.array([1.0, 1e-7]))
    assert comparer.coverage.unconstrained == 1
    assert comparer.coverage.compared["scale"] == 1


@pytest.mark.parametrize("port_value", [np.nan, 1.5, -0.25])
def test_impossible_scales_are_caught_even_where_ill_conditioned(port_value):
    """...but NaN against a number, or a scale outside [0, 1], is wrong whatever the rounding."""
    with pytest.raises(ConformanceMismatch) as info:
        _comparer().compare(1, 0, "scale", np.array([port_value]), np.array([0.3]), np.array([1.0]))
    assert "whatever the rounding" in str(info.value)


def test_comparison_rule_within_and_beyond_the_bound():
    comparer = _comparer()
    comparer.compare(1, 0, "param", np.array([1.0, np.inf, np.nan]), np.array([1.0 + 1e-7, np.inf, np.nan]), 2e-7)
    with pytest.raises(ConformanceMismatch) as info:
        comparer.compare(2, 0, "param", np.array([[1.0, 2.0]]), np.array([[1.0, 2.0 + 3e-7]]), 2e-7)
    mismatch = info.value.mismatch
    assert (mismatch.step, mismatch.element, mismatch.reference_value) == (2, (0, 1), 2.0 + 3e-7)


def test_load_port_errors_name_the_spec():
    for spec in ("no_colon", "cprop_ref.conformance:nothing_here", "no.such.module:f"):
        with pytest.raises(ValueError, match="port"):
            load_port(spec)


def test_a_port_without_read_outs_is_checked_on_its_parameters():
    """A torch optimizer with neither ``scales()`` nor ``cprop_statistics()`` (the authors'
    package has neither): the harness compares the parameters only, and declines nothing
    for it; the configurations the port has no class for are counted as declined."""
    from cprop_ref.conformance.torch_adapter import TorchPort
    from cprop_ref.torch import CPropSGD

    class WithoutReadOuts(CPropSGD):
        def __getattribute__(self, name):
            if name in ("scales", "cprop_statistics"):
                raise AttributeError(name)
            return super().__getattribute__(name)

    coverage, failure = run_check("open_loop", TorchPort(classes={"CPropSGD": WithoutReadOuts}), max_examples=20)
    assert failure is None
    assert set(coverage.compared) == {"param"} and coverage.compared["param"] > 0
    assert set(coverage.unsupported) <= {"no class for CPropAdam", "no class for CProp"}


def test_saturated_scales_of_a_nearly_constant_gradient_are_compared():
    """A nearly constant gradient has a variance that is rounding noise in float32, so the
    standard error is not pinned down; its sign is, and the scale is saturated at 1 whatever
    the rounding (the tail bound of the policy). A port 0.1% off there is caught, not counted."""

    class Off(ReferenceRun):
        def scales(self):
            return [None if s is None else (s * 0.999).astype(s.dtype) for s in super().scales()]

    rng = np.random.default_rng(5)
    grads = [[np.asarray(1.0 + 1e-3 * rng.standard_normal(4), np.float32)] for _ in range(10)]
    params = [np.zeros(4, np.float32)]
    coverage = check_open_loop(reference_port, SGD_CONFIG, params, grads)
    assert coverage.unconstrained == 0 and coverage.compared["scale"] == 40
    with pytest.raises(ConformanceMismatch) as info:
        check_open_loop(Off, SGD_CONFIG, params, grads)
    assert info.value.mismatch.quantity == "scale" and info.value.mismatch.reference_value == 1.0
