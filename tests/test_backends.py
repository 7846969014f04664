"""The Numba backend against the NumPy reference, step by step.

Hypothesis draws optimizer x cdf x dtype x hyperparameters x shapes (0-d and empty
included) x gradient streams with missing gradients. Two comparisons:

**One step from the same state** (the NumPy optimizer's state and parameters are loaded
into the Numba one before every step, which also carries checkpoints across backends).
Derived bounds, per field:

- every *state* field (moments, AMSGrad maximum, momentum buffer, CProp's ``m``/``v``,
  step counts): **0**. From identical inputs the kernels perform the same IEEE-754
  operations, in the same order, in the same dtype, with the scalars rounded once from
  the same doubles (Numba's ``fastmath`` is off, so no FMA contraction). This is the
  tolerance policy's moment bound at its tightest.
- the *parameter*: only the scale ``s`` differs (the CDF is evaluated by
  :mod:`cprop_ref.kernels.vector_math`). With ``U`` the unscaled update, identical in
  both, the new parameter is ``fl(p + fl(U s))`` (two or three roundings), so
  ``|p_numba - p_numpy| <= |U| tol_s + 3u |U| + u (|p_numpy| + |p_numba|)``, where
  ``tol_s`` is the policy's :func:`cprop_ref.tolerance.scale_tolerance` for zero moment
  error (the moments are identical). ``|U|`` is read off the base optimizer (SGD for
  CProp-SGD, Adam for CProp-Adam, the wrapped one for the wrapper) stepped from the same
  state: ``|U| <= |p_base - p| + u (|p_base| + |p|)``.
- optimizers without CProp: parameters bit for bit (bound 0, same argument as the state).

**Free-running trajectories** with ``weight_decay = 0`` (the state then depends on the
gradients only): the moments stay within :class:`cprop_ref.tolerance.CPropErrorBounds`
propagated over the steps (they are in fact identical), and the parameter error is
propagated: ``e_t <= e_{t-1} + |U_t| tol_s,t + 3u |U_t| + u (|p_numpy| + |p_numba|)``.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from cprop_ref import CProp, CPropAdam, CPropSGD
from cprop_ref.cdf import CDF_NAMES
from cprop_ref.tolerance import scale_tolerance, unit_roundoff
from tests.hypothesis_budget import examples
from tests.optimizer_catalogue import (
    BY_NAME,
    CATALOGUE,
    DRAWS,
    DTYPES,
    KERNEL_DTYPES,
    OptimizerInfo,
    by_draw_id,
    default_kernel_variant,
    drawn,
    swept_cdf,
)

#: The drawn optimizers: the catalogue's entries with a ``draw_id`` (``tests/optimizer_catalogue.py``).
KINDS = tuple(info.draw_id for info in drawn())
SHAPES = [(), (0,), (1,), (3,), (2, 3), (4, 0), (2500,)]  # (2500,): more than one 2048-element chunk


@st.composite
def configurations(draw: Any, weight_decay: bool = True) -> dict[str, Any]:
    """A drawn optimizer and a value for every hyperparameter (each optimizer takes its own)."""
    kind = draw(st.sampled_from(KINDS))
    momentum = draw(st.sampled_from(DRAWS["momentum"]))
    nesterov = momentum > 0.0 and draw(st.booleans())
    cprop_beta = draw(st.sampled_from(DRAWS["cprop_beta"]))
    betas = draw(st.sampled_from([(0.9, 0.999), (cprop_beta, cprop_beta), (0.9, cprop_beta), (0.5, 0.99)]))
    decay = draw(st.sampled_from(DRAWS["weight_decay"])) if weight_decay else 0.0
    adam_family = "betas" in by_draw_id(kind).hyperparameters
    default_structure = default_kernel_variant(
        {"betas": betas, "weight_decay": decay, "cprop_beta": cprop_beta} if adam_family else {"momentum": momentum}
    )
    return {
        "kind": kind,
        "lr": draw(st.sampled_from(DRAWS["lr"])),
        "momentum": momentum,
        "dampening": 0.0 if nesterov else draw(st.sampled_from(DRAWS["dampening"])),
        "nesterov": nesterov,
        "weight_decay": decay,
        "betas": betas,
        "eps": draw(st.sampled_from(DRAWS["eps"])),
        "amsgrad": draw(st.booleans()),
        "cprop_beta": cprop_beta,
        "cprop_c": draw(st.sampled_from(DRAWS["cprop_c"])),
        "cprop_eps": draw(st.sampled_from(DRAWS["cprop_eps"])),
        "cprop_cdf": swept_cdf(draw(st.sampled_from(DRAWS["cprop_cdf"])), default_structure),
    }


def make(info: OptimizerInfo, params: list[np.ndarray], cfg: dict[str, Any], backend: str) -> Any:
    """``info``'s optimizer with the hyperparameters of ``cfg`` it takes."""
    return info.make(params, backend=backend, **{k: cfg[k] for k in info.hyperparameters})


def build(params: list[np.ndarray], cfg: dict[str, Any], backend: str) -> Any:
    return make(by_draw_id(cfg["kind"]), params, cfg, backend)


def unscaled_update(ref: Any, cfg: dict[str, Any], params: list[np.ndarray], grads: list) -> list[np.ndarray]:
    """``|U|`` per parameter (float64): the CProp optimizer's base stepped on the NumPy path
    from the reference's current state, before the reference steps."""
    info = by_draw_id(cfg["kind"])
    twins = [p.copy() for p in params]
    base = make(BY_NAME[info.unscaled], twins, cfg, "numpy")
    if info.wraps:
        base.load_state_dict(ref.base_optimizer.state_dict())
    else:
        state = ref.state_dict()
        keep = set(base.state_schema)
        base_state = {
            "optimizer": type(base).__name__,
            "nonfinite": state["nonfinite"],
            "param_specs": state["param_specs"],
            "param_groups": [
                {k: v for k, v in g.items() if k in base.hyperparams or k == "params"} for g in state["param_groups"]
            ],
            "state": [
                # CProp-Adam keeps Adam's moments under Adam's names; the base needs no step count without them.
                {k: v for k, v in entry.items() if k in keep and (k != "step" or "exp_avg" in entry)}
                for entry in state["state"]
            ],
        }
        base.load_state_dict(base_state)
    base.step(grads)
    out = []
    for before, after in zip(params, twins):
        b, a = before.astype(np.float64), after.astype(np.float64)
        u = unit_roundoff(before.dtype)
        out.append(np.abs(a - b) + u * (np.abs(a) + np.abs(b)))
    return out


def scale_tolerances(opt: Any, cfg: dict[str, Any], dtype: Any) -> list[np.ndarray | None]:
    """The policy's bound on the scale of each parameter's latest step (moments identical)."""
    out: list[np.ndarray | None] = []
    for k, p in enumerate(opt.params):
        state = opt.state[k]
        if not state:
            out.append(None)
            continue
        if isinstance(opt, CProp):
            stats = opt._stats(k, p)
        else:
            stats = opt._cprop_stats(state, p)
        zero = np.zeros(p.shape)
        out.append(
            scale_tolerance(
                np.asarray(stats.m),
                np.asarray(stats.v),
                stats.t,
                beta=cfg["cprop_beta"],
                c=cfg["cprop_c"],
                eps=cfg["cprop_eps"],
                cdf=cfg["cprop_cdf"],
                m_bound=zero,
                v_bound=zero,
                u=unit_roundoff(dtype),
            )
        )
    return out


def assert_states_identical(a: Any, b: Any, path: str = "state") -> None:
    if isinstance(a, np.ndarray) or isinstance(b, np.ndarray):
        assert isinstance(a, np.ndarray) and isinstance(b, np.ndarray), path
        assert a.dtype == b.dtype and a.shape == b.shape, path
        np.testing.assert_array_equal(a, b, err_msg=path)
    elif isinstance(a, dict):
        assert isinstance(b, dict) and sorted(a) == sorted(b), f"{path}: {sorted(a)} != {sorted(b)}"
        for key in a:
            assert_states_identical(a[key], b[key], f"{path}.{key}")
    elif isinstance(a, list):
        assert isinstance(b, list) and len(a) == len(b), path
        for i, (x, y) in enumerate(zip(a, b)):
            assert_states_identical(x, y, f"{path}[{i}]")
    else:
        assert a == b, f"{path}: {a!r} != {b!r}"


def parameter_bound(p_ref: np.ndarray, p_fast: np.ndarray, update: np.ndarray, tol_s: np.ndarray | None) -> np.ndarray:
    u = unit_roundoff(p_ref.dtype)
    ref, fast = p_ref.astype(np.float64), p_fast.astype(np.float64)
    scale_part = 0.0 if tol_s is None else update * tol_s
    return scale_part + 3.0 * u * update + u * (np.abs(ref) + np.abs(fast))


def gradients(rng: np.random.Generator, params: list[np.ndarray], step: int) -> list[np.ndarray | None]:
    drift = [np.linspace(-1.0, 1.0, p.size).reshape(p.shape) for p in params]
    grads: list[np.ndarray | None] = [
        (d + rng.standard_normal(p.shape) * 10.0 ** rng.integers(-2, 2)).astype(p.dtype) for d, p in zip(drift, params)
    ]
    if step % 3 == 2 and grads:
        grads[int(rng.integers(len(grads)))] = None
    return grads


@settings(max_examples=examples(40))
@given(
    cfg=configurations(),
    dtype=st.sampled_from(DTYPES),
    shapes=st.lists(st.sampled_from(SHAPES), min_size=1, max_size=3),
    seed=st.integers(0, 2**16),
)
def test_one_step_from_the_same_state_agrees(cfg, dtype, shapes, seed):
    rng = np.random.default_rng(seed)
    ref_params = [rng.standard_normal(s).astype(dtype) for s in shapes]
    fast_params = [p.copy() for p in ref_params]
    ref, fast = build(ref_params, cfg, "numpy"), build(fast_params, cfg, "numba")
    cprop = by_draw_id(cfg["kind"]).cprop
    for step in range(4):
        grads = gradients(rng, ref_params, step)
        fast.load_state_dict(ref.state_dict())  # a checkpoint of one backend loads into the other
        for pf, pr in zip(fast_params, ref_params):
            pf[...] = pr
        updates = unscaled_update(ref, cfg, ref_params, grads) if cprop else None
        ref.step(grads)
        fast.step(grads)
        assert_states_identical(fast.state_dict(), ref.state_dict())
        tolerances = scale_tolerances(ref, cfg, dtype) if cprop else [None] * len(shapes)
        for k, (pr, pf) in enumerate(zip(ref_params, fast_params)):
            if not cprop or dtype not in KERNEL_DTYPES or grads[k] is None:  # float16 takes the NumPy path
                np.testing.assert_array_equal(pf, pr, err_msg=f"step {step} parameter {k}")
                continue
            bound = parameter_bound(pr, pf, updates[k], tolerances[k])
            error = np.abs(pf.astype(np.float64) - pr.astype(np.float64))
            assert np.all(error <= bound), f"step {step} parameter {k}: {error.max()} > {bound[error > bound]}"


@settings(max_examples=examples(20))
@given(
    cfg=configurations(weight_decay=False),
    dtype=st.sampled_from(KERNEL_DTYPES),
    shapes=st.lists(st.sampled_from(SHAPES), min_size=1, max_size=3),
    seed=st.integers(0, 2**16),
)
def test_free_running_trajectories_stay_within_the_propagated_bounds(cfg, dtype, shapes, seed):
    rng = np.random.default_rng(seed)
    ref_params = [rng.standard_normal(s).astype(dtype) for s in shapes]
    fast_params = [p.copy() for p in ref_params]
    ref, fast = build(ref_params, cfg, "numpy"), build(fast_params, cfg, "numba")
    cprop = by_draw_id(cfg["kind"]).cprop
    errors = [np.zeros(s) for s in shapes]
    for step in range(6):
        grads = gradients(rng, ref_params, step)
        updates = unscaled_update(ref, cfg, ref_params, grads) if cprop else None
        ref.step(grads)
        fast.step(grads)
        # Without weight decay the state is a function of the gradients alone: identical.
        assert_states_identical(fast.state_dict(), ref.state_dict())
        tolerances = scale_tolerances(ref, cfg, dtype) if cprop else [None] * len(shapes)
        for k, (pr, pf) in enumerate(zip(ref_params, fast_params)):
            if grads[k] is not None and cprop:
                errors[k] = errors[k] + parameter_bound(pr, pf, updates[k], tolerances[k])
            error = np.abs(pf.astype(np.float64) - pr.astype(np.float64))
            assert np.all(error <= errors[k]), f"step {step} parameter {k}: {error.max()}"


def test_scale_applied_by_the_kernel_is_within_the_policy():
    """The scale itself, read off CProp-SGD with ``lr = 1`` from ``p = 0``: ``p_new = -fl(g s)``,
    so ``s_kernel = -p_new / g`` to one rounding; against ``scales()`` (the NumPy reference,
    recomputed from the identical state) within ``scale_tolerance + u s``."""
    rng = np.random.default_rng(3)
    for dtype in (np.float32, np.float64):
        for cdf in CDF_NAMES:
            p = np.zeros(5000, dtype)
            opt = CPropSGD([p], lr=1.0, cprop_beta=0.9, cprop_cdf=cdf)
            drift = np.linspace(-0.5, 0.5, p.size)
            for _ in range(8):
                p[...] = 0.0
                g = (drift + rng.standard_normal(p.size)).astype(dtype)
                g[g == 0] = 1.0
                opt.step([g])
                observed = -p.astype(np.float64) / g.astype(np.float64)
                (reference,) = opt.scales()
                state = opt.state[0]
                tol = scale_tolerance(
                    state["cprop_m"],
                    state["cprop_v"],
                    state["step"],
                    beta=0.9,
                    c=1.0,
                    eps=1e-8,
                    cdf=cdf,
                    m_bound=np.zeros(p.size),
                    v_bound=np.zeros(p.size),
                    u=unit_roundoff(dtype),
                )
                bound = tol + unit_roundoff(dtype) * np.abs(reference)
                assert np.all(np.abs(observed - reference) <= bound), (dtype, cdf)


@pytest.mark.parametrize("kind", ["cprop_adam", "cprop_sgd", "wrapper_adam"])
def test_parallel_launch_many_tensors_agrees(kind):
    """Enough elements for the multi-threaded launch, spread over many tensors of mixed
    sizes: the same checks as above, one step from the same state, float32."""
    rng = np.random.default_rng(7)
    shapes = [(int(n),) for n in rng.integers(1, 3000, size=40)] + [(3, 0), ()]
    cfg = {
        "kind": kind,
        "lr": 0.01,
        "momentum": 0.9,
        "dampening": 0.0,
        "nesterov": False,
        "weight_decay": 0.0,
        "betas": (0.9, 0.999),
        "eps": 1e-8,
        "amsgrad": False,
        "cprop_beta": 0.999,
        "cprop_c": 1.0,
        "cprop_eps": 1e-8,
        "cprop_cdf": "bft",
    }
    ref_params = [rng.standard_normal(s).astype(np.float32) for s in shapes]
    fast_params = [p.copy() for p in ref_params]
    ref, fast = build(ref_params, cfg, "numpy"), build(fast_params, cfg, "numba")
    for step in range(3):
        grads = gradients(rng, ref_params, step)
        fast.load_state_dict(ref.state_dict())
        for pf, pr in zip(fast_params, ref_params):
            pf[...] = pr
        updates = unscaled_update(ref, cfg, ref_params, grads)
        ref.step(grads)
        fast.step(grads)
        assert_states_identical(fast.state_dict(), ref.state_dict())
        for k, tol in enumerate(scale_tolerances(ref, cfg, np.float32)):
            if grads[k] is None:
                np.testing.assert_array_equal(fast_params[k], ref_params[k])
                continue
            bound = parameter_bound(ref_params[k], fast_params[k], updates[k], tol)
            assert np.all(np.abs(fast_params[k].astype(np.float64) - ref_params[k]) <= bound)


def test_state_lives_in_one_flat_buffer_and_survives_a_numpy_step():
    """After a Numba step the state entries of all parameters of a dtype are
    views of one arena; a NumPy-backend step (which stores fresh arrays) and a switch back
    repack them, with no change in the numbers."""
    rng = np.random.default_rng(5)
    params = [rng.standard_normal(s).astype(np.float32) for s in [(3,), (2, 2), (), (0,)]]
    twin = [p.copy() for p in params]
    opt, ref = CPropAdam(params, cprop_beta=0.9), CPropAdam(twin, cprop_beta=0.9, backend="numpy")
    for backend in ("numba", "numpy", "numba", "numba"):
        grads = [rng.standard_normal(p.shape).astype(np.float32) for p in params]
        opt.backend = backend
        opt.load_state_dict(ref.state_dict())
        for p, q in zip(params, twin):
            p[...] = q
        opt.step(grads)
        ref.step(grads)
        assert_states_identical(opt.state_dict(), ref.state_dict())
    bases = {id(st["exp_avg"].base) for st in opt.state}
    assert len(bases) == 1 and all(st["exp_avg"].base is not None for st in opt.state)


def test_cached_validation_still_refuses_a_changed_hyperparameter():
    """The Numba path reuses the validated groups while nothing changed; a change of value,
    of type (``amsgrad=1``) or inside a list (``betas``) is validated again and refused."""
    x = np.zeros(2, np.float32)
    opt = CPropAdam([x])
    g = np.array([0.5, -1.0], np.float32)
    opt.step([g])
    opt.param_groups[0]["amsgrad"] = 1
    with pytest.raises(ValueError, match="amsgrad=1"):
        opt.step([g])
    opt.param_groups[0]["amsgrad"] = False
    betas = [0.9, 0.999]
    opt.param_groups[0]["betas"] = betas
    opt.step([g])
    betas[0] = 1.5
    before = x.copy()
    with pytest.raises(ValueError, match=r"betas\[0\]=1.5"):
        opt.step([g])
    np.testing.assert_array_equal(x, before)


def test_tiny_steady_state_path_agrees_and_notices_every_change():
    """One small tensor on the Numba backend: after the first step a step is the kernel call
    alone (``dispatch.TinyPlan``). It must stay the reference's (state bit for bit, parameter
    within the bound above) and fall back whenever something changes: a hyperparameter (new
    value, AMSGrad switched on), a non-finite gradient (refused, nothing changed), a loaded
    state, a gradient of another shape."""
    cfg = {
        "kind": "cprop_adam",
        "lr": 0.01,
        "momentum": 0.0,
        "dampening": 0.0,
        "nesterov": False,
        "weight_decay": 0.0,
        "betas": (0.9, 0.999),
        "eps": 1e-8,
        "amsgrad": False,
        "cprop_beta": 0.999,
        "cprop_c": 1.0,
        "cprop_eps": 1e-8,
        "cprop_cdf": "bft",
    }
    rng = np.random.default_rng(11)
    ref_params, fast_params = [np.array([1.0, -2.0], np.float32)], [np.array([1.0, -2.0], np.float32)]
    ref, fast = build(ref_params, cfg, "numpy"), build(fast_params, cfg, "numba")
    for step in range(40):
        if step == 10:
            for opt in (ref, fast):
                opt.param_groups[0]["lr"] = 0.02
            cfg["lr"] = 0.02
        if step == 20:
            for opt in (ref, fast):
                opt.param_groups[0]["amsgrad"] = True
            cfg["amsgrad"] = True
        if step == 25:
            before = (fast_params[0].copy(), fast.state_dict())
            with pytest.raises(ValueError, match="non-finite"):
                fast.step([np.array([np.nan, 1.0], np.float32)])
            np.testing.assert_array_equal(fast_params[0], before[0])
            assert_states_identical(fast.state_dict(), before[1])
        if step == 30:
            fast.load_state_dict(ref.state_dict())
            fast_params[0][...] = ref_params[0]
        if step == 35:
            with pytest.raises(ValueError, match="shape"):
                fast.step([np.zeros(3, np.float32)])
        grads = [(0.2 + rng.standard_normal(2)).astype(np.float32)]
        updates = unscaled_update(ref, cfg, ref_params, grads)
        ref.step(grads)
        fast.step(grads)
        assert_states_identical(fast.state_dict(), ref.state_dict())
        (tol,) = scale_tolerances(ref, cfg, np.float32)
        error = np.abs(fast_params[0].astype(np.float64) - ref_params[0].astype(np.float64))
        # Every step starts from the same parameters (reset below): the one-step bound.
        assert np.all(error <= parameter_bound(ref_params[0], fast_params[0], updates[0], tol)), step
        fast_params[0][...] = ref_params[0]
    assert fast.kernel_plan.steady is not None  # the steady state was in use


def test_non_contiguous_and_float16_parameters_take_the_numpy_path_alongside_kernel_ones():
    """A strided view and a float16 array in the same optimizer as a float32 array: the
    kernels step the float32 one, the NumPy path the others (bit for bit the reference's),
    and a non-contiguous gradient is copied for the kernels (the float32 parameter's state is
    identical; its value is held to the bound by the tests above)."""
    rng = np.random.default_rng(13)
    base = rng.standard_normal((4, 6)).astype(np.float64)

    def make():
        b = base.copy()
        return b, [b[:, ::2], rng.standard_normal(5).astype(np.float16), np.arange(7, dtype=np.float32)]

    (ref_base, ref_params), (fast_base, fast_params) = make(), make()
    for p, q in zip(fast_params[1:], ref_params[1:]):
        p[...] = q
    ref, fast = CPropAdam(ref_params, backend="numpy"), CPropAdam(fast_params)
    for _ in range(3):
        grads = [rng.standard_normal(p.shape).astype(p.dtype) for p in ref_params]
        strided = np.zeros(14, np.float32)
        strided[::2] = grads[2]
        grads_fast = [grads[0], grads[1], strided[::2]]
        ref.step(grads)
        fast.step(grads_fast)
        np.testing.assert_array_equal(fast_params[0], ref_params[0])
        np.testing.assert_array_equal(fast_params[1], ref_params[1])
        assert_states_identical(fast.state_dict(), ref.state_dict())
    np.testing.assert_array_equal(fast_base[:, 1::2], ref_base[:, 1::2])  # the rest of the base untouched


def test_every_optimizer_with_kernels_is_drawn_or_says_why_not():
    """A catalogue entry on the Numba backend joins the drawn matrix above (a ``draw_id``) or
    states the reason it need not (a skip of ``test_backends``)."""
    for info in CATALOGUE:
        if "numba" in info.backends and info.draw_id is None:
            assert info.skip_reason("test_backends"), f"{info.name}: neither drawn nor skipped with a reason"
