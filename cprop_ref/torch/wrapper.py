"""``CProp``: scale the update of any ``torch.optim.Optimizer`` by CProp (``docs/algorithm.md``, "How the scale is applied")."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch

from ..hyperparams import Validator, cdf_name, decay_rate, non_negative
from .base import _load_keeping_precision, validated
from .functional import cprop_scale, statistics_dtype, update_statistics_

WRAPPER_HYPERPARAMS: dict[str, Validator] = {
    "beta": decay_rate,
    "c": non_negative,
    "eps": non_negative,
    "cdf": cdf_name,
}


class CProp(torch.optim.Optimizer):
    """Wrap ``optimizer`` so each of its updates is scaled element-wise by CProp:
    ``before = param``; the base optimizer steps; ``param <- before + (param - before) * s``,
    with ``s`` from the raw gradients.

    ``beta`` (0.999), ``c`` (1), ``eps`` (1e-8), ``cdf`` (``"bft"``) are the authors' names;
    they are attributes and may be changed between steps. ``param_groups`` *is* the base
    optimizer's list, so learning-rate schedulers work on either object. ``state`` holds
    CProp's ``step``, ``cprop_m``, ``cprop_v`` per parameter; ``state_dict()`` adds the base
    optimizer's under ``"base"``. A ``closure`` is evaluated once, before the statistics.
    """

    def __init__(
        self, optimizer: torch.optim.Optimizer, beta: float = 0.999, c: float = 1.0, eps: float = 1e-8, cdf: str = "bft"
    ) -> None:
        if not isinstance(optimizer, torch.optim.Optimizer):
            raise ValueError(f"CProp: optimizer must be a torch.optim.Optimizer, got {type(optimizer).__name__}")
        hp = validated(WRAPPER_HYPERPARAMS, dict(beta=beta, c=c, eps=eps, cdf=cdf), "CProp")
        self.base_optimizer = optimizer
        self._wrapping = False
        params = [p for group in optimizer.param_groups for p in group["params"]]
        super().__init__(params, dict(hp))
        self.param_groups = optimizer.param_groups
        self._wrapping = True
        self.beta, self.c, self.eps, self.cdf = hp["beta"], hp["c"], hp["eps"], hp["cdf"]

    def add_param_group(self, param_group: dict[str, Any]) -> None:
        """New parameters go to the base optimizer (whose ``param_groups`` this shares)."""
        if self._wrapping:
            self.base_optimizer.add_param_group(param_group)
        else:
            super().add_param_group(param_group)

    def _hyperparams(self) -> dict[str, Any]:
        values = dict(beta=self.beta, c=self.c, eps=self.eps, cdf=self.cdf)
        return validated(WRAPPER_HYPERPARAMS, values, "CProp")

    def _params(self) -> list[torch.Tensor]:
        return [p for group in self.param_groups for p in group["params"]]

    @torch.no_grad()
    def step(self, closure: Callable[[], Any] | None = None) -> Any:
        """Statistics from the current gradients, the base optimizer's step, then the scaling.
        Nothing of CProp's state changes unless the base optimizer's step succeeds."""
        hp = self._hyperparams()
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        pending = []
        for p in self._params():
            if p.grad is None:
                continue
            if p.grad.is_sparse:
                raise ValueError("CProp: sparse gradients are not supported")
            dtype = statistics_dtype(p.dtype)
            state = self.state[p]
            t = state.get("step", 0) + 1
            m = state["cprop_m"].clone() if state else torch.zeros_like(p, dtype=dtype)
            v = state["cprop_v"].clone() if state else torch.zeros_like(p, dtype=dtype)
            g = p.grad.to(dtype)
            update_statistics_(m, v, g, hp["beta"])
            s = cprop_scale(m, v, t, beta=hp["beta"], c=hp["c"], eps=hp["eps"], cdf_name=hp["cdf"])
            pending.append((p, p.to(dtype, copy=True), m, v, t, s))
        self.base_optimizer.step()
        for p, before, m, v, t, s in pending:
            after = p.to(before.dtype)
            scaled = before + (after - before) * s
            # No update (after == before, also +-inf) or an update scaled by s = 0 leaves the
            # parameter as it was, where IEEE would give inf - inf or 0 * inf = NaN (e.g. a
            # float16 parameter that torch's own Adam made NaN with a zero gradient), as the reference.
            p.copy_(torch.where((s == 0.0) | (after == before), before, scaled))
            self.state[p] = {"step": t, "cprop_m": m, "cprop_v": v}
        return loss

    def cprop_statistics(self) -> list[tuple[torch.Tensor, torch.Tensor, int] | None]:
        """``(m, v, t)`` of every parameter (``None`` before its first gradient); live tensors."""
        out: list[tuple[torch.Tensor, torch.Tensor, int] | None] = []
        for p in self._params():
            state = self.state.get(p) if p in self.state else None
            out.append((state["cprop_m"], state["cprop_v"], state["step"]) if state else None)
        return out

    def scales(self) -> list[torch.Tensor | None]:
        """The per-element scale of every parameter (``None`` before its first gradient)."""
        hp = self._hyperparams()
        return [
            None
            if stats is None
            else cprop_scale(*stats, beta=hp["beta"], c=hp["c"], eps=hp["eps"], cdf_name=hp["cdf"])
            for stats in self.cprop_statistics()
        ]

    def state_dict(self) -> dict[str, Any]:
        own = super().state_dict()
        own["base"] = self.base_optimizer.state_dict()
        own["cprop"] = self._hyperparams()
        return own

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        """Restore CProp's hyperparameters and statistics and the base optimizer's state."""
        if not isinstance(state_dict, dict) or not {"base", "cprop", "state", "param_groups"} <= set(state_dict):
            raise ValueError("CProp.load_state_dict: expected a dict with 'state', 'param_groups', 'base', 'cprop'")
        hp = validated(WRAPPER_HYPERPARAMS, state_dict["cprop"], "CProp.load_state_dict")
        own = {"state": state_dict["state"], "param_groups": state_dict["param_groups"]}
        self.base_optimizer.load_state_dict(state_dict["base"])
        _load_keeping_precision(self, own)
        self.param_groups = self.base_optimizer.param_groups
        self.beta, self.c, self.eps, self.cdf = hp["beta"], hp["c"], hp["eps"], hp["cdf"]
