"""CProp-SGD for PyTorch (torch.optim.SGD semantics, scaled element-wise by CProp)."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import torch

from ..hyperparams import CPROP_HYPERPARAMS, SGD_HYPERPARAMS, check_sgd_group
from .base import CPropOptimizerMixin, validated
from .functional import scale_update


def sgd_direction(
    p: torch.Tensor, g: torch.Tensor, buf: torch.Tensor | None, hp: dict[str, Any]
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """SGD's direction ``d`` (update ``p - lr d``) and the new momentum buffer (torch's rule):
    ``d = g + wd p``; ``buf <- d`` first, else ``momentum buf + (1 - dampening) d``;
    ``d <- d + momentum buf`` (Nesterov) or ``d <- buf``."""
    d = g + hp["weight_decay"] * p if hp["weight_decay"] != 0.0 else g
    momentum = hp["momentum"]
    if momentum == 0.0:
        return d, None
    buf = d.clone() if buf is None else momentum * buf + (1.0 - hp["dampening"]) * d
    return (d + momentum * buf if hp["nesterov"] else buf), buf


class CPropSGD(CPropOptimizerMixin, torch.optim.Optimizer):
    """SGD whose update is scaled by CProp: ``param <- param - lr * (d * s)``, where ``d`` is
    torch SGD's direction and ``s`` comes from the raw gradient.

    Hyperparameters as in the authors' package: ``lr``, ``cprop_beta`` (0.999), ``cprop_c``
    (1), ``cprop_eps`` (1e-8), ``cprop_cdf`` (``"bft"``; also ``"normal"``, ``"bfo"``,
    ``"logistic"``), ``momentum``, ``dampening``, ``weight_decay``, ``nesterov``.
    State per parameter: ``step``, ``cprop_m``, ``cprop_v``, ``momentum_buffer``.
    """

    hyperparams = {**SGD_HYPERPARAMS, **CPROP_HYPERPARAMS}

    def __init__(
        self,
        params: Iterable[Any],
        lr: float = 1e-3,
        cprop_beta: float = 0.999,
        cprop_c: float = 1.0,
        cprop_eps: float = 1e-8,
        cprop_cdf: str = "bft",
        momentum: float = 0.0,
        dampening: float = 0.0,
        weight_decay: float = 0.0,
        nesterov: bool = False,
    ) -> None:
        defaults = validated(self.hyperparams, dict(locals()), type(self).__name__)
        check_sgd_group(defaults, type(self).__name__)
        super().__init__(params, defaults)

    def _check_groups(self) -> list[dict[str, Any]]:
        groups = super()._check_groups()
        for i, hp in enumerate(groups):
            check_sgd_group(hp, f"{type(self).__name__} param group {i}")
        return groups

    def _new_param(self, p: torch.Tensor, g: torch.Tensor, s: torch.Tensor, state: dict[str, Any], hp: dict[str, Any]):
        """``p - lr * (d * s)``: the scale multiplies the update, after momentum (``s = 0``: no update)."""
        d, buf = sgd_direction(p, g, state.get("momentum_buffer"), hp)
        if buf is not None:
            state["momentum_buffer"] = buf
        return p - hp["lr"] * scale_update(d, s)

    def _step_tensor(self, p: torch.Tensor, g: torch.Tensor, state: dict[str, Any], hp: dict[str, Any]) -> torch.Tensor:
        m, v = self._statistics(p, state)
        s = self._update_and_scale(m, v, self._statistics_input(p, g, hp), state, hp)
        return self._new_param(p, g, s, state, hp)
