"""The JAX port through the conformance harness: every check in every dtype
with jit-compiled steps, the golden fixtures (float64 against the NumPy reference within the
tolerance policy), and what the adapter adds to the protocol (subnormal inputs declined,
because XLA on the CPU flushes them to zero; resume through a pickled state pytree).

Each generated example compiles its own step (about a second of CPU): the examples are few
here; ``cprop-ref verify cprop_ref.conformance:jax_port`` runs 100 per check."""

from __future__ import annotations

import numpy as np
import pytest

pytest.importorskip("jax")
pytest.importorskip("optax")

from pathlib import Path  # noqa: E402

import jax  # noqa: E402

from cprop_ref.conformance import Unsupported, jax_port  # noqa: E402
from cprop_ref.conformance.config import PortConfig  # noqa: E402
from cprop_ref.conformance.golden import check_case, read_fixtures  # noqa: E402
from cprop_ref.conformance.report import Coverage  # noqa: E402
from cprop_ref.conformance.suite import CHECKS, run_check_all  # noqa: E402

FIXTURES = Path(__file__).parent / "golden" / "conformance"
SPEC = "cprop_ref.conformance:jax_port"


@pytest.mark.parametrize("check", CHECKS)
def test_port_passes_the_harness(check):
    """Every check over float32, float64, float16 and bfloat16, all optimizers and CDFs
    (derandomized examples); a configuration is declined only for a subnormal input."""
    coverage, failures = run_check_all(check, jax_port, port_spec=SPEC, max_examples=6, edges=False, max_mismatches=1)
    assert not failures, str(failures[0])
    assert coverage.examples >= 3 and coverage.compared["param"] > 0
    assert all("subnormal" in reason for reason in coverage.unsupported), coverage.unsupported


@pytest.mark.slow
@pytest.mark.parametrize("check", CHECKS)
def test_port_passes_every_checks_edge_cases(check):
    """The harness's explicit edge cases (beta 0 and near 1, c = 0, eps = 0, overflowing squares,
    zero gradients, ...: about 80 configurations, a compile each, so not in the default run;
    ``cprop-ref verify`` runs them too)."""
    coverage, failures = run_check_all(check, jax_port, port_spec=SPEC, max_examples=20, max_mismatches=1)
    assert not failures, str(failures[0])
    assert coverage.edge_examples > 0


def test_golden_fixtures_in_float64_agree_with_the_reference():
    """The golden cases in float64: the port's parameters, scales and moments within the
    tolerance policy's bounds of the NumPy reference's at every step."""
    coverage = Coverage()
    cases = [case for case in read_fixtures(FIXTURES) if case.config.dtype == "float64"]
    assert len(cases) >= 5
    for case in cases:
        check_case(case, jax_port, port_spec=SPEC, coverage=coverage, folder=FIXTURES)
    assert coverage.compared["scale"] > 0 and coverage.compared["param"] > 0


@pytest.mark.slow
def test_every_golden_fixture():
    coverage = Coverage()
    for case in read_fixtures(FIXTURES):
        check_case(case, jax_port, port_spec=SPEC, coverage=coverage, folder=FIXTURES)


def _config(dtype: str = "float32") -> PortConfig:
    hp = dict(lr=0.1, cprop_beta=0.9, cprop_c=1.0, cprop_eps=1e-8, cprop_cdf="bft")
    return PortConfig(
        "CPropSGD", {**hp, "momentum": 0.9, "dampening": 0.0, "weight_decay": 0.0, "nesterov": False}, dtype
    )


def test_xla_flushes_subnormals_so_the_adapter_declines_them():
    """The reason for the only configurations the adapter declines: on the CPU, XLA computes
    with subnormal numbers flushed to zero (if a jaxlib stops doing so, this test says it is
    time to compare them)."""
    tiny = np.float32(1e-40)
    if jax.default_backend() == "cpu":
        assert float(jax.jit(lambda x: x * 2.0)(np.array(tiny))) == 0.0
    run = jax_port(_config(), [np.ones(3, np.float32)])
    with pytest.raises(Unsupported, match="subnormal"):
        run.step([np.array([1.0, tiny, 0.0], np.float32)])
    run.step([np.array([1.0, 1e-30, 0.0], np.float32)])  # normal numbers are stepped


def test_float16_subnormal_gradients_are_normal_in_the_compute_dtype():
    """float16 gradients below 6.1e-5 are subnormal in float16 but normal in float32, where the
    statistics live: stepped and compared, not declined."""
    run = jax_port(_config("float16"), [np.ones(2, np.float16)])
    run.step([np.array([1e-7, -3e-6], np.float16)])
    assert run.cprop_state()[0][0].dtype == np.float32 and np.all(run.cprop_state()[0][0] != 0.0)


def test_a_tensor_without_gradient_keeps_its_state_and_parameter():
    run = jax_port(_config(), [np.ones(2, np.float32), np.ones(3, np.float32)])
    run.step([np.array([1.0, -1.0], np.float32), None])
    assert run.cprop_state()[1] is None and run.scales()[1] is None
    np.testing.assert_array_equal(run.params()[1], np.ones(3, np.float32))
    before = run.cprop_state()[0]
    run.step([None, np.array([1.0, 2.0, 3.0], np.float32)])
    assert run.cprop_state()[0][2] == 1 and run.cprop_state()[1][2] == 1
    np.testing.assert_array_equal(run.cprop_state()[0][0], before[0])
