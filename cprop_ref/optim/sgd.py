"""SGD and CProp-SGD (torch.optim.SGD semantics)."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any, ClassVar

import numpy as np

from ..functional import sgd_direction
from ..hyperparams import CPROP_HYPERPARAMS, SGD_HYPERPARAMS, Validator, accepting_runs, check_sgd_group
from ..kernels import DEFAULT_BACKEND
from ..scale import cprop_step, scale_update
from .base import Optimizer, ParamState, Update
from .cprop_mixin import CPropStatsMixin


class SGD(Optimizer):
    """Stochastic gradient descent with momentum, dampening, Nesterov and weight decay.

    ``d = g + wd * param``; with momentum ``buf <- d`` (first step) or
    ``buf <- momentum * buf + (1 - dampening) * d``, then ``d <- d + momentum * buf``
    (Nesterov) or ``d <- buf``; ``param <- param - lr * d``.
    """

    hyperparams: ClassVar[dict[str, Validator]] = accepting_runs(SGD_HYPERPARAMS)
    state_schema: ClassVar[dict[str, str]] = {"momentum_buffer": "optional_array"}
    kernel_family: ClassVar[str | None] = "sgd"

    def __init__(
        self,
        params: Iterable[Any],
        lr: float,
        momentum: float = 0.0,
        dampening: float = 0.0,
        weight_decay: float = 0.0,
        nesterov: bool = False,
        *,
        nonfinite: str = "raise",
        backend: str = DEFAULT_BACKEND,
    ) -> None:
        defaults = dict(lr=lr, momentum=momentum, dampening=dampening, weight_decay=weight_decay, nesterov=nesterov)
        super().__init__(params, defaults, nonfinite=nonfinite, backend=backend)

    def _check_group(self, group: dict[str, Any], where: str) -> None:
        check_sgd_group(group, where)

    def _direction(
        self, p: np.ndarray, g: np.ndarray, state: ParamState, group: dict[str, Any]
    ) -> tuple[np.ndarray, np.ndarray | None]:
        return sgd_direction(
            p,
            g,
            state.get("momentum_buffer"),
            momentum=group["momentum"],
            dampening=group["dampening"],
            weight_decay=group["weight_decay"],
            nesterov=group["nesterov"],
        )

    def _compute(self, param: np.ndarray, grad: np.ndarray, state: ParamState, group: dict[str, Any]) -> Update:
        p, g = self._as_compute(param, grad)
        d, buf = self._direction(p, g, state, group)
        return p - group["lr"] * d, {"momentum_buffer": buf}


class CPropSGD(CPropStatsMixin, SGD):
    """SGD whose update is scaled element-wise by CProp: ``param <- param - lr * (d * s)``.

    ``s`` comes from the raw gradient (before weight decay and momentum); ``d`` is SGD's
    direction. ``cprop_beta``, ``cprop_c``, ``cprop_eps``, ``cprop_cdf`` as in ``docs/algorithm.md``.
    """

    hyperparams: ClassVar[dict[str, Validator]] = accepting_runs({**SGD_HYPERPARAMS, **CPROP_HYPERPARAMS})
    state_schema: ClassVar[dict[str, str]] = {
        "step": "count",
        "cprop_m": "array",
        "cprop_v": "array",
        "momentum_buffer": "optional_array",
    }
    kernel_family: ClassVar[str | None] = "cprop_sgd"

    def __init__(
        self,
        params: Iterable[Any],
        lr: float,
        cprop_beta: float = 0.999,
        cprop_c: float = 1.0,
        cprop_eps: float = 1e-8,
        cprop_cdf: str = "bft",
        momentum: float = 0.0,
        dampening: float = 0.0,
        weight_decay: float = 0.0,
        nesterov: bool = False,
        *,
        nonfinite: str = "raise",
        backend: str = DEFAULT_BACKEND,
    ) -> None:
        defaults = dict(
            lr=lr,
            momentum=momentum,
            dampening=dampening,
            weight_decay=weight_decay,
            nesterov=nesterov,
            cprop_beta=cprop_beta,
            cprop_c=cprop_c,
            cprop_eps=cprop_eps,
            cprop_cdf=cprop_cdf,
        )
        Optimizer.__init__(self, params, defaults, nonfinite=nonfinite, backend=backend)

    def _compute(self, param: np.ndarray, grad: np.ndarray, state: ParamState, group: dict[str, Any]) -> Update:
        p, g = self._as_compute(param, grad)
        stats, s = cprop_step(
            self._cprop_stats(state, p),
            g,
            group["cprop_beta"],
            group["cprop_c"],
            group["cprop_eps"],
            group["cprop_cdf"],
        )
        d, buf = self._direction(p, g, state, group)
        new_state = {"step": stats.t, "cprop_m": stats.m, "cprop_v": stats.v, "momentum_buffer": buf}
        return p - group["lr"] * scale_update(d, s), new_state
