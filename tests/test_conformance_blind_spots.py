"""The harness's former blind spots, and its strength where mutants of the torch port used to
hide: subnormal floors without false alarms, valid alternative
ports passing, 16-bit statistics, memory layouts, resume through the port's own state_dict,
edges caught under any seed, reports that show every distinct mismatch, crashes, hangs and
malformed read-outs without a traceback from inside the harness."""

from __future__ import annotations

import secrets
import time

import numpy as np
import pytest

from cprop_ref.conformance import ConformanceMismatch, ReferenceRun, check_open_loop, load_port, reference_port
from cprop_ref.conformance.checks import _Comparer, check_resume
from cprop_ref.conformance.dtypes import round_to_bfloat16, storage_floor
from cprop_ref.conformance.edges import sgd, wrapper
from cprop_ref.conformance.layouts import apply_layouts
from cprop_ref.conformance.protocol import copy_keeping_layout
from cprop_ref.conformance.report import Coverage
from cprop_ref.conformance.suite import run_check, run_check_all, run_suite
from cprop_ref.tolerance import EMA_ROUNDINGS, ema_error_bound, subnormal_floor, unit_roundoff

torch = pytest.importorskip("torch")


# -- 4. tolerances without false alarms ------------------------------------------------------


@pytest.mark.parametrize("dtype", [np.float16, np.float32, np.float64])
def test_subnormal_floor_is_a_positive_float64_for_every_dtype(dtype):
    """Half of float64's smallest subnormal rounds to 0 in float64: the floor must not."""
    compute = np.float32 if dtype == np.float16 else dtype
    floor = subnormal_floor(dtype)
    assert 0.0 < floor <= float(np.finfo(compute).smallest_subnormal)
    assert floor >= float(np.finfo(compute).smallest_subnormal) / 2.0


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_one_subnormal_ulp_passes_a_few_normal_ulp_fail(dtype):
    """An EMA of subnormal values: two valid ports may differ by one subnormal ulp (lerp against
    the weighted sum); the bound admits it. A few ulp at a normal number is still an error."""
    tiny = np.finfo(dtype).smallest_subnormal
    m_prev = np.array([3 * tiny, 1.0], dtype)
    g = np.array([5 * tiny, 1.0], dtype)
    u = unit_roundoff(dtype)
    bound = ema_error_bound(
        np.zeros(2), m_prev.astype(float), g.astype(float), 0.9, u, EMA_ROUNDINGS, subnormal_floor(dtype)
    )
    reference = (0.9 * m_prev + 0.1 * g).astype(dtype)
    one_ulp = reference.copy()
    one_ulp[0] = np.nextafter(reference[0], dtype(1.0))
    comparer = _Comparer("unit", sgd(np.dtype(dtype).name), Coverage(), lambda step: "")
    comparer.compare(1, 0, "cprop_m", one_ulp, reference, bound)  # passes
    off = reference.copy()
    off[1] = reference[1] + 4 * np.spacing(reference[1])  # 4 ulp at ~1.0: more than 5 roundings' worth (2.5 ulp)
    with pytest.raises(ConformanceMismatch) as info:
        comparer.compare(1, 0, "cprop_m", off, reference, bound)
    assert info.value.mismatch.element == (1,)


def test_storage_floor_and_bfloat16_rounding():
    assert storage_floor("float64") == float(np.finfo(np.float64).smallest_subnormal)
    assert storage_floor("float16") == 2.0**-25
    x = np.array([1.0 + 2.0**-8, 1.0 + 3 * 2.0**-8, 3.4e38, -0.0, np.inf, np.nan], np.float32)
    r = round_to_bfloat16(x)
    assert r[0] == 1.0 and r[1] == 1.0 + 4 * 2.0**-8  # ties to even
    assert np.isinf(r[2]) and r[3] == 0.0 and np.signbit(r[3]) and np.isinf(r[4]) and np.isnan(r[5])
    assert np.array_equal(torch.from_numpy(x[:5]).to(torch.bfloat16).float().numpy(), r[:5])


# -- 7. valid alternatives pass, named broken ports are caught ---------------------------------


@pytest.mark.parametrize("name", ["fused_ops_sgd", "fused_ops_adam", "lerp_keeping_infinities"])
def test_valid_alternative_ports_pass(name):
    """torch's fused ops (add_(alpha=), addcmul_, addcdiv_) and EMAs in lerp form written to keep
    infinities differ from the reference by rounding only: within the derived bounds."""
    port = load_port(f"tests.conformance_broken_ports:{name}")
    for check in ("open_loop", "injected"):
        _, failure = run_check(check, port, max_examples=15)
        assert failure is None, str(failure)


#: Each named broken port, the check that must catch it and the quantities its report may name.
CAUGHT_BY = {
    "n_instead_of_n_minus_one": ("open_loop", {"scale"}),
    "no_bias_correction": ("open_loop", {"scale"}),
    "wrong_bft_constant": ("open_loop", {"scale"}),
    "unclamped_scale": ("open_loop", {"scale"}),
    "statistics_after_weight_decay": ("open_loop", {"cprop_m"}),
    "step_off_by_one": ("open_loop", {"scale", "step"}),
    "moments_after_scale": ("open_loop", {"param"}),
    "scale_before_momentum": ("open_loop", {"param"}),
    "adam_statistics_after_weight_decay": ("open_loop", {"cprop_m"}),
    "statistics_in_16_bits": ("open_loop", {"cprop_m", "cprop_v"}),
    "lost_non_contiguous_update": ("open_loop", {"param"}),
    "lossy_state_dict": ("resume", {"exception", "cprop_m", "cprop_v", "param", "resume", "scale"}),
    "plain_lerp": ("open_loop", {"cprop_m", "cprop_v"}),
    "no_beta_zero_case": ("open_loop", {"cprop_m", "cprop_v"}),
    "bias_correction_dropped_after_500": ("injected", {"scale"}),
    "dampening_on_first_step": ("open_loop", {"param"}),
    "accepts_invalid_hyperparameters": ("refusals", {"refusal"}),
    "step_records_autograd": ("open_loop", {"exception"}),
    "first_groups_hyperparameters": ("groups", {"cprop_m", "cprop_v", "scale", "param"}),
}


def _caught(name: str, seed: int, examples: int) -> None:
    check, quantities = CAUGHT_BY[name]
    spec = f"tests.conformance_broken_ports:{name}"
    _, failure = run_check(check, load_port(spec), port_spec=spec, max_examples=examples, derandomize=False, seed=seed)
    assert failure is not None, f"{name} passed {check} with seed {seed}"
    assert failure.mismatch.quantity in quantities, failure.mismatch.format()


@pytest.mark.parametrize("name", sorted(CAUGHT_BY))
def test_each_named_broken_port_is_caught_without_the_derandomized_seed(name):
    """Random generation with a seed that is not the derandomized one and only 3 generated
    examples: the edge cases by construction catch every named bug."""
    _caught(name, seed=20261130, examples=3)


@pytest.mark.slow
@pytest.mark.parametrize("name", sorted(CAUGHT_BY))
def test_each_named_broken_port_is_caught_under_five_fresh_seeds(name):
    for _ in range(5):
        _caught(name, seed=secrets.randbits(32), examples=50)


# -- 1. 16-bit, 2. layouts, 3. resume ----------------------------------------------------------


def test_layouts_keep_strides_and_shared_buffers():
    values = [np.arange(6.0).reshape(2, 3), np.arange(24.0).reshape(2, 3, 2, 2), np.arange(3.0), np.array(1.0)]
    laid = apply_layouts(values, ["transposed", "channels_last", "shared", "shared"])
    assert not laid[0].flags.c_contiguous and laid[0].strides == (8, 16)
    assert laid[1].strides == (96, 8, 48, 24)  # (N, C, H, W) stored as (N, H, W, C)
    assert laid[2].base is laid[3].base
    copies = copy_keeping_layout(laid)
    assert all(np.array_equal(a, b) for a, b in zip(values, copies))
    assert [c.strides for c in copies] == [a.strides for a in laid]
    tensors = [torch.from_numpy(c) for c in copies]
    assert tensors[1].is_contiguous(memory_format=torch.channels_last)
    tensors[2].add_(1.0)
    assert copies[2][0] == 1.0 and values[2][0] == 0.0


def test_resume_is_declined_without_save_and_restore():
    class NoSave(ReferenceRun):
        save = None

    coverage, failure = run_check("resume", lambda c, p: NoSave(c, p), max_examples=3)
    assert failure is None and coverage.examples == 0
    assert any("save()" in reason for reason in coverage.unsupported)


def test_resume_compares_with_the_uninterrupted_run_bit_for_bit():
    """A port whose restore loses one ulp of m is caught against its own uninterrupted run."""

    class OneUlp(ReferenceRun):
        def restore(self, data):
            super().restore(data)
            for st in self.optimizer.state:
                if "cprop_m" in st:
                    st["cprop_m"] = np.nextafter(st["cprop_m"], np.inf).astype(st["cprop_m"].dtype)

    grads = [[np.array([1.0, -2.0, 0.5])]] * 3
    params = [np.zeros(3)]
    config = sgd("float64", cprop=dict(beta=0.9, c=3.0))
    check_resume(reference_port, config, params, grads, 1)
    with pytest.raises(ConformanceMismatch) as info:
        check_resume(lambda c, p: OneUlp(c, p), config, params, grads, 1)
    assert info.value.mismatch.quantity == "resume"


def test_the_base_optimizers_own_overflow_is_counted_apart():
    """torch.optim.Adam's first moment in lerp form turns NaN where the reference's weighted sum
    stays finite (float32, betas (0, 0.9), gradients of opposite sign near 1e38): counted as the
    framework's difference, and the report says so."""
    config = wrapper("Adam", cprop=dict(beta=0.0, c=3.0), betas=(0.0, 0.9))
    grads = [[np.array([3e38, -1.0], np.float32)], [np.array([-3e38, 1.0], np.float32)], [np.ones(2, np.float32)]]
    coverage = check_open_loop(
        load_port("cprop_ref.conformance:torch_port"), config, [np.array([0.5, -0.5], np.float32)], grads
    )
    assert coverage.base_differences == 2


# -- 6. reports; bad factories; 18.4 malformed read-outs --------------------------------------


class CrashOnNormal(ReferenceRun):
    """Crashes on the normal CDF (the authors' package on current torch) and, separately, has
    its float64 scales read out 0.1% high."""

    def step(self, grads):
        if self.config.cprop()["cdf"] == "normal":
            raise RuntimeError("ndtr is not defined here")
        super().step(grads)

    def scales(self):
        out = super().scales()
        if self.config.dtype != "float64":
            return out
        return [None if s is None else np.minimum(s * 1.001, 1.0) for s in out]


def test_a_crash_does_not_mask_the_other_differences():
    _, failures = run_check_all(
        "open_loop", lambda c, p: CrashOnNormal(c, p), max_examples=30, dtypes=("float32", "float64"), max_mismatches=3
    )
    kinds = [f.mismatch.signature[0] for f in failures]
    assert "crash in step(grads): RuntimeError" in kinds and "scale" in kinds, kinds
    crash = failures[kinds.index("crash in step(grads): RuntimeError")].mismatch.format()
    assert crash.startswith("CRASH in check 'open_loop'") and "ndtr is not defined here" in crash
    assert "test_conformance_blind_spots.py" in crash  # the port's own frame


def _hangs(config, params):
    time.sleep(30)


@pytest.mark.parametrize(
    "factory, message",
    [
        (lambda c, p: (_ for _ in ()).throw(KeyError("no such optimizer")), "KeyError: 'no such optimizer'"),
        (lambda c, p: 42, "the factory returned int, which has no step() and no params()"),
        (_hangs, "did not return within 0.5 s"),
    ],
)
def test_bad_factories_get_a_report_naming_them(factory, message):
    report = run_suite(factory, checks=("open_loop",), max_examples=2, time_limit=0.5, dtypes=("float32",))
    assert not report.passed
    text = report.format()
    assert message in text and "CRASH in check 'open_loop' after step 0" in text
    assert len(report.failures) == 1  # one crash, whatever the optimizer family


@pytest.mark.parametrize(
    "method, returned, message",
    [
        ("cprop_state", lambda run: run.real_cprop_state()[:-1], "cprop_state() is malformed: 0 entries for 1 tensors"),
        ("params", lambda run: [p.astype(np.float64) for p in run.real_params()], "tensor 0 has dtype float64"),
        (
            "params",
            lambda run: [p.reshape(-1, 1) for p in run.real_params()],
            "params() is malformed: tensor 0 has shape",
        ),
        ("scales", lambda run: 3.0, "expected a list with one entry per tensor, got float"),
        ("cprop_state", lambda run: [(1.0, 2.0)], "expected (m, v, t) or None"),
    ],
)
def test_malformed_read_outs_are_reported_naming_the_read_out(method, returned, message):
    class Malformed(ReferenceRun):
        def real_params(self):
            return ReferenceRun.params(self)

        def real_cprop_state(self):
            return ReferenceRun.cprop_state(self)

    setattr(Malformed, method, lambda self: returned(self))
    config = sgd("float32", cprop=dict(c=3.0))
    with pytest.raises(ConformanceMismatch) as info:
        check_open_loop(lambda c, p: Malformed(c, p), config, [np.ones(3, np.float32)], [[np.ones(3, np.float32)]])
    assert info.value.mismatch.quantity == "read-out"
    assert message in str(info.value) and "MALFORMED READ-OUT" in str(info.value)


def test_injected_headline_names_the_injected_t():
    _, failure = run_check(
        "injected", load_port("tests.conformance_broken_ports:bias_correction_dropped_after_500"), max_examples=1
    )
    assert "from the injected state at t = " in str(failure)


@pytest.mark.parametrize(
    "name",
    [
        "lossy_state_dict",
        "lost_non_contiguous_update",
        "bias_correction_dropped_after_500",
        "accepts_invalid_hyperparameters",
        "first_groups_hyperparameters",
    ],
)
def test_the_snippets_of_the_new_checks_reproduce_the_mismatch(name):
    """The resume check's, a layout's and an injected state's reports carry a snippet that
    raises the same mismatch on its own."""
    check, _ = CAUGHT_BY[name]
    spec = f"tests.conformance_broken_ports:{name}"
    _, failure = run_check(check, load_port(spec), port_spec=spec, max_examples=1)
    mismatch = failure.mismatch
    with pytest.raises(ConformanceMismatch) as again:
        exec(mismatch.snippet, {})  # noqa: S102 - the harness's own output
    assert (again.value.mismatch.check, again.value.mismatch.quantity) == (mismatch.check, mismatch.quantity)


def test_a_port_that_declines_nearly_everything_does_not_pass():
    """The minimum-coverage rule: a port that runs under 5% of the open loop's cases (and none of
    several checks) fails with INSUFFICIENT COVERAGE, naming what it declined, although nothing it
    ran differs; a port that leaves out an optional method (here: every optional one) is not
    failed for that alone."""
    spec = "tests.conformance_broken_ports:declines_nearly_everything"
    report = run_suite(load_port(spec), port_spec=spec, max_examples=5, checks=("open_loop", "closed_loop"))
    assert not report.failures and not report.passed
    text = report.format()
    assert "INSUFFICIENT COVERAGE" in text.splitlines()[0]
    assert "open_loop: the port ran" in text and "at least 5% needed" in text
    assert "closed_loop: the port ran none of its" in text
    assert "only CPropSGD in float64 with the bft CDF" in text

    class Minimal:  # step() and params() only: no scales, statistics, load_state, save/restore, groups
        def __init__(self, run):
            self.run = run

        def step(self, grads):
            self.run.step(grads)

        def params(self):
            return self.run.params()

    def minimal(config, params):
        return Minimal(reference_port(config, params))

    report = run_suite(minimal, max_examples=2, checks=("open_loop", "injected", "resume", "groups"))
    assert report.passed, report.format()
    assert "the port has no load_state()" in report.format()


def test_the_edge_cases_alone_exercise_every_path_switch():
    """Rare edges by construction, not by luck: the edge cases of the checks, without a single
    generated example (so whatever the seed), exercise every path switch that the coverage
    report accounts for (``report.PATH_SWITCHES``) in some check."""
    from cprop_ref.conformance.dtypes import DTYPES
    from cprop_ref.conformance.edges import edge_cases
    from cprop_ref.conformance.report import PATH_SWITCHES
    from cprop_ref.conformance.suite import VERIFY_CHECKS, run_case

    seen: set[str] = set()
    for check in VERIFY_CHECKS:
        coverage = Coverage()
        for case in edge_cases(check, DTYPES):
            run_case(case, reference_port, coverage, None)  # a hook the reference lacks: declined
        seen |= coverage.paths
    assert [p for p in PATH_SWITCHES if p not in seen] == []
