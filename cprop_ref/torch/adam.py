"""CProp-Adam for PyTorch (torch.optim.Adam semantics, scaled element-wise by CProp)."""

from __future__ import annotations

import math
from collections.abc import Iterable
from typing import Any

import torch

from ..hyperparams import ADAM_HYPERPARAMS, CPROP_HYPERPARAMS
from .base import CPropOptimizerMixin, validated
from .functional import scale_update, statistics_dtype, update_cprop_moment_, update_ema_


def adam_moments_(state: dict[str, Any], d: torch.Tensor, hp: dict[str, Any]) -> None:
    """In place: ``m <- b1 m + (1 - b1) d``, ``v <- b2 v + (1 - b2) d^2``, the AMSGrad maximum
    and ``step + 1``. The first moment is a weighted sum (not ``lerp``) so that it is exactly
    CProp's ``m`` when ``beta1 == cprop_beta``."""
    beta1, beta2 = hp["betas"]
    update_ema_(state["exp_avg"], d, beta1)
    update_ema_(state["exp_avg_sq"], d * d, beta2)
    if hp["amsgrad"]:
        torch.maximum(state["max_exp_avg_sq"], state["exp_avg_sq"], out=state["max_exp_avg_sq"])
    state["step"] += 1


def adam_delta(state: dict[str, Any], hp: dict[str, Any]) -> torch.Tensor:
    """torch Adam's update: ``-lr / (1 - b1^t) * m / (sqrt(v) / sqrt(1 - b2^t) + eps)``, the
    step size and ``sqrt(1 - b2^t)`` in double precision, rounded once."""
    beta1, beta2 = hp["betas"]
    t = state["step"]
    step_size = hp["lr"] / (1.0 - beta1**t)
    second = state["max_exp_avg_sq"] if hp["amsgrad"] else state["exp_avg_sq"]
    denom = torch.sqrt(second) / math.sqrt(1.0 - beta2**t) + hp["eps"]
    return -step_size * (state["exp_avg"] / denom)


class CPropAdam(CPropOptimizerMixin, torch.optim.Optimizer):
    """Adam whose update is scaled by CProp: ``param <- param + delta * s``, ``delta`` torch
    Adam's update (coupled weight decay, optional AMSGrad), ``s`` from the raw gradient.

    Hyperparameters as in the authors' package: ``lr`` (1e-3), ``cprop_beta``, ``cprop_c``,
    ``cprop_eps``, ``cprop_cdf``, ``betas``, ``eps``, ``weight_decay``, ``amsgrad``. With
    ``weight_decay == 0`` and ``beta1 == cprop_beta`` (``beta2 == cprop_beta``, as by default)
    Adam's first (second) moment is CProp's ``m`` (``v``) and is not stored twice; a parameter
    stops sharing, exactly, when later changes of the hyperparameters break that equality.
    State per parameter: ``step``, ``exp_avg``, ``exp_avg_sq``, [``max_exp_avg_sq``],
    [``cprop_m``], [``cprop_v``].
    """

    hyperparams = {**ADAM_HYPERPARAMS, **CPROP_HYPERPARAMS}

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
    ) -> None:
        super().__init__(params, validated(self.hyperparams, dict(locals()), type(self).__name__))

    @staticmethod
    def sharing_allowed(hp: dict[str, Any]) -> tuple[bool, bool]:
        """Whether Adam's first and second moments equal CProp's ``m`` and ``v`` under ``hp``."""
        beta1, beta2 = hp["betas"]
        raw = hp["weight_decay"] == 0.0
        return raw and beta1 == hp["cprop_beta"], raw and beta2 == hp["cprop_beta"]

    def _cprop_view(self, p: torch.Tensor, state: dict[str, Any]) -> tuple[torch.Tensor, torch.Tensor, int]:
        m = state["cprop_m"] if "cprop_m" in state else state["exp_avg"]
        v = state["cprop_v"] if "cprop_v" in state else state["exp_avg_sq"]
        return m, v, state["step"]

    def _init_state(self, p: torch.Tensor, state: dict[str, Any], hp: dict[str, Any]) -> None:
        dtype = statistics_dtype(p.dtype)
        state["step"] = 0
        for key in ("exp_avg", "exp_avg_sq"):
            state[key] = torch.zeros_like(p, dtype=dtype, memory_format=torch.preserve_format)
        share_m, share_v = self.sharing_allowed(hp)
        if not share_m:
            state["cprop_m"] = torch.zeros_like(state["exp_avg"])
        if not share_v:
            state["cprop_v"] = torch.zeros_like(state["exp_avg"])

    def _new_param(self, p: torch.Tensor, g: torch.Tensor, state: dict[str, Any], hp: dict[str, Any]) -> torch.Tensor:
        """Adam's moments, CProp's statistics (shared or private) and ``p + delta * s``."""
        if hp["amsgrad"] and "max_exp_avg_sq" not in state:
            state["max_exp_avg_sq"] = torch.zeros_like(state["exp_avg_sq"])
        allowed_m, allowed_v = self.sharing_allowed(hp)
        # A shared moment whose equality no longer holds continues, privately, from its value now.
        if "cprop_m" not in state and not allowed_m:
            state["cprop_m"] = state["exp_avg"].clone()
        if "cprop_v" not in state and not allowed_v:
            state["cprop_v"] = state["exp_avg_sq"].clone()
        d = g + hp["weight_decay"] * p if hp["weight_decay"] != 0.0 else g
        adam_moments_(state, d, hp)
        delta = adam_delta(state, hp)
        s = self._cprop_part(p, g, state, hp)
        return p + scale_update(delta, s)

    def _cprop_part(self, p: torch.Tensor, g: torch.Tensor, state: dict[str, Any], hp: dict[str, Any]) -> torch.Tensor:
        """Private statistics take the raw gradient (shared ones were updated by Adam); the
        scale comes from the statistics after this step's gradient."""
        x = self._statistics_input(p, g, hp)
        beta = hp["cprop_beta"]
        if "cprop_m" in state:
            update_cprop_moment_(state["cprop_m"], x, beta)
        if "cprop_v" in state:
            update_cprop_moment_(state["cprop_v"], x * x, beta)
        m, v, t = self._cprop_view(p, state)
        return self._scale(m, v, t, hp)

    def _step_tensor(self, p: torch.Tensor, g: torch.Tensor, state: dict[str, Any], hp: dict[str, Any]) -> torch.Tensor:
        if not state:
            self._init_state(p, state, hp)
        return self._new_param(p, g, state, hp)
