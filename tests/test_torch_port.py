"""The PyTorch port: it passes the whole conformance harness in float32
and float64, on the CPU and (when one is present) on CUDA; all four CDFs; 16-bit
parameters keep float32 statistics and give no NaN on zero gradients; ``state_dict``
round-trips; bad hyperparameters raise ``ValueError`` naming them; without a GPU, device
placement is checked on the ``meta`` device (state on the parameter's device, no tensor on
another device, no host sync)."""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from cprop_ref import CProp as RefCProp  # noqa: E402
from cprop_ref import CPropSGD as RefCPropSGD  # noqa: E402
from cprop_ref.conformance import torch_port  # noqa: E402
from cprop_ref.conformance.suite import CHECKS, run_check  # noqa: E402
from cprop_ref.conformance.torch_adapter import TorchPort  # noqa: E402
from cprop_ref.torch import CProp, CPropAdam, CPropSGD  # noqa: E402

CUDA = torch.cuda.is_available()


@pytest.mark.parametrize("check", CHECKS)
def test_port_passes_the_harness(check):
    """Every check, float32 and float64, all optimizers and CDFs (60 derandomized examples)."""
    coverage, failure = run_check(check, torch_port, port_spec="cprop_ref.conformance:torch_port", max_examples=60)
    assert failure is None, str(failure)
    assert coverage.examples == 60 and coverage.compared["scale"] > 0


@pytest.mark.skipif(not CUDA, reason="no CUDA device")
@pytest.mark.parametrize("check", CHECKS)
def test_port_passes_the_harness_on_cuda(check):
    port = TorchPort(device="cuda")
    _, failure = run_check(check, port, max_examples=30)
    assert failure is None, str(failure)


def _optimizers(params, cdf="bft"):
    return {
        "CPropSGD": lambda: CPropSGD(params, lr=0.1, cprop_cdf=cdf, momentum=0.9),
        "CPropAdam": lambda: CPropAdam(params, lr=0.01, cprop_cdf=cdf),
        "CProp(Adam)": lambda: CProp(torch.optim.Adam(params, lr=0.01), cdf=cdf),
    }


@pytest.mark.parametrize("cdf", ["normal", "bft", "bfo", "logistic"])
def test_all_four_cdfs_run_and_match_the_reference_scale(cdf):
    """The authors' ``normal`` no longer runs on current PyTorch; this one does, and its
    scale after one sign flip matches the reference to a few float64 ulp."""
    g1, g2 = np.array([1.0, -2.0, 0.5]), np.array([-0.5, -1.0, 0.25])
    x = torch.zeros(3, dtype=torch.float64)
    opt = CPropSGD([x], lr=0.1, cprop_cdf=cdf, cprop_beta=0.9)
    ref_x = np.zeros(3)
    ref = RefCPropSGD([ref_x], lr=0.1, cprop_cdf=cdf, cprop_beta=0.9)
    for g in (g1, g2):
        x.grad = torch.from_numpy(g.copy())
        opt.step()
        ref.step([g])
    np.testing.assert_allclose(opt.scales()[0].numpy(), ref.scales()[0], rtol=0, atol=64 * np.finfo(float).eps)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
@pytest.mark.parametrize("name", ["CPropSGD", "CPropAdam", "CProp(SGD)", "CProp(Adam)"])
def test_half_precision_zero_gradients_give_no_nan(dtype, name):
    """In 16 bits eps = 1e-8 underflows and a zero gradient would be 0/0; the statistics live
    in float32, so the scale is exactly 0 there and the parameter does not move. Around
    torch.optim.Adam, which itself gives 0/0 = NaN on a float16 parameter with a zero
    gradient, the wrapper leaves the parameter as it was where ``s = 0``."""
    x = torch.ones(4, dtype=dtype)
    builders = {**_optimizers([x]), "CProp(SGD)": lambda: CProp(torch.optim.SGD([x], lr=0.1, momentum=0.9))}
    opt = builders[name]()
    for step in range(3):
        x.grad = torch.zeros(4, dtype=dtype)
        opt.step()
        assert torch.equal(x, torch.ones(4, dtype=dtype)), step
        (scale,) = opt.scales()
        assert scale.dtype == torch.float32 and torch.equal(scale, torch.zeros(4))
    m, v, t = opt.cprop_statistics()[0]
    assert m.dtype == v.dtype == torch.float32 and t == 3


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_half_precision_follows_the_float32_computation(dtype):
    """A 16-bit parameter is the float32 computation rounded once per step: with gradients
    exactly representable in 16 bits, one step equals the float32 step rounded to 16 bits."""
    g = torch.tensor([0.5, -0.25, 1.0, 0.0], dtype=dtype)
    x16 = torch.tensor([1.0, 2.0, -1.0, 0.5], dtype=dtype)
    x32 = x16.float()
    opt16, opt32 = CPropAdam([x16], lr=0.1), CPropAdam([x32], lr=0.1)
    x16.grad, x32.grad = g, g.float()
    opt16.step()
    opt32.step()
    assert torch.equal(x16, x32.to(dtype))


@pytest.mark.parametrize("name", ["CPropSGD", "CPropAdam", "CProp(Adam)"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16])
def test_state_dict_round_trip_continues_exactly(name, dtype):
    """Save after 3 steps, load into a fresh optimizer, 3 more steps: bit for bit the run that
    never stopped. 16-bit parameters keep their float32 statistics through the round trip."""
    gen = torch.Generator().manual_seed(0)
    grads = [torch.randn(5, generator=gen).to(dtype) for _ in range(6)]
    x_a = torch.linspace(-1, 1, 5).to(dtype)
    opt_a = _optimizers([x_a])[name]()
    for g in grads:
        x_a.grad = g.clone()
        opt_a.step()
    x_b = torch.linspace(-1, 1, 5).to(dtype)
    opt_b = _optimizers([x_b])[name]()
    for g in grads[:3]:
        x_b.grad = g.clone()
        opt_b.step()
    saved = opt_b.state_dict()
    x_c = x_b.detach().clone()
    opt_c = _optimizers([x_c])[name]()
    opt_c.load_state_dict(saved)
    m, _, t = opt_c.cprop_statistics()[0]
    assert m.dtype == torch.float32 and t == 3
    for g in grads[3:]:
        x_c.grad = g.clone()
        opt_c.step()
    assert torch.equal(x_a, x_c)


def test_gradient_none_skips_the_tensor():
    a, b = torch.ones(2), torch.ones(3)
    opt = CPropSGD([a, b], lr=0.1)
    a.grad = torch.tensor([1.0, -1.0])
    opt.step()
    assert opt.cprop_statistics()[1] is None and torch.equal(b, torch.ones(3))
    assert opt.scales()[1] is None


def test_wrapper_shares_param_groups_with_the_base_optimizer():
    """A learning-rate scheduler on the wrapper changes the base optimizer's rate."""
    x = torch.ones(2)
    opt = CProp(torch.optim.SGD([x], lr=1.0))
    scheduler = torch.optim.lr_scheduler.StepLR(opt, step_size=1, gamma=0.5)
    x.grad = torch.ones(2)
    opt.step()
    scheduler.step()
    assert opt.base_optimizer.param_groups[0]["lr"] == 0.5


def test_wrapper_equals_reference_wrapper():
    x = torch.zeros(3, dtype=torch.float64)
    opt = CProp(torch.optim.SGD([x], lr=0.1, momentum=0.9), beta=0.9, c=2.0, cdf="normal")
    ref_x = np.zeros(3)
    from cprop_ref import SGD as RefSGD

    ref = RefCProp(RefSGD([ref_x], lr=0.1, momentum=0.9), beta=0.9, c=2.0, cdf="normal")
    rng = np.random.default_rng(3)
    for _ in range(5):
        g = rng.standard_normal(3) + 0.2
        x.grad = torch.from_numpy(g.copy())
        opt.step()
        ref.step([g])
    np.testing.assert_allclose(x.numpy(), ref_x, rtol=1e-13, atol=1e-15)


def test_closure_is_evaluated_once():
    x = torch.ones(2, requires_grad=True)
    calls = []

    def closure():
        calls.append(1)
        opt.zero_grad()
        loss = (x * x).sum()
        loss.backward()
        return loss

    for opt in (CPropSGD([x], lr=0.1), CPropAdam([x], lr=0.1), CProp(torch.optim.SGD([x], lr=0.1))):
        calls.clear()
        loss = opt.step(closure)
        assert len(calls) == 1 and float(loss.detach()) > 0


@pytest.mark.parametrize(
    "build, name",
    [
        (lambda p: CPropSGD(p, lr=-1.0), "lr"),
        (lambda p: CPropSGD(p, lr=0.1, cprop_beta=1.0), "cprop_beta"),
        (lambda p: CPropAdam(p, cprop_cdf="probit"), "cprop_cdf"),
        (lambda p: CPropAdam(p, betas=(0.9, 1.5)), "betas"),
        (lambda p: CPropSGD(p, lr=0.1, nesterov=True), "nesterov"),
        (lambda p: CProp(torch.optim.SGD(p, lr=0.1), c=-1.0), "c"),
    ],
)
def test_bad_hyperparameters_raise_value_error_naming_them(build, name):
    with pytest.raises(ValueError, match=name):
        build([torch.ones(2)])


@pytest.mark.parametrize(
    "build, group, name",
    [
        (lambda p: CPropAdam(p), {"lr": -1.0}, "lr"),
        (lambda p: CPropAdam(p), {"cprop_cdf": "probit"}, "cprop_cdf"),
        (lambda p: CPropSGD(p, lr=0.1), {"momentum": 0.0, "nesterov": True}, "nesterov"),
        (lambda p: CPropSGD(p, lr=0.1), {"cprop_beta": 1.0}, "cprop_beta"),
    ],
)
def test_add_param_group_refuses_bad_hyperparameters_and_adds_nothing(build, group, name):
    """A group added after construction is checked as the constructor checks its defaults
    (not only at the next step), and a refused group is not added."""
    opt = build([torch.ones(2)])
    with pytest.raises(ValueError, match=f"param group 1.*{name}|{name}.*param group 1"):
        opt.add_param_group({"params": [torch.ones(3)], **group})
    assert len(opt.param_groups) == 1


def test_a_hyperparameter_broken_between_steps_changes_nothing():
    x = torch.ones(2)
    opt = CPropSGD([x], lr=0.1)
    opt.param_groups[0]["cprop_c"] = -1.0
    x.grad = torch.ones(2)
    with pytest.raises(ValueError, match="cprop_c"):
        opt.step()
    assert torch.equal(x, torch.ones(2)) and not opt.state


def test_without_torch_the_import_error_names_the_extra():
    code = "import sys; sys.modules['torch'] = None\ntry:\n import cprop_ref.torch\nexcept ImportError as e:\n print(e)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert "cprop-ref[torch]" in out


def test_cprop_adam_shares_adams_moments_when_the_betas_allow():
    """With ``betas[1] == cprop_beta`` (the defaults) and no weight decay, CProp's ``v`` is
    Adam's second moment: not stored twice; ``betas[0] == cprop_beta`` shares ``m`` too."""
    x, y = torch.ones(3), torch.ones(3)
    default = CPropAdam([x], lr=0.1)
    both = CPropAdam([y], lr=0.1, betas=(0.9, 0.9), cprop_beta=0.9)
    x.grad, y.grad = torch.ones(3), torch.ones(3)
    default.step()
    both.step()
    assert "cprop_v" not in default.state[x] and "cprop_m" in default.state[x]
    assert "cprop_v" not in both.state[y] and "cprop_m" not in both.state[y]
    decayed = CPropAdam([z := torch.ones(3)], lr=0.1, weight_decay=0.1)
    z.grad = torch.ones(3)
    decayed.step()
    assert {"cprop_m", "cprop_v"} <= set(decayed.state[z])


def test_an_overflowed_update_scaled_by_zero_is_no_update():
    """A momentum buffer pushed past float32's range is inf; with c = 0 the scale is 0 and the
    update is none at all (not 0 * inf = NaN), as in the reference."""
    big = np.full(2, 3e38, np.float32)
    x, ref_x = torch.ones(2), np.ones(2, np.float32)
    opt = CPropSGD([x], lr=1.0, momentum=0.9, cprop_c=0.0)
    ref = RefCPropSGD([ref_x], lr=1.0, momentum=0.9, cprop_c=0.0, backend="numpy")
    for _ in range(3):
        x.grad = torch.from_numpy(big.copy())
        opt.step()
        ref.step([big])
    assert torch.isinf(opt.state[x]["momentum_buffer"]).all()
    assert torch.equal(x, torch.ones(2)) and np.array_equal(ref_x, np.ones(2, np.float32))


# Device placement without a GPU: PyTorch's "meta" device has tensors with shapes, dtypes and a
# device but no data. An op that mixes a meta tensor with a non-scalar tensor on another device
# raises ("Tensor on device cpu is not on the expected device meta"), and so does a host sync
# (``.item()``, ``float(t)``, ``bool(t)``), exactly the two mistakes that break a port on CUDA
# while it passes on the CPU. (A 0-d CPU tensor is accepted, as CUDA accepts it.)
_DEVICE_MAKERS = {
    "CPropSGD nesterov wd": lambda ps, cdf: CPropSGD(
        ps, lr=0.1, momentum=0.9, nesterov=True, weight_decay=0.01, cprop_cdf=cdf
    ),
    "CPropSGD plain": lambda ps, cdf: CPropSGD(ps, lr=0.1, cprop_cdf=cdf),
    "CPropAdam amsgrad wd": lambda ps, cdf: CPropAdam(ps, lr=0.1, amsgrad=True, weight_decay=0.01, cprop_cdf=cdf),
    "CPropAdam both moments shared": lambda ps, cdf: CPropAdam(ps, lr=0.1, betas=(0.999, 0.999), cprop_cdf=cdf),
    "CProp(Adam)": lambda ps, cdf: CProp(torch.optim.Adam(ps, lr=0.1), cdf=cdf),
    "CProp(SGD momentum)": lambda ps, cdf: CProp(torch.optim.SGD(ps, lr=0.1, momentum=0.9), cdf=cdf),
}


def _meta_parameters(dtype):
    return [
        torch.zeros(3, 4, device="meta", dtype=dtype, requires_grad=True),
        torch.zeros((), device="meta", dtype=dtype, requires_grad=True),
        torch.zeros(0, device="meta", dtype=dtype, requires_grad=True),
    ]


@pytest.mark.parametrize("name", list(_DEVICE_MAKERS))
@pytest.mark.parametrize("cdf", ["normal", "bft", "bfo", "logistic"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.float16, torch.bfloat16])
def test_steps_create_state_only_on_the_parameters_device(name, cdf, dtype):
    params = _meta_parameters(dtype)
    opt = _DEVICE_MAKERS[name](params, cdf)
    for _ in range(3):
        for p in params:
            p.grad = torch.empty_like(p)
        opt.step()
    for k, p in enumerate(params):
        assert p.device.type == "meta"
        tensors = {key: v for key, v in opt.state[p].items() if torch.is_tensor(v) and v.dim() > 0}
        assert tensors or p.dim() == 0, sorted(opt.state[p])  # never vacuous
        for key, value in tensors.items():
            assert value.device == p.device, f"parameter {k}: state {key!r} is on {value.device}"
            assert value.shape == p.shape, f"parameter {k}: state {key!r} has shape {tuple(value.shape)}"


@pytest.mark.parametrize("name", list(_DEVICE_MAKERS))
def test_a_state_dict_saved_on_the_cpu_loads_onto_the_parameters_device(name):
    cpu_params = [torch.linspace(-1, 1, 12).reshape(3, 4), torch.tensor(0.5), torch.zeros(0)]
    cpu_opt = _DEVICE_MAKERS[name](cpu_params, "bft")
    for _ in range(2):
        for p in cpu_params:
            p.grad = torch.ones_like(p)
        cpu_opt.step()
    params = _meta_parameters(torch.float32)
    opt = _DEVICE_MAKERS[name](params, "bft")
    opt.load_state_dict(cpu_opt.state_dict())
    for p in params:
        for key, value in opt.state[p].items():
            if torch.is_tensor(value) and value.dim() > 0:
                assert value.device == p.device, f"state {key!r} loaded onto {value.device}"
    for p in params:
        p.grad = torch.empty_like(p)
    opt.step()


@pytest.mark.parametrize(
    "bad, message",
    [
        (3, "expected a dict, got int"),
        ({"state": {}, "param_groups": []}, "has no 'base', 'cprop': not a state dict of CProp"),
    ],
)
def test_the_wrapper_refuses_a_state_dict_that_is_not_its_own_and_changes_nothing(bad, message):
    """``CProp.load_state_dict`` of something that is not a wrapper's state dict (another
    optimizer's, say) raises ``ValueError`` naming what is missing, and the optimizer is as it was."""
    p = torch.zeros(3, requires_grad=True)
    opt = CProp(torch.optim.SGD([p], lr=0.1, momentum=0.9), beta=0.5)
    p.grad = torch.tensor([1.0, -2.0, 0.5])
    opt.step()
    before = opt.state_dict()
    with pytest.raises(ValueError, match=message):
        opt.load_state_dict(bad)
    after = opt.state_dict()
    assert after["cprop"] == before["cprop"] and after["base"]["param_groups"] == before["base"]["param_groups"]
    for key in before["state"]:
        for name, value in before["state"][key].items():
            assert torch.equal(torch.as_tensor(after["state"][key][name]), torch.as_tensor(value))
