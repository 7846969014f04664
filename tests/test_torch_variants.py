"""The torch port's ``foreach`` and ``fused`` variants.

- ``foreach=True`` performs the eager port's operations on lists: it is the eager port bit
  for bit (every dtype, optimizer, CDF; mixed sizes, a skipped gradient, a changed learning
  rate), and passes the conformance harness and the golden fixtures.
- ``fused=True`` compiles each step into one kernel (``torch.compile``); it is the eager
  port within the golden fixtures' tolerances, changing the learning rate, the step count
  or adding a parameter group compiles nothing new (dynamo's counters), and the whole
  harness runs under ``-m slow`` (compiling every kernel the harness draws takes minutes).
  The default tests compile one kernel (CPropAdam, ``bft``, float32), once.
- A ``state_dict`` moves between the variants; bad options fail at construction with
  ``ValueError`` naming the parameter; without a C++ compiler ``fused=True`` says so and the
  default runs.
"""

from __future__ import annotations

import copy
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from cprop_ref.conformance import checks as harness_checks  # noqa: E402
from cprop_ref.conformance import torch_port, torch_port_foreach, torch_port_fused  # noqa: E402
from cprop_ref.conformance.golden import check_case, check_fixtures, read_fixtures  # noqa: E402
from cprop_ref.conformance.suite import CHECKS, run_check  # noqa: E402
from cprop_ref.torch import CProp, CPropAdam, CPropSGD  # noqa: E402
from cprop_ref.torch.variants import FOREACH, FUSED, SINGLE, implementation  # noqa: E402

# torch.compile's own machinery warns about a torch API it uses itself (nothing for us to change).
pytestmark = pytest.mark.filterwarnings("ignore:`torch.jit.script_method` is deprecated:DeprecationWarning")

FIXTURES = Path(__file__).parent / "golden" / "conformance"
CUDA = torch.cuda.is_available()
CUDA_REASON = "no CUDA device (the CUDA checks run where a GPU is available: docs/torch.md)"

MAKERS = {
    "CPropSGD nesterov wd": lambda ps, **o: CPropSGD(ps, lr=0.1, momentum=0.9, nesterov=True, weight_decay=0.01, **o),
    "CPropSGD normal beta0": lambda ps, **o: CPropSGD(ps, lr=0.1, cprop_cdf="normal", cprop_beta=0.0, **o),
    "CPropAdam": lambda ps, **o: CPropAdam(ps, lr=0.01, **o),
    "CPropAdam amsgrad wd logistic": lambda ps, **o: CPropAdam(
        ps, lr=0.01, amsgrad=True, weight_decay=0.1, cprop_cdf="logistic", **o
    ),
    "CPropAdam shared bfo": lambda ps, **o: CPropAdam(
        ps, lr=0.01, betas=(0.9, 0.9), cprop_beta=0.9, cprop_cdf="bfo", **o
    ),
    "CProp(Adam)": lambda ps, **o: CProp(torch.optim.Adam(ps, lr=0.01), **o),
    "CProp(SGD momentum) normal": lambda ps, **o: CProp(torch.optim.SGD(ps, lr=0.1, momentum=0.9), cdf="normal", **o),
}


def _params(dtype, shapes=((4, 3), (), (0,), (5,))):
    gen = torch.Generator().manual_seed(1)
    params = [torch.randn(shape, generator=gen, dtype=torch.float64).to(dtype) for shape in shapes]
    if dtype != torch.float64:  # a second dtype in the same group: grouped by dtype
        params.append(torch.randn(6, generator=gen, dtype=torch.float64))
    return params


def _steps(params, opt, steps, seed=5):
    gen = torch.Generator().manual_seed(seed)
    for i in range(steps):
        for p in params:
            p.grad = (torch.randn(p.shape, generator=gen, dtype=torch.float64) + 0.3).to(p.dtype)
        if i == 2:
            params[1].grad = None  # skipped: its step count falls behind the others'
        if i == 3:
            for group in opt.param_groups:
                group["lr"] *= 0.5
        opt.step()


def _states(opt):
    inner = opt.state
    return [inner[p] for group in opt.param_groups for p in group["params"] if p in inner]


def _assert_same_state(a, b):
    for sa, sb in zip(_states(a), _states(b), strict=True):
        assert set(sa) == set(sb)
        for key in sa:
            if torch.is_tensor(sa[key]):
                assert sa[key].dtype == sb[key].dtype and torch.equal(sa[key], sb[key]), key
            else:
                assert sa[key] == sb[key], key


# -- foreach ------------------------------------------------------------------------------------


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32, torch.bfloat16])
@pytest.mark.parametrize("name", list(MAKERS))
def test_foreach_is_the_eager_port_bit_for_bit(name, dtype):
    eager_params, foreach_params = _params(dtype), _params(dtype)
    eager, multi = MAKERS[name](eager_params), MAKERS[name](foreach_params, foreach=True)
    _steps(eager_params, eager, 6)
    _steps(foreach_params, multi, 6)
    for a, b in zip(eager_params, foreach_params):
        assert torch.equal(a, b)
    _assert_same_state(eager, multi)


@pytest.mark.parametrize("name", list(MAKERS))
def test_foreach_is_the_eager_port_bit_for_bit_on_large_tensors_and_at_the_edges(name):
    """Vectorised kernels (thousands of elements) and the fast path's fallback: a tensor whose
    moments overflow (gradients near float32's largest value: ``m_hat`` and ``g^2`` overflow)
    and one with an infinite and a NaN gradient take the guarded operations, the others not."""
    shapes = ((300, 67), (4099,), (257,), (3,))
    eager_params, foreach_params = _params(torch.float32, shapes), _params(torch.float32, shapes)
    eager, multi = MAKERS[name](eager_params), MAKERS[name](foreach_params, foreach=True)
    gen = torch.Generator().manual_seed(7)
    for i in range(5):
        grads = [torch.randn(p.shape, generator=gen, dtype=torch.float64) + 0.3 for p in eager_params]
        grads[1][:40] *= 1e38  # overflows m_hat's square, and g^2
        grads[1][40:50] = 3.4e38  # near the largest float32: m_hat itself overflows after a bias correction
        if i == 3:
            grads[2][0], grads[2][1] = float("inf"), float("nan")
        for params in (eager_params, foreach_params):
            for p, g in zip(params, grads):
                p.grad = g.to(p.dtype)
        eager.step()
        multi.step()
    for a, b in zip(eager_params, foreach_params):
        assert torch.equal(a.nan_to_num(), b.nan_to_num()) and torch.equal(a.isnan(), b.isnan())
    _assert_same_state_nan(eager, multi)


def _assert_same_state_nan(a, b):
    for sa, sb in zip(_states(a), _states(b), strict=True):
        for key in sa:
            if torch.is_tensor(sa[key]):
                assert torch.equal(sa[key].isnan(), sb[key].isnan()), key
                assert torch.equal(sa[key].nan_to_num(), sb[key].nan_to_num()), key
            else:
                assert sa[key] == sb[key], key


@pytest.mark.parametrize("check", CHECKS)
def test_foreach_passes_the_harness(check):
    """Every check, float32 and float64, all optimizers and CDFs (40 derandomized examples)."""
    coverage, failure = run_check(
        check, torch_port_foreach, port_spec="cprop_ref.conformance:torch_port_foreach", max_examples=40
    )
    assert failure is None, str(failure)
    assert coverage.examples == 40 and coverage.compared["scale"] > 0


def test_foreach_passes_the_golden_fixtures():
    coverage = check_fixtures(FIXTURES, torch_port_foreach)
    assert coverage.examples == len(read_fixtures(FIXTURES))  # every fixture (float16 ones included)


def test_the_default_is_torch_optims_choice():
    """``None`` means per-tensor on the CPU (torch.optim's foreach kernels are for CUDA and the
    like), never fused; an explicit choice is kept."""
    cpu = [torch.zeros(2)]
    assert implementation(cpu, None, None) == SINGLE
    assert implementation(cpu, True, None) == FOREACH
    assert implementation(cpu, None, True) == FUSED
    assert implementation(cpu, False, False) == SINGLE


# -- fused --------------------------------------------------------------------------------------


@pytest.fixture
def compile_time_allowed(monkeypatch):
    """The harness reports a port call that runs past 60 s as hanging; a first call of the fused
    port compiles its kernel, which on a loaded 2-core machine can take longer (not a hang)."""
    monkeypatch.setattr(harness_checks, "CALL_TIME_LIMIT", [None])


def _fused_adam_case():
    """The golden case whose kernel the default tests compile (CPropAdam, bft, float32)."""
    return next(c for c in read_fixtures(FIXTURES) if c.name == "adam_shared_moments_float32")


def test_fused_passes_a_golden_fixture_and_stays_within_its_tolerances_of_the_eager_port(compile_time_allowed):
    """The fused step against the stored reference values, and against the eager port with
    the same per-element tolerances (the fixtures' policy: a few ulp per operation)."""
    case = _fused_adam_case()
    check_case(case, torch_port_fused)
    params, grads = case.inputs()
    eager, compiled = torch_port(case.config, params), torch_port_fused(case.config, params)
    for i, gs in enumerate(grads):
        eager.step(gs)
        compiled.step(gs)
        for k, (a, b) in enumerate(zip(eager.params(), compiled.params())):
            assert np.all(np.abs(a - b) <= case.arrays[f"param{k}_tol"][i]), (i, k)


def test_changing_lr_the_step_or_adding_a_group_compiles_nothing():
    """Hyperparameters and the step count reach the kernel as a tensor: a scheduler, more
    steps and a new group (other sizes, other lr) run the kernel already compiled."""
    from torch._dynamo.utils import counters

    x = torch.linspace(-1.0, 1.0, 64)
    opt = CPropAdam([x], lr=0.01, fused=True)
    scheduler = torch.optim.lr_scheduler.StepLR(opt, step_size=1, gamma=0.5)
    x.grad = torch.ones(64)
    opt.step()  # compiles (or loads) the kernel
    graphs = counters["stats"]["unique_graphs"]
    for _ in range(3):
        x.grad = torch.cos(x)
        opt.step()
        scheduler.step()
    y = torch.ones(3, 7)
    opt.add_param_group({"params": [y], "lr": 0.3, "eps": 1e-6})
    for _ in range(2):
        x.grad, y.grad = torch.sin(x), torch.ones(3, 7)
        opt.step()
    assert counters["stats"]["unique_graphs"] == graphs
    assert opt.state[x]["step"] == 6 and opt.state[y]["step"] == 2


@pytest.mark.parametrize("first, then", [("eager", "fused"), ("fused", "foreach"), ("foreach", "eager")])
def test_a_state_dict_moves_between_the_variants(first, then):
    """Saved by one variant after 3 steps, loaded by another: the same state (keys, dtypes,
    values), and 3 more steps land where the first variant's own 3 more steps land: bit for
    bit between eager and foreach; with fused on either side within the fixtures' bound of
    a few ulp per element per step (the compiled kernel rounds as eager does except where
    inductor's vectorised exp differs by an ulp)."""
    options = {"eager": {}, "foreach": {"foreach": True}, "fused": {"fused": True}}
    x_a, x_b = torch.linspace(-1.0, 1.0, 32), torch.linspace(-1.0, 1.0, 32)
    a = CPropAdam([x_a], lr=0.01, **options[first])
    gen = torch.Generator().manual_seed(3)
    grads = [torch.randn(32, generator=gen) + 0.2 for _ in range(6)]
    for g in grads[:3]:
        x_a.grad = g.clone()
        a.step()
    x_b.copy_(x_a)
    b = CPropAdam([x_b], lr=0.01, **options[then])
    b.load_state_dict(copy.deepcopy(a.state_dict()))  # as from a file: torch's load shares live tensors
    _assert_same_state(a, b)
    assert b.param_groups[0]["fused"] == options[then].get("fused")  # how to compute is not state
    for g in grads[3:]:
        x_a.grad, x_b.grad = g.clone(), g.clone()
        a.step()
        b.step()
    if "fused" in (first, then):
        # 3 steps, each within a few float32 ulp of the update (|update| <= lr here).
        torch.testing.assert_close(x_b, x_a, rtol=0, atol=3 * 8 * torch.finfo(torch.float32).eps * 0.01)
    else:
        assert torch.equal(x_a, x_b)


@pytest.mark.slow
@pytest.mark.parametrize("check", CHECKS)
def test_fused_passes_the_harness(check, compile_time_allowed):
    """Every check, float32 and float64 (compiles every kernel the harness draws: minutes)."""
    coverage, failure = run_check(
        check, torch_port_fused, port_spec="cprop_ref.conformance:torch_port_fused", max_examples=40
    )
    assert failure is None, str(failure)


@pytest.mark.slow
def test_fused_passes_every_golden_fixture_within_its_tolerances_of_the_eager_port(compile_time_allowed):
    for case in read_fixtures(FIXTURES):
        check_case(case, torch_port_fused)
        params, grads = case.inputs()
        eager, compiled = torch_port(case.config, params), torch_port_fused(case.config, params)
        for i, gs in enumerate(grads):
            eager.step(gs)
            compiled.step(gs)
            for k, (a, b) in enumerate(zip(eager.params(), compiled.params())):
                assert np.all(np.abs(a - b) <= case.arrays[f"param{k}_tol"][i]), (case.name, i, k)


@pytest.mark.slow
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32, torch.bfloat16])
@pytest.mark.parametrize("name", list(MAKERS))
def test_fused_is_the_eager_port_within_a_few_ulp(name, dtype):
    eager_params, fused_params = _params(dtype), _params(dtype)
    eager, compiled = MAKERS[name](eager_params), MAKERS[name](fused_params, fused=True)
    _steps(eager_params, eager, 6)
    _steps(fused_params, compiled, 6)
    for a, b in zip(eager_params, fused_params):
        eps = torch.finfo(a.dtype).eps
        torch.testing.assert_close(b.double(), a.double(), rtol=16 * eps, atol=16 * eps)


@pytest.mark.skipif(not CUDA, reason=CUDA_REASON)
@pytest.mark.parametrize("port_name", ["torch_port_foreach_cuda", "torch_port_fused_cuda"])
@pytest.mark.parametrize("check", CHECKS)
def test_variants_pass_the_harness_on_cuda(port_name, check):
    from cprop_ref.conformance import torch_variants

    _, failure = run_check(check, getattr(torch_variants, port_name), max_examples=30)
    assert failure is None, str(failure)


# -- bad input ----------------------------------------------------------------------------------

_BUILDERS = {
    "CPropSGD": lambda ps, **o: CPropSGD(ps, lr=0.1, **o),
    "CPropAdam": lambda ps, **o: CPropAdam(ps, **o),
    "CProp": lambda ps, **o: CProp(torch.optim.SGD(ps, lr=0.1), **o),
}


@pytest.mark.parametrize("name", list(_BUILDERS))
def test_foreach_and_fused_together_is_an_error(name):
    with pytest.raises(ValueError, match="foreach=True and fused=True"):
        _BUILDERS[name]([torch.ones(2)], foreach=True, fused=True)


@pytest.mark.parametrize("name", list(_BUILDERS))
@pytest.mark.parametrize(
    "params, message",
    [
        (
            lambda: [torch.ones(2), torch.ones(2, dtype=torch.int32)],
            r"parameter 1: fused=True takes .* got int32 on cpu",
        ),
        (lambda: [torch.ones(2, device="meta")], r"parameter 0: fused=True takes .* got float32 on meta"),
        (lambda: [torch.ones(2), torch.ones(2, device="meta")], r"parameter 1: is on meta, parameter 0 on cpu"),
    ],
    ids=["int32", "meta device", "two devices"],
)
def test_fused_with_a_parameter_it_cannot_take_is_an_error_naming_it(name, params, message):
    with pytest.raises(ValueError, match=message):
        _BUILDERS[name](params(), fused=True)


@pytest.mark.parametrize("name", list(_BUILDERS))
def test_a_bad_option_value_is_an_error(name):
    with pytest.raises(ValueError, match="invalid foreach='yes'"):
        _BUILDERS[name]([torch.ones(2)], foreach="yes")


@pytest.mark.parametrize("name", list(_BUILDERS))
def test_a_group_that_fused_cannot_take_is_not_added(name):
    opt = _BUILDERS[name]([torch.ones(2)], fused=True)
    groups = len(opt.param_groups)
    with pytest.raises(ValueError, match="param group 1, parameter 0"):
        opt.add_param_group({"params": [torch.ones(2, dtype=torch.int64)]})
    assert len(opt.param_groups) == groups


def test_without_a_cxx_compiler_fused_says_so_and_the_default_runs():
    """A C++ compiler that does not exist (``CXX``): ``fused=True`` on the CPU fails at
    construction naming the fix; the default and ``foreach=True`` need no compiler."""
    code = (
        "import torch\n"
        "from cprop_ref.torch import CPropAdam\n"
        "x = torch.ones(3)\n"
        "for options in ({}, {'foreach': True}):\n"
        "    opt = CPropAdam([x], **options); x.grad = torch.ones(3); opt.step()\n"
        "try:\n"
        "    CPropAdam([x], fused=True)\n"
        "except RuntimeError as err:\n"
        "    print(err)\n"
    )
    env = {**os.environ, "CXX": "/nonexistent/c++"}
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True).stdout
    assert "fused=True" in out and "C++ compiler" in out and "fused=False" in out
