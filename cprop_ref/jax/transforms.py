"""CProp as optax ``GradientTransformation``s: pure ``init`` / ``update`` functions over pytrees,
state as NamedTuples (``docs/jax.md``).

- :func:`cprop`: wrap any transformation; its updates are scaled element-wise by CProp, with
  the statistics taken from the raw gradients the wrapper receives;
- :func:`cprop_sgd`, :func:`cprop_adam`: the specialised optimizers, torch SGD / Adam semantics
  and the hyperparameter names of the NumPy and torch optimizers (``cprop_ref.CPropSGD`` ...);
- :func:`sgd`, :func:`adam`, :func:`adamw`: the base optimizers with torch semantics
  (``cprop_ref.SGD`` ...; optax's own differ in float32, see ``docs/jax.md``).

Each returns updates to add to the parameters (``optax.apply_updates``). Hyperparameters are
checked when the transformation is built, by the NumPy optimizers' validators and with their
messages; ``learning_rate`` may be an optax schedule (a function of the step count). Gradients
are checked against the state when ``update`` is traced: a tree that does not match raises
``ValueError`` naming the leaf. 16-bit parameters (float16, bfloat16) keep every statistic in
float32 and get float32 updates, so that ``optax.apply_updates`` rounds the new parameter once.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax

from ..hyperparams import (
    ADAM_HYPERPARAMS,
    CPROP_HYPERPARAMS,
    SGD_HYPERPARAMS,
    Validator,
    cdf_name,
    check_sgd_group,
    decay_rate,
    flag,
    non_negative,
    validated,
)
from . import scalars
from .functional import (
    adam_delta,
    adam_moments,
    ema,
    scale_factors,
    scale_from_factors,
    scale_update,
    sgd_direction,
    statistics_dtype,
    update_moments,
)

Schedule = Callable[[jax.Array], jax.Array]
LearningRate = float | Schedule

_INT32_MAX = np.iinfo(np.int32).max


# -- states ------------------------------------------------------------------------------


class CPropState(NamedTuple):
    """State of :func:`cprop`: CProp's step count ``count`` (``t``), the EMAs ``m`` and ``v`` of
    the raw gradients, the per-element ``scale`` the last step applied (zeros before the first;
    ``None`` with ``keep_scale=False``), and the wrapped transformation's state ``inner``."""

    count: jax.Array
    m: Any
    v: Any
    scale: Any
    inner: Any


class CPropSGDState(NamedTuple):
    """State of :func:`cprop_sgd`: ``count``, CProp's ``m`` / ``v``, the last ``scale`` (``None``
    with ``keep_scale=False``), SGD's ``momentum_buffer`` (``None`` without momentum) and
    ``momentum_count``, the steps the buffer has taken (0: the next step starts it with the
    direction itself, torch's rule; usually equal to ``count``, kept apart so that a state
    restored without a buffer behaves as torch's)."""

    count: jax.Array
    m: Any
    v: Any
    scale: Any
    momentum_buffer: Any
    momentum_count: jax.Array


class CPropAdamState(NamedTuple):
    """State of :func:`cprop_adam`: ``count``, Adam's ``exp_avg`` / ``exp_avg_sq`` /
    ``max_exp_avg_sq`` (``None`` without AMSGrad), CProp's ``cprop_m`` / ``cprop_v`` (``None``
    where Adam's moment is shared: ``weight_decay == 0`` and ``beta1`` / ``beta2 == cprop_beta``)
    and the last ``scale`` (``None`` with ``keep_scale=False``)."""

    count: jax.Array
    exp_avg: Any
    exp_avg_sq: Any
    max_exp_avg_sq: Any
    cprop_m: Any
    cprop_v: Any
    scale: Any


class SGDState(NamedTuple):
    """State of :func:`sgd`: ``count`` and ``momentum_buffer`` (``None`` without momentum)."""

    count: jax.Array
    momentum_buffer: Any


class AdamState(NamedTuple):
    """State of :func:`adam` / :func:`adamw`: ``count``, ``exp_avg``, ``exp_avg_sq``, ``max_exp_avg_sq``."""

    count: jax.Array
    exp_avg: Any
    exp_avg_sq: Any
    max_exp_avg_sq: Any


def cprop_statistics(state: Any) -> tuple[Any, Any, jax.Array]:
    """``(m, v, t)`` of a CProp state (Adam's moments where :func:`cprop_adam` shares them)."""
    if isinstance(state, CPropAdamState):
        m = state.exp_avg if state.cprop_m is None else state.cprop_m
        v = state.exp_avg_sq if state.cprop_v is None else state.cprop_v
        return m, v, state.count
    if isinstance(state, (CPropState, CPropSGDState)):
        return state.m, state.v, state.count
    raise ValueError(f"cprop_statistics: not a CProp state: {type(state).__name__}")


# -- checks at construction and at trace time ----------------------------------------------


def _learning_rate(value: Any, where: str) -> LearningRate:
    """A schedule (any callable of the step count) or a rate checked as the NumPy optimizers' ``lr``."""
    if callable(value):
        return value
    return validated({"learning_rate": SGD_HYPERPARAMS["lr"]}, {"learning_rate": value}, where)["learning_rate"]


def _rate(learning_rate: LearningRate, count: jax.Array, dtype: np.dtype) -> Any:
    """The learning rate of the step after ``count`` steps (optax's convention for schedules)."""
    return jnp.asarray(learning_rate(count), dtype) if callable(learning_rate) else learning_rate


class _PerDtype:
    """A step's scalars (``1 - beta^t``, Adam's step size, ...), the same for every leaf of a dtype:
    computed once per update and dtype, not once per leaf."""

    def __init__(self, compute: Callable[[np.dtype], Any]) -> None:
        self.compute = compute
        self.cache: dict[np.dtype, Any] = {}

    def __call__(self, dtype: Any) -> Any:
        key = np.dtype(dtype)
        if key not in self.cache:
            self.cache[key] = self.compute(key)
        return self.cache[key]


def _adam_factors(lr: LearningRate, count: jax.Array, t: jax.Array, betas: tuple[float, float]) -> _PerDtype:
    """``(lr, lr / (1 - b1^t), sqrt(1 - b2^t))`` per dtype, the rate of a schedule at ``count``."""

    def compute(dtype: np.dtype) -> tuple[Any, jax.Array, jax.Array]:
        rate = _rate(lr, count, dtype)
        return (rate, *scalars.adam_factors(rate, betas[0], betas[1], t, dtype))

    return _PerDtype(compute)


def _increment(count: jax.Array) -> jax.Array:
    """``count + 1``, saturating at the int32 maximum instead of wrapping to negative ``t``."""
    return jnp.where(count < _INT32_MAX, count + 1, count)


def _leaves(tree: Any, like: Any, what: str, where: str) -> list[Any]:
    """The leaves of ``tree`` after checking it has the structure and shapes of ``like`` (the
    state's view of the parameters); ``ValueError`` names the first leaf that differs."""
    expected = jax.tree.structure(like)
    got = jax.tree.structure(tree)
    if got != expected:
        raise ValueError(f"{where}: the {what} tree {got} does not match the parameters' tree {expected}")
    paths = jax.tree_util.tree_flatten_with_path(like)[0]
    leaves = jax.tree.leaves(tree)
    for (path, ref), leaf in zip(paths, leaves):
        name = jax.tree_util.keystr(path) or "(the single leaf)"
        if jnp.shape(leaf) != jnp.shape(ref):
            raise ValueError(f"{where}: {what} {name} has shape {jnp.shape(leaf)}, the parameter's is {jnp.shape(ref)}")
        if not jnp.issubdtype(jnp.result_type(leaf), jnp.floating):
            raise ValueError(f"{where}: {what} {name} has dtype {jnp.result_type(leaf)}; a floating dtype is needed")
    return leaves


def _param_leaves(params: Any, like: Any, needed: bool, where: str) -> list[Any]:
    if params is None:
        if needed:
            raise ValueError(f"{where}: weight_decay != 0 needs the parameters: call update(grads, state, params)")
        return [None] * len(jax.tree.leaves(like))
    return _leaves(params, like, "parameter", where)


def _zeros(params: Any) -> Any:
    """Zeros shaped like ``params`` in the statistics dtype (float32 for 16-bit leaves); new
    buffers at each call, so that a jitted step may donate every field of the state."""
    return jax.tree.map(lambda p: jnp.zeros(jnp.shape(p), statistics_dtype(jnp.result_type(p))), params)


def _in_place_of(old: jax.Array, new: jax.Array) -> jax.Array:
    """``new``, written over the buffer of ``old`` (a state field the step never reads).

    ``jax.jit`` drops an argument its function does not use, and a dropped argument's buffer,
    donated or not, cannot hold an output: the new scale would get a fresh buffer at each step,
    whose first touch costs a page fault per 4 KiB (about a tenth of a step of 2^24 elements on
    the project's machine). A full-size ``dynamic_update_slice`` uses ``old`` and compiles to
    nothing: XLA replaces it by ``new``, computed straight into the donated buffer. (A restored
    state whose field has another shape or dtype gets ``new`` as it is.)
    """
    if old is None or jnp.shape(old) != new.shape or jnp.result_type(old) != new.dtype:
        return new
    return jax.lax.dynamic_update_slice(old, new, (0,) * new.ndim)


def _scale_leaves(scale: Any, grads: list[Any]) -> list[Any]:
    """The leaves of the state's ``scale`` (``None`` for each without ``keep_scale``)."""
    return [None] * len(grads) if scale is None else jax.tree.leaves(scale)


def _as(x: Any, like: jax.Array) -> Any:
    return None if x is None else jnp.asarray(x).astype(like.dtype)


# -- the wrapper -------------------------------------------------------------------------

#: ``keep_scale``: whether the state holds the scale of the last step (see :func:`cprop`).
KEEP_SCALE: dict[str, Validator] = {"keep_scale": flag}

WRAPPER_HYPERPARAMS: dict[str, Validator] = {
    "beta": decay_rate,
    "c": non_negative,
    "eps": non_negative,
    "cdf": cdf_name,
    **KEEP_SCALE,
}


def cprop(
    inner: optax.GradientTransformation,
    beta: float = 0.999,
    c: float = 1.0,
    eps: float = 1e-8,
    cdf: str = "bft",
    keep_scale: bool = True,
) -> optax.GradientTransformation:
    """Scale the updates of ``inner`` element-wise by CProp: ``update = inner_update * s``, with
    ``s`` from the raw gradients this transformation receives (``docs/algorithm.md``, the wrapper).

    ``beta`` (0.999), ``c`` (1), ``eps`` (1e-8), ``cdf`` (``"bft"``; also ``"normal"``, ``"bfo"``,
    ``"logistic"``) are the authors' names. Where ``s = 0`` or ``inner`` made no update, the update
    is exactly 0 (also where ``inner``'s update is inf or NaN). State: :class:`CPropState`.

    ``keep_scale`` (the three transformations): with ``True`` the state's ``scale`` is the
    per-element scale the last step applied, for study; with ``False`` it is ``None`` and a step
    writes one array less per parameter (on a CPU, where XLA gives each new array its own loop,
    that is 3 of the step's 17 passes over memory, ``docs/jax.md``); ``cprop_scale`` recomputes it.
    """
    if not (callable(getattr(inner, "init", None)) and callable(getattr(inner, "update", None))):
        raise ValueError(f"cprop: inner must be an optax.GradientTransformation, got {type(inner).__name__}")
    hp = validated(WRAPPER_HYPERPARAMS, dict(beta=beta, c=c, eps=eps, cdf=cdf, keep_scale=keep_scale), "cprop")

    def init_fn(params: Any) -> CPropState:
        scale = _zeros(params) if hp["keep_scale"] else None
        return CPropState(jnp.zeros([], jnp.int32), _zeros(params), _zeros(params), scale, inner.init(params))

    def update_fn(updates: Any, state: CPropState, params: Any = None) -> tuple[Any, CPropState]:
        treedef = jax.tree.structure(state.m)
        grads = _leaves(updates, state.m, "gradient", "cprop")
        t = _increment(state.count)
        inner_updates, inner_state = inner.update(updates, state.inner, params)
        proposed = _leaves(inner_updates, state.m, "inner update", "cprop")
        factors = _PerDtype(lambda dtype: scale_factors(hp["beta"], hp["eps"], t, dtype))
        ms, vs, ss, out = [], [], [], []
        for g, m, v, u, old_s in zip(
            grads, jax.tree.leaves(state.m), jax.tree.leaves(state.v), proposed, _scale_leaves(state.scale, grads)
        ):
            m, v = update_moments(m, v, _as(g, m), hp["beta"])
            s = scale_from_factors(m, v, factors(m.dtype), c=hp["c"], eps=hp["eps"], cdf_name=hp["cdf"])
            s = _in_place_of(old_s, s)
            u = _as(u, m)
            out.append(jnp.where((s == 0.0) | (u == 0.0), jnp.zeros_like(u), u * s))
            ms.append(m)
            vs.append(v)
            ss.append(s)
        new = [jax.tree.unflatten(treedef, leaves) for leaves in (out, ms, vs, ss)]
        return new[0], CPropState(t, new[1], new[2], new[3] if hp["keep_scale"] else None, inner_state)

    return optax.GradientTransformation(init_fn, update_fn)


# -- CProp-SGD -----------------------------------------------------------------------------


def cprop_sgd(
    learning_rate: LearningRate,
    momentum: float = 0.0,
    nesterov: bool = False,
    dampening: float = 0.0,
    weight_decay: float = 0.0,
    cprop_beta: float = 0.999,
    cprop_c: float = 1.0,
    cprop_eps: float = 1e-8,
    cprop_cdf: str = "bft",
    keep_scale: bool = True,
) -> optax.GradientTransformation:
    """SGD scaled by CProp (``cprop_ref.CPropSGD``): ``update = -lr * (d * s)``, ``d`` torch SGD's
    direction (momentum, dampening, Nesterov, coupled weight decay), ``s`` from the raw gradient.
    State: :class:`CPropSGDState` (``scale`` ``None`` with ``keep_scale=False``, see :func:`cprop`)."""
    lr = _learning_rate(learning_rate, "cprop_sgd")
    values = dict(
        momentum=momentum,
        dampening=dampening,
        weight_decay=weight_decay,
        nesterov=nesterov,
        cprop_beta=cprop_beta,
        cprop_c=cprop_c,
        cprop_eps=cprop_eps,
        cprop_cdf=cprop_cdf,
        keep_scale=keep_scale,
    )
    table = {k: v for k, v in {**SGD_HYPERPARAMS, **CPROP_HYPERPARAMS, **KEEP_SCALE}.items() if k != "lr"}
    hp = validated(table, values, "cprop_sgd")
    check_sgd_group(hp, "cprop_sgd")
    beta = hp["cprop_beta"]

    def init_fn(params: Any) -> CPropSGDState:
        buf = _zeros(params) if hp["momentum"] != 0.0 else None
        count = jnp.zeros([], jnp.int32)
        scale = _zeros(params) if hp["keep_scale"] else None
        return CPropSGDState(count, _zeros(params), _zeros(params), scale, buf, jnp.zeros([], jnp.int32))

    def update_fn(updates: Any, state: CPropSGDState, params: Any = None) -> tuple[Any, CPropSGDState]:
        treedef = jax.tree.structure(state.m)
        grads = _leaves(updates, state.m, "gradient", "cprop_sgd")
        ps = _param_leaves(params, state.m, hp["weight_decay"] != 0.0, "cprop_sgd")
        bufs = jax.tree.leaves(state.momentum_buffer) if hp["momentum"] != 0.0 else [None] * len(grads)
        t = _increment(state.count)
        factors = _PerDtype(lambda dtype: scale_factors(beta, hp["cprop_eps"], t, dtype))
        out, ms, vs, ss, new_bufs = [], [], [], [], []
        for g, p, m, v, buf, old_s in zip(
            grads, ps, jax.tree.leaves(state.m), jax.tree.leaves(state.v), bufs, _scale_leaves(state.scale, grads)
        ):
            g = _as(g, m)
            m, v = update_moments(m, v, g, beta)
            s = scale_from_factors(
                m, v, factors(m.dtype), c=hp["cprop_c"], eps=hp["cprop_eps"], cdf_name=hp["cprop_cdf"]
            )
            s = _in_place_of(old_s, s)
            d, buf = sgd_direction(
                _as(p, m),
                g,
                buf,
                state.momentum_count == 0,
                momentum=hp["momentum"],
                dampening=hp["dampening"],
                weight_decay=hp["weight_decay"],
                nesterov=hp["nesterov"],
            )
            out.append(-(_rate(lr, state.count, m.dtype) * scale_update(d, s)))
            ms.append(m)
            vs.append(v)
            ss.append(s)
            new_bufs.append(buf)
        new = [jax.tree.unflatten(treedef, leaves) for leaves in (out, ms, vs, ss)]
        buf_tree = jax.tree.unflatten(treedef, new_bufs) if hp["momentum"] != 0.0 else None
        scale = new[3] if hp["keep_scale"] else None
        return new[0], CPropSGDState(t, new[1], new[2], scale, buf_tree, _increment(state.momentum_count))

    return optax.GradientTransformation(init_fn, update_fn)


# -- CProp-Adam ----------------------------------------------------------------------------


def cprop_adam(
    learning_rate: LearningRate = 1e-3,
    betas: tuple[float, float] = (0.9, 0.999),
    eps: float = 1e-8,
    weight_decay: float = 0.0,
    amsgrad: bool = False,
    cprop_beta: float = 0.999,
    cprop_c: float = 1.0,
    cprop_eps: float = 1e-8,
    cprop_cdf: str = "bft",
    keep_scale: bool = True,
) -> optax.GradientTransformation:
    """Adam scaled by CProp (``cprop_ref.CPropAdam``): ``update = delta * s``, ``delta`` torch Adam's
    update (coupled weight decay, optional AMSGrad), ``s`` from the raw gradient.

    With ``weight_decay == 0`` and ``beta1 == cprop_beta`` (``beta2 == cprop_beta``, as by default)
    Adam's first (second) moment *is* CProp's ``m`` (``v``) and is stored once. State:
    :class:`CPropAdamState`.
    """
    lr = _learning_rate(learning_rate, "cprop_adam")
    values = dict(
        betas=betas,
        eps=eps,
        weight_decay=weight_decay,
        amsgrad=amsgrad,
        cprop_beta=cprop_beta,
        cprop_c=cprop_c,
        cprop_eps=cprop_eps,
        cprop_cdf=cprop_cdf,
        keep_scale=keep_scale,
    )
    table = {k: v for k, v in {**ADAM_HYPERPARAMS, **CPROP_HYPERPARAMS, **KEEP_SCALE}.items() if k != "lr"}
    hp = validated(table, values, "cprop_adam")
    beta = hp["cprop_beta"]
    raw = hp["weight_decay"] == 0.0
    share_m, share_v = raw and hp["betas"][0] == beta, raw and hp["betas"][1] == beta

    def init_fn(params: Any) -> CPropAdamState:
        return CPropAdamState(
            jnp.zeros([], jnp.int32),
            _zeros(params),
            _zeros(params),
            _zeros(params) if hp["amsgrad"] else None,
            None if share_m else _zeros(params),
            None if share_v else _zeros(params),
            _zeros(params) if hp["keep_scale"] else None,
        )

    def update_fn(updates: Any, state: CPropAdamState, params: Any = None) -> tuple[Any, CPropAdamState]:
        like = state.exp_avg
        treedef = jax.tree.structure(like)
        n = len(jax.tree.leaves(like))
        grads = _leaves(updates, like, "gradient", "cprop_adam")
        ps = _param_leaves(params, like, not raw, "cprop_adam")
        t = _increment(state.count)
        factors = _PerDtype(lambda dtype: scale_factors(beta, hp["cprop_eps"], t, dtype))
        adam_factors = _adam_factors(lr, state.count, t, hp["betas"])

        def leaves(tree: Any) -> list[Any]:
            return [None] * n if tree is None else jax.tree.leaves(tree)

        columns: list[list[Any]] = [[] for _ in range(7)]
        for g, p, m1, v2, vmax, cm, cv, old_s in zip(
            grads,
            ps,
            leaves(state.exp_avg),
            leaves(state.exp_avg_sq),
            leaves(state.max_exp_avg_sq),
            leaves(state.cprop_m),
            leaves(state.cprop_v),
            _scale_leaves(state.scale, grads),
        ):
            g = _as(g, m1)
            d = g + hp["weight_decay"] * _as(p, m1) if not raw else g
            m1, v2, vmax = adam_moments(m1, v2, vmax, d, betas=hp["betas"], amsgrad=hp["amsgrad"])
            second = vmax if hp["amsgrad"] else v2
            _, step_size, bc2_sqrt = adam_factors(m1.dtype)
            delta = adam_delta(m1, second, step_size, bc2_sqrt, eps=hp["eps"])
            m = m1 if share_m else ema(cm, g, beta)
            v = v2 if share_v else ema(cv, g * g, beta)
            s = scale_from_factors(
                m, v, factors(m.dtype), c=hp["cprop_c"], eps=hp["cprop_eps"], cdf_name=hp["cprop_cdf"]
            )
            s = _in_place_of(old_s, s)
            for column, value in zip(columns, (scale_update(delta, s), m1, v2, vmax, m, v, s)):
                column.append(value)
        out, m1s, v2s, vmaxs, ms, vs, ss = columns

        def tree(values: list[Any], keep: bool = True) -> Any:
            return jax.tree.unflatten(treedef, values) if keep else None

        new_state = CPropAdamState(
            t,
            tree(m1s),
            tree(v2s),
            tree(vmaxs, hp["amsgrad"]),
            tree(ms, not share_m),
            tree(vs, not share_v),
            tree(ss, hp["keep_scale"]),
        )
        return tree(out), new_state

    return optax.GradientTransformation(init_fn, update_fn)


# -- the base optimizers with torch semantics (cprop_ref.SGD, Adam, AdamW) -------------------


def sgd(
    learning_rate: LearningRate,
    momentum: float = 0.0,
    nesterov: bool = False,
    dampening: float = 0.0,
    weight_decay: float = 0.0,
) -> optax.GradientTransformation:
    """torch SGD (``cprop_ref.SGD``): ``update = -lr d`` (momentum, dampening, Nesterov, coupled
    weight decay; optax's ``sgd`` has no dampening nor weight decay). State: :class:`SGDState`."""
    lr = _learning_rate(learning_rate, "sgd")
    table = {k: v for k, v in SGD_HYPERPARAMS.items() if k != "lr"}
    values = dict(momentum=momentum, dampening=dampening, weight_decay=weight_decay, nesterov=nesterov)
    hp = validated(table, values, "sgd")
    check_sgd_group(hp, "sgd")

    def init_fn(params: Any) -> SGDState:
        return SGDState(jnp.zeros([], jnp.int32), _zeros(params) if hp["momentum"] != 0.0 else None)

    def update_fn(updates: Any, state: SGDState, params: Any = None) -> tuple[Any, SGDState]:
        like = _zeros(updates) if state.momentum_buffer is None else state.momentum_buffer
        treedef = jax.tree.structure(like)
        grads = _leaves(updates, like, "gradient", "sgd")
        ps = _param_leaves(params, like, hp["weight_decay"] != 0.0, "sgd")
        out, bufs = [], []
        for g, p, buf, z in zip(
            grads, ps, jax.tree.leaves(state.momentum_buffer) or [None] * len(grads), jax.tree.leaves(like)
        ):
            g = _as(g, z)
            d, buf = sgd_direction(
                _as(p, z),
                g,
                buf,
                state.count == 0,
                momentum=hp["momentum"],
                dampening=hp["dampening"],
                weight_decay=hp["weight_decay"],
                nesterov=hp["nesterov"],
            )
            out.append(-(_rate(lr, state.count, z.dtype) * d))
            bufs.append(buf)
        buf_tree = jax.tree.unflatten(treedef, bufs) if hp["momentum"] != 0.0 else None
        return jax.tree.unflatten(treedef, out), SGDState(_increment(state.count), buf_tree)

    return optax.GradientTransformation(init_fn, update_fn)


def _torch_adam(
    learning_rate: LearningRate, betas: Any, eps: float, weight_decay: float, amsgrad: bool, decoupled: bool, where: str
):
    lr = _learning_rate(learning_rate, where)
    table = {k: v for k, v in ADAM_HYPERPARAMS.items() if k != "lr"}
    hp = validated(table, dict(betas=betas, eps=eps, weight_decay=weight_decay, amsgrad=amsgrad), where)
    wd = hp["weight_decay"]

    def init_fn(params: Any) -> AdamState:
        vmax = _zeros(params) if hp["amsgrad"] else None
        return AdamState(jnp.zeros([], jnp.int32), _zeros(params), _zeros(params), vmax)

    def update_fn(updates: Any, state: AdamState, params: Any = None) -> tuple[Any, AdamState]:
        like = state.exp_avg
        treedef = jax.tree.structure(like)
        n = len(jax.tree.leaves(like))
        grads = _leaves(updates, like, "gradient", where)
        ps = _param_leaves(params, like, wd != 0.0, where)
        t = _increment(state.count)
        vmaxs = jax.tree.leaves(state.max_exp_avg_sq) if hp["amsgrad"] else [None] * n
        adam_factors = _adam_factors(lr, state.count, t, hp["betas"])
        columns: list[list[Any]] = [[] for _ in range(4)]
        for g, p, m1, v2, vmax in zip(
            grads, ps, jax.tree.leaves(state.exp_avg), jax.tree.leaves(state.exp_avg_sq), vmaxs
        ):
            g, p = _as(g, m1), _as(p, m1)
            rate, step_size, bc2_sqrt = adam_factors(m1.dtype)
            d = g + wd * p if (wd != 0.0 and not decoupled) else g
            m1, v2, vmax = adam_moments(m1, v2, vmax, d, betas=hp["betas"], amsgrad=hp["amsgrad"])
            delta = adam_delta(m1, vmax if hp["amsgrad"] else v2, step_size, bc2_sqrt, eps=hp["eps"])
            if decoupled and wd != 0.0:
                # torch AdamW: p <- p (1 - lr wd) + delta, as an update: -(lr wd) p + delta
                delta = -(rate * wd) * p + delta
            for column, value in zip(columns, (delta, m1, v2, vmax)):
                column.append(value)
        out, m1s, v2s, vmaxs = (jax.tree.unflatten(treedef, c) for c in columns)
        return out, AdamState(t, m1s, v2s, vmaxs if hp["amsgrad"] else None)

    return optax.GradientTransformation(init_fn, update_fn)


def adam(
    learning_rate: LearningRate = 1e-3,
    betas: tuple[float, float] = (0.9, 0.999),
    eps: float = 1e-8,
    weight_decay: float = 0.0,
    amsgrad: bool = False,
) -> optax.GradientTransformation:
    """torch Adam (``cprop_ref.Adam``): coupled weight decay, optional AMSGrad, the bias
    corrections exact and rounded once (optax's ``adam`` computes them in the parameters' dtype).
    State: :class:`AdamState`."""
    return _torch_adam(learning_rate, betas, eps, weight_decay, amsgrad, False, "adam")


def adamw(
    learning_rate: LearningRate = 1e-3,
    betas: tuple[float, float] = (0.9, 0.999),
    eps: float = 1e-8,
    weight_decay: float = 1e-2,
    amsgrad: bool = False,
) -> optax.GradientTransformation:
    """torch AdamW (``cprop_ref.AdamW``): ``p <- p (1 - lr wd)`` and Adam's step, as one update
    ``-(lr wd) p + delta``. State: :class:`AdamState`."""
    return _torch_adam(learning_rate, betas, eps, weight_decay, amsgrad, True, "adamw")
