"""The JAX port as optax transformations: exact scalar factors inside jit,
jit and vmap, 16-bit parameters with float32 statistics, the scale readable from the state,
learning-rate schedules, moment sharing, donation, and clear errors for bad hyperparameters
(the NumPy optimizers' messages), unknown CDFs and gradient trees that do not match.

Every jit compile costs a fraction of a second: each test compiles a handful of functions."""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest

jax = pytest.importorskip("jax")
optax = pytest.importorskip("optax")

import jax.numpy as jnp  # noqa: E402

from cprop_ref import SGD as RefSGD  # noqa: E402
from cprop_ref import CProp as RefCProp  # noqa: E402
from cprop_ref import CPropAdam as RefCPropAdam  # noqa: E402
from cprop_ref import CPropSGD as RefCPropSGD  # noqa: E402
from cprop_ref import jax as cj  # noqa: E402
from cprop_ref.jax import scalars  # noqa: E402
from cprop_ref.scale import bias_correction, degrees_of_freedom  # noqa: E402
from cprop_ref.tolerance import DOUBLE_U  # noqa: E402

RNG = np.random.default_rng(15)
BETAS = (0.0, 1e-6, 0.5, 0.9, 0.999, 0.9999, 1.0 - 1e-7)
COUNTS = np.array([1, 2, 3, 10, 100, 1000, 12345, 10**6, 10**8, 2**31 - 1], np.int32)


def _run(tx, params, grads):
    """``len(grads)`` jitted steps of ``tx`` from ``params``; the final parameters and state."""
    step = jax.jit(lambda p, g, s: (lambda u, s: (optax.apply_updates(p, u), s))(*tx.update(g, s, p)))
    state = tx.init(params)
    for g in grads:
        params, state = step(params, g, state)
    return params, state


# -- the scalar factors -------------------------------------------------------------------


@pytest.mark.parametrize("beta", BETAS)
def test_scalar_factors_are_within_the_tolerance_policys_bounds_under_jit_and_vmap(beta):
    """``b = 1 - beta^t`` and ``k = n - 1 + eps`` computed in float32 pairs inside jit (vmapped
    over ``t``, 8 lanes and more, where XLA vectorises) are within the policy's allowance for
    them (``docs/algorithm.md``, item 2: ``2 u_double + u b`` and ``4 u_double (n + 1) + u k``)
    of the double-precision values; Adam's step size and ``sqrt(1 - b2^t)`` within 1 ulp. Plain
    float32 (``1 - beta**t`` with ``beta`` rounded first) is off by up to 1e4 ulp at beta = 0.9999."""
    u = 2.0**-24
    f32 = np.dtype(np.float32)
    fn = jax.jit(
        jax.vmap(
            lambda t: (*scalars.scale_factors(beta, t, 1e-8, f32), *scalars.adam_factors(0.01, beta, beta, t, f32))
        )
    )
    b, k, step_size, root = (np.asarray(x, np.float64) for x in fn(COUNTS))
    for i, t in enumerate(int(t) for t in COUNTS):
        b_ref = bias_correction(beta, t)
        n = b_ref / (1.0 - beta)
        k_ref = degrees_of_freedom(beta, t) + 1e-8
        assert abs(b[i] - b_ref) <= 2 * DOUBLE_U + u * b_ref, (t, b[i], b_ref)
        assert abs(k[i] - k_ref) <= 4 * DOUBLE_U * (n + 1.0) + u * k_ref, (t, k[i], k_ref)
        if b_ref > 0.0:
            assert abs(step_size[i] - 0.01 / b_ref) <= np.spacing(np.float32(0.01 / b_ref))
            assert abs(root[i] - np.sqrt(b_ref)) <= np.spacing(np.float32(np.sqrt(b_ref)))


# -- the scale's transcendental functions never exceed 1 in float32 ----------------------------


def _float32_range(low: float, high: float) -> np.ndarray:
    """Every float32 in ``[low, high)``, ascending (positive bounds)."""
    first, last = np.float32(low).view(np.int32), np.float32(high).view(np.int32)
    return np.arange(first, last, dtype=np.int32).view(np.float32)


def test_xlas_float32_tanh_and_clamped_erf_never_exceed_one():
    """``scale_from_factors`` drops ``min(., 1)`` for ``c <= 1`` in float32 because ``c * tanh`` and
    ``c * erf(min(x, ERF_FLOAT32_SATURATION))`` cannot exceed 1. Checked for every float32 where
    the functions come within a few ulp of 1 (``tanh`` on [2, 32), below 0.97 before, and 1 at
    100,001 points beyond and at infinity; ``erf`` on [3, saturation], below 0.99998 before), and
    ``erf`` is 1 at the clamp. A new XLA whose approximations round past 1 fails here, not
    silently in the scale."""
    from cprop_ref.jax.functional import ERF_FLOAT32_SATURATION, central_mass

    tanh = jax.jit(lambda x: central_mass(x, "bfo"))
    slope = 0.5 * 1.702
    for binade in (2.0, 4.0, 8.0, 16.0):
        x = _float32_range(binade / slope, 2 * binade / slope)
        assert np.max(np.asarray(tanh(jnp.asarray(x)))) <= 1.0, binade
    erf = jax.jit(jax.scipy.special.erf)
    x = np.append(_float32_range(3.0, ERF_FLOAT32_SATURATION), np.float32(ERF_FLOAT32_SATURATION))
    values = np.asarray(erf(jnp.asarray(x)))
    assert np.max(values) <= 1.0 and values[-1] == 1.0
    normal = jax.jit(lambda z: central_mass(z, "normal"))
    z = jnp.asarray([3.0 * np.sqrt(2.0), 5.227, 5.4, 6.0, 40.0, np.inf], jnp.float32)
    assert np.all(np.asarray(normal(z)) <= 1.0) and np.all(np.asarray(normal(z))[2:] == 1.0)
    beyond = np.append(np.geomspace(32.0, 2e38, 100_001), np.inf).astype(np.float32) / np.float32(slope)
    assert np.all(np.asarray(tanh(jnp.asarray(beyond))) == 1.0)


# -- agreement with the NumPy optimizers ------------------------------------------------------


@pytest.mark.parametrize("name", ["CPropSGD", "CPropAdam"])
def test_float64_steps_match_the_numpy_optimizers_to_a_few_ulp(name):
    """With x64, cprop_sgd (momentum, Nesterov, weight decay, ``normal``) and cprop_adam
    (AMSGrad, ``logistic``) follow ``CPropSGD`` / ``CPropAdam``, and the state's scale is the
    reference's ``scales()``, to a few float64 ulp after 5 steps of sign-flipping gradients
    (the harness checks every CDF and configuration against its bounds)."""
    grads = [RNG.standard_normal(6) + (-1.0) ** i for i in range(5)]
    x0 = RNG.standard_normal(6)
    with cj.enable_x64():
        if name == "CPropSGD":
            hp = dict(momentum=0.9, nesterov=True, weight_decay=0.01, cprop_beta=0.9, cprop_cdf="normal")
            tx, ref_cls, lr = cj.cprop_sgd(0.1, **hp), RefCPropSGD, 0.1
        else:
            hp = dict(amsgrad=True, cprop_beta=0.99, cprop_cdf="logistic")
            tx, ref_cls, lr = cj.cprop_adam(0.01, **hp), RefCPropAdam, 0.01
        params, state = _run(tx, jnp.asarray(x0), [jnp.asarray(g) for g in grads])
        x = x0.copy()
        ref = ref_cls([x], lr=lr, **hp)
        for g in grads:
            ref.step([g.copy()])
        assert params.dtype == jnp.float64
        np.testing.assert_allclose(np.asarray(params), x, rtol=16 * np.finfo(float).eps, atol=0)
        np.testing.assert_allclose(np.asarray(state.scale), ref.scales()[0], rtol=0, atol=64 * np.finfo(float).eps)


def test_wrapper_around_torch_semantics_sgd_matches_the_reference_wrapper():
    with cj.enable_x64():
        grads = [RNG.standard_normal(4) for _ in range(4)]
        x0 = RNG.standard_normal(4)
        tx = cj.cprop(cj.sgd(0.05, momentum=0.5, dampening=0.1), beta=0.9, cdf="logistic")
        params, state = _run(tx, jnp.asarray(x0), [jnp.asarray(g) for g in grads])
        x = x0.copy()
        ref = RefCProp(RefSGD([x], lr=0.05, momentum=0.5, dampening=0.1), beta=0.9, cdf="logistic")
        for g in grads:
            ref.step([g.copy()])
        np.testing.assert_allclose(np.asarray(params), x, rtol=16 * np.finfo(float).eps, atol=0)
        assert isinstance(state, cj.CPropState) and int(state.count) == 4


# -- jit, vmap, dtypes, state ------------------------------------------------------------------


def test_vmap_over_independent_runs_equals_the_runs_one_by_one():
    """No Python control flow on traced values: vmapped over 5 parameter sets, each lane is
    bit for bit the jitted run of that set alone."""
    tx = cj.cprop_adam(1e-2, cprop_cdf="normal", cprop_beta=0.9)
    params = jnp.asarray(RNG.standard_normal((5, 33)).astype(np.float32))
    grads = jnp.asarray(RNG.standard_normal((4, 5, 33)).astype(np.float32))

    def run(p, gs):
        state = tx.init(p)
        for g in gs:
            u, state = tx.update(g, state, p)
            p = optax.apply_updates(p, u)
        return p, state.scale

    batched = jax.jit(jax.vmap(run, in_axes=(0, 1)))(params, grads)
    single = jax.jit(run)
    for i in range(5):
        p, s = single(params[i], grads[:, i])
        np.testing.assert_array_equal(batched[0][i], p)
        np.testing.assert_array_equal(batched[1][i], s)


@pytest.mark.parametrize("dtype", [jnp.float16, jnp.bfloat16])
def test_16_bit_parameters_follow_the_float32_computation_rounded_once(dtype):
    """16-bit parameters keep every statistic in float32 and get float32 updates: three steps
    give the float32 run's state exactly, and each parameter is the float32 step from the
    16-bit value, rounded once. Zero gradients give scale 0 and no NaN (in 16 bits, eps = 1e-8
    underflows and 0/0 would follow)."""
    tx = cj.cprop_adam(1e-2, cprop_beta=0.9)
    x = jnp.asarray(RNG.standard_normal(8)).astype(dtype)
    grads = [jnp.asarray(RNG.standard_normal(8)).astype(dtype) for _ in range(2)] + [jnp.zeros(8, dtype)]
    update = jax.jit(tx.update)
    state16, state32 = tx.init(x), tx.init(x.astype(jnp.float32))
    for g in grads:
        u16, state16 = update(g, state16, x)
        u32, state32 = update(g.astype(jnp.float32), state32, x.astype(jnp.float32))
        assert u16.dtype == jnp.float32 and state16.exp_avg.dtype == jnp.float32
        np.testing.assert_array_equal(u16, u32)
        new = optax.apply_updates(x, u16)
        assert new.dtype == dtype
        np.testing.assert_array_equal(new, (x.astype(jnp.float32) + u32).astype(dtype))
        x = new
    assert not np.any(np.isnan(np.asarray(x, np.float32)))
    np.testing.assert_array_equal(state16.scale, state32.scale)


def test_the_last_scale_is_readable_from_the_state_and_is_the_scale_of_the_statistics():
    """The state's scale is ``cprop_scale`` of the state's statistics, bit for bit when both are
    compiled (eagerly, op by op, ``v_hat - m_hat^2`` is not fused into a multiply-add: an ulp)."""
    tx = cj.cprop_sgd(0.1, cprop_beta=0.9, cprop_cdf="bfo")
    _, state = _run(tx, jnp.zeros(5), [jnp.asarray(RNG.standard_normal(5).astype(np.float32)) for _ in range(3)])
    m, v, t = cj.cprop_statistics(state)
    scale = jax.jit(lambda m, v, t: cj.cprop_scale(m, v, t, beta=0.9, c=1.0, eps=1e-8, cdf_name="bfo"))
    expected = scale(m, v, t)
    np.testing.assert_array_equal(state.scale, expected)
    assert int(t) == 3 and np.all((0.0 <= state.scale) & (state.scale <= 1.0))


@pytest.mark.parametrize(
    "make",
    [
        lambda keep: cj.cprop_adam(1e-2, cprop_cdf="normal", keep_scale=keep),
        lambda keep: cj.cprop_sgd(0.1, momentum=0.5, keep_scale=keep),
        lambda keep: cj.cprop(cj.adam(1e-2), beta=0.9, cdf="logistic", keep_scale=keep),
    ],
)
def test_without_keep_scale_the_steps_are_the_same_and_the_state_has_no_scale(make):
    """``keep_scale=False`` changes what the state holds, not the step: the parameters and the
    statistics are bit for bit those of ``keep_scale=True``, and ``state.scale`` is ``None``."""
    grads = [jnp.asarray(RNG.standard_normal(7).astype(np.float32)) for _ in range(3)]
    x0 = jnp.asarray(RNG.standard_normal(7).astype(np.float32))
    kept_params, kept = _run(make(True), x0, grads)
    params, state = _run(make(False), x0, grads)
    assert state.scale is None and kept.scale is not None
    np.testing.assert_array_equal(params, kept_params)
    for a, b in zip(cj.cprop_statistics(state), cj.cprop_statistics(kept)):
        np.testing.assert_array_equal(a, b)
    with pytest.raises(ValueError, match="keep_scale"):
        make(1)


def test_adams_moments_are_shared_when_the_betas_allow():
    """As ``CPropAdam``: with weight_decay 0, beta2 == cprop_beta (the defaults) shares v,
    beta1 == cprop_beta too shares m; weight decay shares nothing."""
    p = jnp.zeros(3)
    default = cj.cprop_adam().init(p)
    assert default.cprop_v is None and default.cprop_m is not None
    both = cj.cprop_adam(betas=(0.999, 0.999)).init(p)
    assert both.cprop_m is None and both.cprop_v is None
    decayed = cj.cprop_adam(betas=(0.999, 0.999), weight_decay=0.1).init(p)
    assert decayed.cprop_m is not None and decayed.cprop_v is not None


def test_a_schedule_sets_the_learning_rate_of_each_step():
    """optax's convention: the schedule is evaluated at the step count before the step
    (0.1 at the first step, 0.2 at the second): ``update = -lr * (g * s)``."""
    tx = cj.cprop_sgd(optax.linear_schedule(0.1, 0.3, transition_steps=2), cprop_beta=0.5)
    update = jax.jit(tx.update)
    g = jnp.asarray([1.0, -2.0])
    state = tx.init(jnp.zeros(2))
    for rate in (0.1, 0.2):
        u, state = update(g, state, None)
        np.testing.assert_allclose(u, -rate * (np.asarray(g) * np.asarray(state.scale)), rtol=1e-6)
    assert np.all(np.asarray(state.scale) > 0.0)


def test_a_step_may_donate_the_whole_state():
    """Every state field is its own buffer (a jitted step with ``donate_argnums`` would refuse a
    buffer donated twice)."""
    tx = cj.cprop_adam(1e-3, amsgrad=True)
    p = jnp.zeros(4)
    state = tx.init(p)
    pointers = [leaf.unsafe_buffer_pointer() for leaf in jax.tree.leaves(state) if leaf.ndim]
    assert len(set(pointers)) == len(pointers)

    def step(p, s):
        u, s = tx.update(jnp.ones(4), s, p)
        return optax.apply_updates(p, u), s

    p, state = jax.jit(step, donate_argnums=(0, 1))(p, state)
    assert np.all(np.asarray(p) < 0.0)


def test_the_wrapper_chains_with_optax_and_reads_nested_trees():
    params = {"w": jnp.ones((2, 3)), "b": [jnp.zeros(3)]}
    tx = optax.chain(optax.clip_by_global_norm(1.0), cj.cprop(optax.adam(1e-2), beta=0.9))
    grads = jax.tree.map(lambda x: jnp.ones_like(x) * 0.5, params)
    new, state = _run(tx, params, [grads, grads])
    assert jax.tree.structure(new) == jax.tree.structure(params)
    assert int(state[1].count) == 2 and jax.tree.structure(state[1].scale) == jax.tree.structure(params)


# -- bad input ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "kwargs, ref_name",
    [
        ({"learning_rate": -1.0}, "lr"),
        ({"learning_rate": float("nan")}, "lr"),
        ({"momentum": -0.5}, "momentum"),
        ({"dampening": 2.0}, "dampening"),
        ({"cprop_beta": 1.0}, "cprop_beta"),
        ({"cprop_c": -1.0}, "cprop_c"),
        ({"cprop_eps": float("inf")}, "cprop_eps"),
        ({"cprop_cdf": "probit"}, "cprop_cdf"),
        ({"nesterov": 1}, "nesterov"),
        ({"nesterov": True, "momentum": 0.0}, None),
    ],
)
def test_bad_hyperparameters_raise_the_numpy_optimizers_messages(kwargs, ref_name):
    """At construction, not inside a trace; the message is ``CPropSGD``'s with the port's names."""
    kwargs = {"learning_rate": 0.1, **kwargs}
    ref_kwargs = {("lr" if k == "learning_rate" else k): v for k, v in kwargs.items()}
    with pytest.raises(ValueError) as ref_err:
        RefCPropSGD([np.zeros(2)], **ref_kwargs)
    with pytest.raises(ValueError) as err:
        cj.cprop_sgd(**kwargs)
    expected = (
        str(ref_err.value)
        .replace("CPropSGD param group 0", "cprop_sgd")  # the port has no parameter groups
        .replace("CPropSGD", "cprop_sgd")
        .replace("invalid lr=", "invalid learning_rate=")
    )
    assert str(err.value) == expected
    if ref_name:
        assert f"invalid {'learning_rate' if ref_name == 'lr' else ref_name}=" in str(err.value)


@pytest.mark.parametrize(
    "build, match",
    [
        (lambda: cj.cprop_adam(betas=(0.9, 1.0)), r"cprop_adam: invalid betas\[1\]=1.0"),
        (lambda: cj.cprop_adam(amsgrad="yes"), "cprop_adam: invalid amsgrad='yes'"),
        (lambda: cj.cprop(optax.sgd(0.1), cdf="gauss"), "cprop: invalid cdf='gauss': must be one of normal"),
        (lambda: cj.cprop(optax.sgd(0.1), beta=-0.1), "cprop: invalid beta=-0.1"),
        (lambda: cj.cprop(lambda g: g), "cprop: inner must be an optax.GradientTransformation"),
        (lambda: cj.adamw(weight_decay=-1.0), "adamw: invalid weight_decay=-1.0"),
    ],
)
def test_bad_construction_raises_value_error_naming_the_hyperparameter(build, match):
    with pytest.raises(ValueError, match=match):
        build()


def test_gradients_that_do_not_match_the_parameters_raise_naming_the_leaf():
    tx = cj.cprop_adam(1e-3, weight_decay=0.1)
    params = {"w": jnp.ones((2, 3)), "b": jnp.zeros(3)}
    state = tx.init(params)
    with pytest.raises(ValueError, match="cprop_adam: the gradient tree .* does not match the parameters' tree"):
        tx.update({"w": jnp.ones((2, 3))}, state, params)
    with pytest.raises(
        ValueError, match=r"cprop_adam: gradient \['w'\] has shape \(3, 2\), the parameter's is \(2, 3\)"
    ):
        tx.update({"w": jnp.ones((3, 2)), "b": jnp.zeros(3)}, state, params)
    with pytest.raises(ValueError, match=r"gradient \['b'\] has dtype int32"):
        tx.update({"w": jnp.ones((2, 3)), "b": jnp.zeros(3, jnp.int32)}, state, params)
    with pytest.raises(ValueError, match="weight_decay != 0 needs the parameters"):
        tx.update(params, state)


def test_without_jax_the_import_error_names_the_extra():
    code = "import sys; sys.modules['jax'] = None\ntry:\n import cprop_ref.jax\nexcept ImportError as e:\n print(e)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert "cprop-ref[jax]" in out


def test_the_training_loop_of_docs_jax_md_runs_and_fits():
    """The page's example, as written: 500 jitted steps of cprop_adam with a cosine schedule fit
    the noiseless least-squares problem, and the scale and statistics read out as documented."""
    from pathlib import Path

    page = (Path(__file__).parent.parent / "docs" / "jax.md").read_text()
    code = page.split("```python\n", 1)[1].split("```", 1)[0]
    namespace: dict = {}
    exec(compile(code, "docs/jax.md", "exec"), namespace)
    assert float(namespace["value"]) < 1e-6
    state = namespace["state"]
    assert jax.tree.structure(state.scale) == jax.tree.structure(namespace["params"])
    assert int(namespace["t"]) == 500


def test_the_bench_times_cprop_adam_beside_optax_adam():
    """``cprop-ref bench``'s JAX group on a tiny tensor: every row timed, each CProp row as a
    ratio to the jitted optax.adam update (timings are not asserted)."""
    import argparse

    from cprop_ref.bench import Table, bench_jax

    table = Table()
    bench_jax(table, 256, argparse.Namespace(log2_size=8, repeats=2))
    rows = {row["row"]: row for row in table.rows}
    assert rows["optax.adam"]["median_s"] > 0
    for name in ("cprop_ref.jax.cprop_adam bft", "cprop_ref.jax.cprop_adam normal"):
        assert rows[name]["against"] == "optax.adam" and rows[name]["ratio"] > 0


def test_bench_only_jax_runs_the_jax_group_alone(tmp_path, capsys):
    """``cprop-ref bench --only jax`` times the JAX rows and no other group's."""
    import json

    from cprop_ref.cli import main

    out = tmp_path / "bench.json"
    assert main(["bench", "--only", "jax", "--log2-size", "8", "--repeats", "2", "--json", str(out)]) == 0
    rows = json.loads(out.read_text())["rows"]
    assert {row["row"] for row in rows} >= {"optax.adam", "cprop_ref.jax.cprop_adam bft, keep_scale=False"}
    assert all(row["group"].endswith("JAX (jitted optax update + apply_updates)") for row in rows)
