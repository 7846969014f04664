"""Adam, AdamW and CProp-Adam (torch.optim.Adam / AdamW semantics)."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any, ClassVar

import numpy as np

from ..functional import (
    AdamMoments,
    adam_delta,
    adam_moments,
    cprop_adam_private_moments,
    cprop_adam_shares_moments,
    cprop_adam_sharing_allowed,
)
from ..hyperparams import ADAM_HYPERPARAMS, CPROP_HYPERPARAMS, Validator, accepting_runs
from ..kernels import DEFAULT_BACKEND
from ..scale import CPropStats, cprop_scale, ema, scale_update
from .base import Optimizer, ParamState, Update
from .cprop_mixin import CPropStatsMixin


class Adam(Optimizer):
    """Adam with coupled weight decay (``d = g + wd * param``) and optional AMSGrad.

    ``m <- b1 m + (1 - b1) d``, ``v <- b2 v + (1 - b2) d^2``, and
    ``param <- param - lr / (1 - b1^t) * m / (sqrt(v) / sqrt(1 - b2^t) + eps)``.
    """

    hyperparams: ClassVar[dict[str, Validator]] = accepting_runs(ADAM_HYPERPARAMS)
    state_schema: ClassVar[dict[str, str]] = {
        "step": "count",
        "exp_avg": "array",
        "exp_avg_sq": "array",
        "max_exp_avg_sq": "optional_array",
    }
    decoupled_weight_decay: ClassVar[bool] = False
    kernel_family: ClassVar[str | None] = "adam"

    def __init_subclass__(cls, **kwargs: Any) -> None:
        # The kernels of "adam" and "adamw" differ in the decay alone: a subclass that changes
        # decoupled_weight_decay must name the matching family (or None), never run the other's.
        super().__init_subclass__(**kwargs)
        wanted = "adamw" if cls.decoupled_weight_decay else "adam"
        if cls.kernel_family in ("adam", "adamw") and cls.kernel_family != wanted:
            raise TypeError(
                f"{cls.__name__}: decoupled_weight_decay={cls.decoupled_weight_decay} needs "
                f"kernel_family={wanted!r} (or None), not {cls.kernel_family!r}"
            )

    def __init__(
        self,
        params: Iterable[Any],
        lr: float = 1e-3,
        betas: tuple[float, float] = (0.9, 0.999),
        eps: float = 1e-8,
        weight_decay: float = 0.0,
        amsgrad: bool = False,
        *,
        nonfinite: str = "raise",
        backend: str = DEFAULT_BACKEND,
    ) -> None:
        defaults = dict(lr=lr, betas=betas, eps=eps, weight_decay=weight_decay, amsgrad=amsgrad)
        super().__init__(params, defaults, nonfinite=nonfinite, backend=backend)

    def _moments(self, p: np.ndarray, state: ParamState) -> AdamMoments:
        if not state:
            zeros = np.zeros_like(p)
            return AdamMoments(zeros, zeros, None, 0)
        return AdamMoments(state["exp_avg"], state["exp_avg_sq"], state.get("max_exp_avg_sq"), state["step"])

    def _adam(
        self, p: np.ndarray, g: np.ndarray, state: ParamState, group: dict[str, Any]
    ) -> tuple[np.ndarray, AdamMoments, np.ndarray]:
        """Adam's part of the step: the parameter after weight decay, the new moments and
        the update ``delta`` (new parameter = decayed parameter + delta)."""
        beta1, beta2 = group["betas"]
        wd = group["weight_decay"]
        if self.decoupled_weight_decay:
            p = p * (1.0 - group["lr"] * wd) if wd != 0.0 else p
            d = g
        else:
            d = g + wd * p if wd != 0.0 else g
        moments = self._moments(p, state)
        if group["amsgrad"] and moments.max_exp_avg_sq is None:
            moments = moments._replace(max_exp_avg_sq=np.zeros_like(moments.exp_avg))
        new = adam_moments(moments, d, beta1=beta1, beta2=beta2, amsgrad=group["amsgrad"])
        delta = adam_delta(new, lr=group["lr"], beta1=beta1, beta2=beta2, eps=group["eps"], amsgrad=group["amsgrad"])
        return p, new, delta

    @staticmethod
    def _adam_state(moments: AdamMoments) -> ParamState:
        return {
            "step": moments.step,
            "exp_avg": moments.exp_avg,
            "exp_avg_sq": moments.exp_avg_sq,
            "max_exp_avg_sq": moments.max_exp_avg_sq,
        }

    def _compute(self, param: np.ndarray, grad: np.ndarray, state: ParamState, group: dict[str, Any]) -> Update:
        p, g = self._as_compute(param, grad)
        p, moments, delta = self._adam(p, g, state, group)
        return p + delta, self._adam_state(moments)


class AdamW(Adam):
    """Adam with decoupled weight decay: ``param <- param * (1 - lr * wd)`` before the Adam step."""

    decoupled_weight_decay: ClassVar[bool] = True
    kernel_family: ClassVar[str | None] = "adamw"

    def __init__(
        self,
        params: Iterable[Any],
        lr: float = 1e-3,
        betas: tuple[float, float] = (0.9, 0.999),
        eps: float = 1e-8,
        weight_decay: float = 1e-2,
        amsgrad: bool = False,
        *,
        nonfinite: str = "raise",
        backend: str = DEFAULT_BACKEND,
    ) -> None:
        super().__init__(params, lr, betas, eps, weight_decay, amsgrad, nonfinite=nonfinite, backend=backend)


class CPropAdam(CPropStatsMixin, Adam):
    """Adam whose update is scaled element-wise by CProp: ``param <- param + delta * s``.

    ``s`` comes from the raw gradient. When ``weight_decay == 0`` and ``beta1 == cprop_beta``
    Adam's first moment *is* CProp's ``m`` (same formula, same input), and likewise
    ``beta2 == cprop_beta`` shares the second moment (the defaults share ``v``): the
    state then holds no ``cprop_m`` / ``cprop_v`` and the results are bit for bit those
    of the unshared computation. A parameter stops sharing, exactly, if later
    hyperparameter changes break those equalities.
    """

    hyperparams: ClassVar[dict[str, Validator]] = accepting_runs({**ADAM_HYPERPARAMS, **CPROP_HYPERPARAMS})
    # Runs of a per-run group that share a moment store it in Adam's entry: equal bit for bit.
    state_fill: ClassVar[dict[str, str]] = {"cprop_m": "exp_avg", "cprop_v": "exp_avg_sq"}
    kernel_family: ClassVar[str | None] = "cprop_adam"
    state_schema: ClassVar[dict[str, str]] = {
        **Adam.state_schema,
        "cprop_m": "optional_array",
        "cprop_v": "optional_array",
    }

    def __init__(
        self,
        params: Iterable[Any],
        lr: float = 1e-3,
        cprop_beta: float = 0.999,
        cprop_c: float = 1.0,
        cprop_eps: float = 1e-8,
        cprop_cdf: str = "bft",
        betas: tuple[float, float] = (0.9, 0.999),
        eps: float = 1e-8,
        weight_decay: float = 0.0,
        amsgrad: bool = False,
        *,
        nonfinite: str = "raise",
        backend: str = DEFAULT_BACKEND,
    ) -> None:
        defaults = dict(
            lr=lr,
            betas=betas,
            eps=eps,
            weight_decay=weight_decay,
            amsgrad=amsgrad,
            cprop_beta=cprop_beta,
            cprop_c=cprop_c,
            cprop_eps=cprop_eps,
            cprop_cdf=cprop_cdf,
        )
        Optimizer.__init__(self, params, defaults, nonfinite=nonfinite, backend=backend)

    #: Whether Adam's first and second moments equal CProp's ``m`` and ``v`` under a group
    #: (:func:`cprop_ref.functional.cprop_adam_sharing_allowed`).
    sharing_allowed = staticmethod(cprop_adam_sharing_allowed)
    #: Whether a parameter's state holds CProp's ``m`` / ``v`` inside Adam's moments
    #: (:func:`cprop_ref.functional.cprop_adam_shares_moments`).
    shares_moments = staticmethod(cprop_adam_shares_moments)

    def _cprop_stats(self, state: ParamState, p: np.ndarray) -> CPropStats:
        if not state:
            return super()._cprop_stats(state, p)
        m = state["cprop_m"] if "cprop_m" in state else state["exp_avg"]
        v = state["cprop_v"] if "cprop_v" in state else state["exp_avg_sq"]
        return CPropStats(m, v, state["step"])

    def _compute(self, param: np.ndarray, grad: np.ndarray, state: ParamState, group: dict[str, Any]) -> Update:
        p, g = self._as_compute(param, grad)
        beta = group["cprop_beta"]
        private_m, private_v = cprop_adam_private_moments(state, group)
        old = self._cprop_stats(state, p)
        p_decayed, moments, delta = self._adam(p, g, state, group)
        new_state = self._adam_state(moments)
        # Shared moments come out of Adam's update; the others get their own EMA of the raw
        # gradient. A shared moment whose equality no longer holds continues, unshared, from
        # its current value, which is exactly CProp's.
        if not private_m:
            m = moments.exp_avg
        else:
            m = new_state["cprop_m"] = ema(old.m, g, beta)
        if not private_v:
            v = moments.exp_avg_sq
        else:
            with np.errstate(over="ignore", under="ignore"):
                square = g * g
            v = new_state["cprop_v"] = ema(old.v, square, beta)
        stats = CPropStats(m, v, moments.step)
        s = cprop_scale(stats, beta, group["cprop_c"], group["cprop_eps"], group["cprop_cdf"])
        return p_decayed + scale_update(delta, s), new_state
