"""Edge cases by construction: explicit examples that every run of a check includes, whatever
the seed (hypothesis's explicit phase runs them before the generated ones).

Random draws reach an edge with some probability; a port that is wrong only at that edge is
then caught only with luck. Every edge class of ``docs/algorithm.md`` ("Limits and edge cases") has a case here, so that each named
broken port of the test-suite is caught under any seed (``docs/conformance.md``, "Edges by
construction"):

- ``beta = 0`` with squares that overflow, then more steps (``0 * inf``); CProp-Adam with
  ``cprop_beta = beta2 = 0`` (the shared second moment) the same way;
- a stream past ``t = 1000`` (the closed loop) and injected states at ``t = 1000`` and ``10^6``
  with ``beta`` near 1, where the bias correction is far from 1;
- the first momentum step with dampening (torch applies none there), Nesterov, AMSGrad with a
  shrinking second moment;
- ``c = 0``, ``eps = 0`` (``se = 0``: a certain sign, or ``m_hat = 0``), ``n = 1``;
- each CDF's saturation (``|z|`` large, ``c`` up to 100);
- weight decay of 1 and 2; Adam's betas equal to ``cprop_beta`` and to ``1 - cprop_beta``
  (the moment-sharing paths);
- a variance of exactly 1.0 (injected), 16-bit zero gradients, an update that overflows to
  ``inf`` where the scale is 0 (the ``s == 0`` guard) and where it is not.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from .cases import ClosedLoopCase, InjectedCase, OpenLoopCase, ResumeCase
from .config import PortConfig
from .dtypes import to_storage
from .usage import GroupRefusalCase, GroupsCase, OptionRefusalCase, RefusalCase, invalid_variants

_SGD = dict(lr=0.1, momentum=0.0, dampening=0.0, weight_decay=0.0, nesterov=False)
_ADAM = dict(lr=0.01, betas=(0.9, 0.999), eps=1e-8, weight_decay=0.0, amsgrad=False)


def _cp(beta: float = 0.9, c: float = 1.0, eps: float = 1e-8, cdf: str = "bft", prefix: str = "cprop_") -> dict:
    return {f"{prefix}beta": beta, f"{prefix}c": c, f"{prefix}eps": eps, f"{prefix}cdf": cdf}


def sgd(dtype: str = "float32", cprop: dict | None = None, **base: Any) -> PortConfig:
    return PortConfig("CPropSGD", {**_cp(**(cprop or {})), **_SGD, **base}, dtype)


def adam(dtype: str = "float32", cprop: dict | None = None, **base: Any) -> PortConfig:
    return PortConfig("CPropAdam", {**_cp(**(cprop or {})), **_ADAM, **base}, dtype)


def wrapper(base_name: str, dtype: str = "float32", cprop: dict | None = None, **base: Any) -> PortConfig:
    defaults = _SGD if base_name == "SGD" else _ADAM
    return PortConfig("CProp", _cp(prefix="", **(cprop or {})), dtype, base_name, {**defaults, **base})


def _stream(values: list[list[float]], dtype: str, shape: tuple[int, ...] = (3,)) -> list[list[np.ndarray | None]]:
    """One tensor of ``shape``: step ``i`` gets ``values[i]`` (broadcast or elementwise)."""
    return [[to_storage(np.broadcast_to(np.asarray(row, dtype=np.float64), shape), dtype)] for row in values]


def _params(dtype: str, shape: tuple[int, ...] = (3,)) -> list[np.ndarray]:
    return [to_storage(np.linspace(-0.75, 0.5, int(np.prod(shape))).reshape(shape), dtype)]


_BIG = 1.0e20  # its square overflows float32 (and bfloat16); float64 needs 1e160
_FLIPS = [[1.0, -2.0, 0.5], [-1.0, 2.0, 0.25], [1.5, -0.5, -1.0], [-0.5, 1.0, 2.0]]
_NEARLY_CONSTANT = [[1.0, -1.0, 0.001], [1.001, -0.999, 0.001], [0.999, -1.001, 0.001], [1.0, -1.0, 0.001]]


def open_loop_edges() -> list[OpenLoopCase]:
    cases: list[OpenLoopCase] = []

    def add(config: PortConfig, rows: list[list[float]], shape: tuple[int, ...] = (3,)) -> None:
        cases.append(OpenLoopCase(config, _params(config.dtype, shape), _stream(rows, config.dtype, shape)))

    overflow = [[_BIG, -_BIG, 1.0], [-_BIG, 1.0, -1.0], [1.0, _BIG, 2.0]]
    add(sgd(cprop=dict(beta=0.0)), overflow)
    add(sgd("float64", cprop=dict(beta=0.0)), [[1e160, -1e160, 1.0], [-1e160, 1.0, -1.0], [1.0, 1e160, 2.0]])
    add(adam(cprop=dict(beta=0.0), betas=(0.5, 0.0)), overflow)  # cprop_beta = beta2 = 0: shared v
    add(adam(cprop=dict(beta=0.0), betas=(0.0, 0.9)), overflow)  # cprop_beta = beta1 = 0: shared m
    add(wrapper("SGD", cprop=dict(beta=0.0)), overflow)
    # the first momentum step takes no dampening; then Nesterov
    add(sgd(cprop=dict(c=5.0), momentum=0.9, dampening=0.5), _FLIPS)
    add(sgd(cprop=dict(c=5.0), momentum=0.5, nesterov=True), _FLIPS)
    add(wrapper("SGD", cprop=dict(c=5.0), momentum=0.9, dampening=0.5), _FLIPS)
    add(wrapper("SGD", cprop=dict(c=5.0), momentum=0.5, nesterov=True), _FLIPS)
    # AMSGrad: a second moment that shrinks after a large gradient
    amsgrad_rows = [[10.0, -10.0, 5.0], [0.1, 0.1, -0.1], [0.2, -0.1, 0.1]]
    add(adam(cprop=dict(c=5.0), amsgrad=True), amsgrad_rows)
    add(wrapper("Adam", cprop=dict(c=5.0), amsgrad=True), amsgrad_rows)
    # c = 0; eps = 0 with a certain sign (se = 0) and with m_hat = 0; n = 1 (beta = 0)
    add(sgd(cprop=dict(c=0.0, eps=0.0)), _FLIPS)
    add(sgd(cprop=dict(eps=0.0, c=3.0)), [[1.0, -2.0, 0.0]] * 3)
    add(sgd(cprop=dict(eps=0.0, c=3.0, cdf="normal")), [[0.0, 0.0, 0.0], [1.0, -1.0, 0.0], [0.0, 0.0, 0.0]])
    add(sgd(cprop=dict(beta=0.0, eps=1e-4, c=3.0)), _FLIPS)
    # a tiny beta: n - 1 = 1e-300 is 0 in float32, and a zero variance (a constant gradient)
    # over it must stay 0, not 0/0 (with eps = 0 nothing else keeps the denominator positive)
    add(sgd(cprop=dict(beta=1e-300, eps=0.0, c=3.0)), [[1.0, -2.0, 0.5]] * 3)
    # each CDF saturated (a nearly constant gradient: |z| large) and in its steep part
    for cdf in ("normal", "bft", "bfo", "logistic"):
        add(sgd("float64", cprop=dict(beta=0.9, c=100.0, eps=0.0, cdf=cdf)), _NEARLY_CONSTANT)
        add(sgd("float64", cprop=dict(beta=0.5, c=0.7, eps=1e-8, cdf=cdf)), _FLIPS)
    # weight decay of 1 and 2 (coupled, decoupled, the wrapper's SGD)
    for wd in (1.0, 2.0):
        add(sgd(cprop=dict(c=3.0), weight_decay=wd), _FLIPS)
        add(adam(cprop=dict(beta=0.9, c=3.0), weight_decay=wd), _FLIPS)
        add(wrapper("AdamW", cprop=dict(c=3.0), weight_decay=wd), _FLIPS)
        add(wrapper("SGD", cprop=dict(c=3.0), weight_decay=wd, momentum=0.5), _FLIPS)
    # Adam's betas equal to cprop_beta, and to 1 - cprop_beta (the moment-sharing switches)
    for beta1, beta2, beta in ((0.9, 0.999, 0.9), (0.9, 0.999, 0.999), (0.1, 0.999, 0.9), (0.9, 0.1, 0.9),
                               (0.5, 0.5, 0.5), (0.25, 0.75, 0.75), (0.75, 0.25, 0.75)):  # fmt: skip
        add(adam(cprop=dict(beta=beta, c=3.0), betas=(beta1, beta2)), _FLIPS)
    # an update past the largest value: inf where s = 0 must stay no update (the s == 0 guard)
    huge = [[3.0e38, -3.0e38, 3.0e38], [3.0e38, -3.0e38, 3.0e38]]
    for c in (0.0, 1.0):
        add(sgd(cprop=dict(c=c), lr=1.0, momentum=0.9, nesterov=True), huge)
        add(wrapper("SGD", cprop=dict(c=c), lr=1.0, momentum=0.9, nesterov=True), huge)
    # the bias-corrected mean of the largest gradients rounds past the range at beta = 0.7,
    # t = 2: clamped to the largest value, as the reference (never inf from finite gradients)
    top = float(np.finfo(np.float32).max)
    add(sgd(cprop=dict(beta=0.7, c=3.0)), [[top, -top, 1.0]] * 3)
    # CPropSGD's update past the largest value, then more steps from an infinite parameter:
    # without weight decay the direction is the gradient (0 * inf would be NaN)
    # (squares that stay finite, so that the scale is not 0 there: lr 1e20 times g 1e19)
    config = sgd(cprop=dict(beta=0.5, c=3.0), lr=1.0e20)
    params = [to_storage(np.array([-3.0e38, 3.0e38, 1.0]), config.dtype)]
    rows = [[1.0e19, -1.0e19, 1.0], [1.0e19, -1.0e19, 1.0], [0.5e19, -0.5e19, 1.0]]
    cases.append(OpenLoopCase(config, params, _stream(rows, config.dtype)))
    # CPropAdam's update past the largest value (lr 1e38 near 3e38; beta1 = 0 keeps the step
    # size lr / (1 - beta1^t) inside float32, as a fused addcdiv needs), then more steps from an
    # infinite parameter: without weight decay the direction is the gradient (0 * inf is NaN)
    for amsgrad in (False, True):
        config = adam(cprop=dict(beta=0.5, c=1.0), lr=1e38, betas=(0.0, 0.999), amsgrad=amsgrad)
        params = [to_storage(np.array([3.0e38, -3.0e38, 1.0]), config.dtype)]
        rows = [[-1.0, 1.0, -1.0], [-1.0, 1.0, -1.0], [1.0, 1.0, 1.0]]
        cases.append(OpenLoopCase(config, params, _stream(rows, config.dtype)))
    # an update with an infinite (then NaN) element beside finite ones whose scale is below 1
    # (an infinite parameter under weight decay): the finite elements are still scaled by s
    # (a multi-tensor path that guards the whole tensor must not treat them otherwise)
    for config in (
        sgd(cprop=dict(beta=0.5, c=3.0), weight_decay=0.5),
        adam(cprop=dict(beta=0.5, c=3.0), weight_decay=0.5),
        wrapper("SGD", cprop=dict(beta=0.5, c=3.0), weight_decay=0.5),
    ):
        params = [to_storage(np.array([np.inf, 1.0, -2.0]), config.dtype)]
        cases.append(OpenLoopCase(config, params, _stream(_FLIPS, config.dtype)))
    # one element's squares overflow (v = inf: its standard error is inf) beside elements whose
    # standard error is small: theirs must still be sqrt(ratio) + eps, eps not lost in a guard
    beside = [[1e20, 1e-3, 2e-3], [-1e20, -1e-3, -1.5e-3], [1e20, 2e-3, 1e-3]]
    add(sgd(cprop=dict(beta=0.9, c=1.0, eps=1e-6)), beside)
    add(adam(cprop=dict(beta=0.9, c=1.0, eps=1e-6)), beside)
    # a zero variance (powers of 2: every moment exact) with eps = 1e-8: z = -g / eps about -1e14,
    # whose cube overflows float32; the logistic CDF has no cubic term, and none may be added
    # (0 * inf is NaN)
    add(sgd(cprop=dict(beta=0.5, c=1.0, cdf="logistic")), [[2.0**20] * 3] * 3)
    # torch.optim.Adam's first moment in lerp form overflows (|g - m| > max) where the
    # reference's weighted sum does not: the framework's difference, counted apart
    add(
        wrapper("Adam", cprop=dict(beta=0.0, c=3.0), betas=(0.0, 0.9)),
        [[3e38, -1.0, 1.0], [-3e38, 1.0, 1.0], [1.0] * 3],
    )
    # 16-bit: zero gradients (eps underflows in 16 bits), subnormal float16 gradients
    for dtype in ("float16", "bfloat16"):
        zeros = [[0.0, 0.0, 0.0]] * 3
        add(sgd(dtype, cprop=dict(c=3.0)), zeros)
        add(adam(dtype, cprop=dict(beta=0.9, c=3.0)), zeros)
        add(wrapper("SGD", dtype, cprop=dict(c=3.0), momentum=0.9), zeros)
        add(sgd(dtype, cprop=dict(c=5.0, beta=0.5)), [[1e-7, -3e-6, 2e-5], [2e-7, 3e-6, -2e-5], [1e-7, -3e-6, 2e-5]])
        add(adam(dtype, cprop=dict(c=5.0, beta=0.9)), _FLIPS)
    # layouts: a transposed 2-d and a channels-last 4-d parameter, several views of one buffer
    rng = np.random.default_rng(12)
    for dtype in ("float32", "float16"):
        params = [to_storage(rng.standard_normal(s), dtype) for s in ((2, 3), (2, 3, 2, 2), (3,))]
        grads = [[to_storage(rng.standard_normal(p.shape), dtype) for p in params] for _ in range(3)]
        for layouts in (["transposed", "channels_last", "strided"], ["shared", "shared", "shared"]):
            cases.append(OpenLoopCase(sgd(dtype, cprop=dict(c=3.0)), params, grads, layouts))
    return cases


def injected_edges() -> list[InjectedCase]:
    cases: list[InjectedCase] = []

    def state(config: PortConfig, m: float, v: float, t: int, **extra: float) -> dict[str, Any]:
        shape = (3,)
        dtype = np.float32 if config.dtype in ("float16", "bfloat16") else config.np_dtype
        out: dict[str, Any] = {"step": t, "cprop_m": np.full(shape, m, dtype), "cprop_v": np.full(shape, v, dtype)}
        out.update({k: np.full(shape, x, dtype) for k, x in extra.items()})
        return out

    def add(config: PortConfig, st: dict[str, Any], g: list[float]) -> None:
        params = _params(config.dtype)
        cases.append(InjectedCase(config, params, [st], [to_storage(np.asarray(g), config.dtype)]))

    # bias correction far from 1 at t = 1000 and 10^6 (beta near 1): m_hat one standard error
    # from 0, where the scale is steep (c = 1), so a port that drops the correction moves it
    for beta, t in ((0.9999, 1000), (1.0 - 1e-7, 10**6), (0.999, 1000)):
        b = 1.0 - beta**t
        n = b / (1.0 - beta)
        m_hat = 0.01
        v_hat = m_hat * m_hat * n
        for dtype in ("float32", "float64"):
            config = sgd(dtype, cprop=dict(beta=beta, c=1.0))
            add(config, state(config, m_hat * b, v_hat * b, t), [0.01, -0.01, 0.0])
    # a variance of exactly 1.0 after the step: beta = 0.5, t = 1000 (b = 1), m = 1, v = 3, g = 1
    for cdf in ("normal", "bft"):
        config = sgd("float64", cprop=dict(beta=0.5, c=1.0, eps=0.0, cdf=cdf))
        add(config, state(config, 1.0, 3.0, 1000), [1.0, 1.0, 1.0])
    # CProp-Adam's shared moments from an injected state, and the base's own state
    config = adam(cprop=dict(beta=0.9, c=3.0), betas=(0.9, 0.999))
    add(config, state(config, 0.2, 0.5, 1000, exp_avg=0.2, exp_avg_sq=0.7), [1.0, -1.0, 0.5])
    config = adam(cprop=dict(beta=0.9, c=3.0), betas=(0.5, 0.9))  # the shared second moment
    add(config, state(config, 0.2, 0.5, 1000, exp_avg=-0.1, exp_avg_sq=0.5), [1.0, -1.0, 0.5])
    config = sgd(cprop=dict(beta=0.9, c=3.0), momentum=0.9, dampening=0.5)
    add(config, state(config, 0.2, 0.5, 1000, momentum_buffer=-0.3), [1.0, -1.0, 0.5])
    # an update past the largest value from a momentum buffer near it: inf, or no update where s = 0
    for c in (0.0, 3.0):
        config = sgd(cprop=dict(beta=0.9, c=c), lr=10.0, momentum=0.9)
        add(config, state(config, 0.2, 0.5, 10, momentum_buffer=3.0e38), [1.0, -1.0, 0.5])
    return cases


def closed_loop_edges() -> list[ClosedLoopCase]:
    """A run past t = 1000 with beta near 1 (the bias correction still far from 1)."""
    rng = np.random.default_rng(1000)
    config = sgd(cprop=dict(beta=0.9999, c=3.0), lr=0.01)
    noises = 0.5 * rng.standard_normal((1005, 2))
    return [ClosedLoopCase(config, to_storage(np.array([1.0, -2.0]), config.dtype), np.array([1.0, 3.0]), noises)]


def resume_edges() -> list[ResumeCase]:
    """Save and restore each optimizer family once with its whole state in use, 16-bit included."""
    cases = []
    configs = [
        sgd(cprop=dict(beta=0.9, c=3.0), momentum=0.9),
        adam(cprop=dict(beta=0.5, c=3.0), amsgrad=True),
        adam(cprop=dict(beta=0.9, c=3.0), betas=(0.9, 0.999)),
        wrapper("SGD", cprop=dict(beta=0.9, c=3.0), momentum=0.9),
        wrapper("Adam", cprop=dict(beta=0.9, c=3.0), amsgrad=True),
        sgd("float16", cprop=dict(beta=0.9, c=3.0), momentum=0.9),
        adam("bfloat16", cprop=dict(beta=0.9, c=3.0)),
    ]
    for config in configs:
        cases.append(ResumeCase(config, _params(config.dtype), _stream(_FLIPS, config.dtype), 2))
    return cases


def refusal_edges() -> list[RefusalCase | GroupRefusalCase | OptionRefusalCase]:
    """Every invalid value of :data:`.usage.INVALID_VALUES` (and combination) in each of the five
    optimizers, float32 (the refusal does not depend on the dtype; the generated cases draw it);
    each of them in the second of two parameter groups of the two optimizers of the port's own;
    and the port's own invalid options in each of the five."""
    configs = [sgd(momentum=0.9), adam(), wrapper("SGD"), wrapper("Adam"), wrapper("AdamW", weight_decay=0.01)]
    cases: list[RefusalCase | GroupRefusalCase | OptionRefusalCase] = [
        RefusalCase(invalid, _params(config.dtype), change)
        for config in configs
        for invalid, change in invalid_variants(config)
    ]
    cases += [
        GroupRefusalCase(config, invalid, [_params(config.dtype, (2, 3)), _params(config.dtype)], change)
        for config in configs
        if config.optimizer != "CProp"
        for invalid, change in invalid_variants(config)
    ]
    cases += [OptionRefusalCase(config, _params(config.dtype)) for config in configs]
    return cases


def groups_edges() -> list[GroupsCase]:
    """Each optimizer family over two groups whose hyperparameters differ where the update does:
    the learning rate, CProp's ``beta`` and CDF, momentum, Adam's betas, weight decay; a 16-bit pair."""
    pairs = [
        (sgd(cprop=dict(beta=0.9, c=3.0), momentum=0.9), sgd(cprop=dict(beta=0.5, c=1.0, cdf="normal"), lr=0.5)),
        (adam(cprop=dict(beta=0.9, c=3.0)), adam(cprop=dict(beta=0.0, c=1.0, cdf="logistic"), betas=(0.5, 0.9))),
        (adam(cprop=dict(beta=0.9)), adam(cprop=dict(beta=0.9), amsgrad=True, weight_decay=0.5, lr=0.1)),
        (
            wrapper("SGD", cprop=dict(beta=0.9, c=3.0)),
            wrapper("SGD", cprop=dict(beta=0.9, c=3.0), lr=0.5, momentum=0.9),
        ),
        (
            wrapper("Adam", cprop=dict(beta=0.9, c=3.0)),
            wrapper("Adam", cprop=dict(beta=0.9, c=3.0), lr=0.1, betas=(0.5, 0.9)),
        ),
        (
            sgd("float16", cprop=dict(beta=0.9, c=3.0)),
            sgd("float16", cprop=dict(beta=0.5, c=3.0), lr=0.5, weight_decay=1.0),
        ),
    ]
    cases = []
    for first, second in pairs:
        stream = _stream(_FLIPS, first.dtype)
        other = _stream([[2.0 * x for x in row] for row in reversed(_FLIPS)], first.dtype, (2, 3))
        grads = [row + other_row for row, other_row in zip(stream, other)]
        cases.append(GroupsCase([first, second], [_params(first.dtype), _params(first.dtype, (2, 3))], grads))
    return cases


def edge_cases(check: str, dtypes: tuple[str, ...]) -> list[Any]:
    """The explicit cases of ``check`` whose dtype is among ``dtypes``."""
    make = {
        "open_loop": open_loop_edges,
        "injected": injected_edges,
        "closed_loop": closed_loop_edges,
        "resume": resume_edges,
        "refusals": refusal_edges,
        "groups": groups_edges,
    }[check]
    return [case for case in make() if case.config.dtype in dtypes]
