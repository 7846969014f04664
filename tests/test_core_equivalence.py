"""``CProp(SGD(...))`` equals ``CPropSGD`` and ``CProp(Adam(...))`` equals ``CPropAdam`` (float64).

The two compute the same real number, ``p - lr * d * s`` (or ``p + delta * s``), and round
differently: the wrapper rounds ``after = p + update``, then ``(after - p) * s`` and the sum;
the specialised optimizer rounds ``update * s`` and the sum. Given the same parameter, both
results are within ``u (|p| + |update|)`` (the rounding of ``after``, scaled by ``s <= 1``)
plus three roundings of at most ``u (|update| + |p_new|)``: per step

    |p_wrapper - p_specialised| <= 4 u (|p| + |update| + |p_new|),   u = 2^-53.

Everything else (the scale, the momentum buffer, Adam's moments) is computed by the same pure
functions from the same inputs and must be bit-identical while the parameters are. Two tests:
(1) parameters re-synchronised before every step, any hyperparameters (weight decay feeds the
parameter back into the update): the per-step bound above, states bit-identical;
(2) no weight decay, no re-synchronisation: the update does not depend on the parameter, so the
per-step bounds add up over the run.
"""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from cprop_ref import SGD, Adam, CProp, CPropAdam, CPropSGD
from tests.optimizer_catalogue import default_kernel_variant, swept_cdf
from tests.strategies_core import cdfs, gradient_streams

U = 2.0**-53


@st.composite
def sgd_configs(draw, weight_decay=st.sampled_from([0.0, 1e-3, 0.1])):
    momentum = draw(st.sampled_from([0.0, 0.5, 0.9]), label="momentum")
    nesterov = draw(st.booleans(), label="nesterov") if momentum > 0 else False
    dampening = 0.0 if nesterov else draw(st.sampled_from([0.0, 0.3]), label="dampening")
    return dict(
        lr=draw(st.sampled_from([1e-3, 0.1, 1.0]), label="lr"),
        momentum=momentum,
        dampening=dampening,
        weight_decay=draw(weight_decay, label="weight_decay"),
        nesterov=nesterov,
    )


@st.composite
def adam_configs(draw, weight_decay=st.sampled_from([0.0, 1e-3, 0.1])):
    return dict(
        lr=draw(st.sampled_from([1e-3, 0.1]), label="lr"),
        betas=draw(st.sampled_from([(0.9, 0.999), (0.999, 0.999), (0.5, 0.9), (0.0, 0.99)]), label="betas"),
        eps=draw(st.sampled_from([1e-8, 1e-3]), label="eps"),
        weight_decay=draw(weight_decay, label="weight_decay"),
        amsgrad=draw(st.booleans(), label="amsgrad"),
    )


@st.composite
def cprop_configs(draw):
    return dict(
        beta=draw(st.sampled_from([0.0, 0.9, 0.999]), label="cprop_beta"),
        c=draw(st.sampled_from([0.5, 1.0, 3.0]), label="cprop_c"),
        eps=1e-8,
        cdf=draw(cdfs, label="cprop_cdf"),
    )


def make_pair(kind: str, base: dict, cp: dict, x0: np.ndarray, backend: str):
    cprop_kwargs = {f"cprop_{k}": v for k, v in cp.items()}
    special_cls, base_cls = (CPropSGD, SGD) if kind == "sgd" else (CPropAdam, Adam)
    special = special_cls([x0.copy()], **base, **cprop_kwargs, backend=backend)
    wrapper = CProp(base_cls([x0.copy()], **base, backend=backend), **cp, backend=backend)
    return special, wrapper


def assert_states_identical(kind: str, special, wrapper) -> None:
    st_special = special.state[0]
    st_base = wrapper.base_optimizer.state[0]
    names = ["momentum_buffer"] if kind == "sgd" else ["exp_avg", "exp_avg_sq", "max_exp_avg_sq", "step"]
    for name in names:
        a, b = st_special.get(name), st_base.get(name)
        assert (a is None) == (b is None), name
        if a is not None:
            np.testing.assert_array_equal(a, b, err_msg=name)
    np.testing.assert_array_equal(special.scales()[0], wrapper.scales()[0])


def check_run(kind, base, cp, grads, resync: bool, backend: str) -> None:
    if backend == "numba":  # the CDF x kernel structure cross-product under thorough only
        cp = {**cp, "cdf": swept_cdf(cp["cdf"], default_kernel_variant({**base, "cprop_beta": cp["beta"]}))}
    x0 = np.linspace(-2.0, 2.0, grads.shape[1])
    special, wrapper = make_pair(kind, base, cp, x0, backend)
    (p_special,) = special.params
    (p_wrapper,) = wrapper.params
    bound = np.zeros_like(x0)
    for g in grads:
        if resync:
            p_wrapper[...] = p_special
            bound[...] = 0.0
        before = p_special.copy()
        special.step([g.copy()])
        wrapper.step([g.copy()])
        update = p_special - before
        bound += 4 * U * (np.abs(before) + np.abs(update) + np.abs(p_special))
        assert np.all(np.abs(p_wrapper - p_special) <= bound), np.max(np.abs(p_wrapper - p_special) - bound)
        assert_states_identical(kind, special, wrapper)


@pytest.mark.parametrize("backend", ["numpy", "numba"])
@given(base=sgd_configs(), cp=cprop_configs(), grads=gradient_streams(scale_exp=(-2, 2)))
def test_wrapped_sgd_equals_cprop_sgd_step_by_step(base, cp, grads, backend):
    check_run("sgd", base, cp, grads, resync=True, backend=backend)


@pytest.mark.parametrize("backend", ["numpy", "numba"])
@given(base=adam_configs(), cp=cprop_configs(), grads=gradient_streams(scale_exp=(-2, 2)))
def test_wrapped_adam_equals_cprop_adam_step_by_step(base, cp, grads, backend):
    check_run("adam", base, cp, grads, resync=True, backend=backend)


@pytest.mark.parametrize("backend", ["numpy", "numba"])
@given(base=sgd_configs(weight_decay=st.just(0.0)), cp=cprop_configs(), grads=gradient_streams(scale_exp=(-2, 2)))
def test_wrapped_sgd_equals_cprop_sgd_over_a_run(base, cp, grads, backend):
    check_run("sgd", base, cp, grads, resync=False, backend=backend)


@pytest.mark.parametrize("backend", ["numpy", "numba"])
@given(base=adam_configs(weight_decay=st.just(0.0)), cp=cprop_configs(), grads=gradient_streams(scale_exp=(-2, 2)))
def test_wrapped_adam_equals_cprop_adam_over_a_run(base, cp, grads, backend):
    check_run("adam", base, cp, grads, resync=False, backend=backend)
