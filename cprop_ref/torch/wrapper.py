"""``CProp``: scale the update of any ``torch.optim.Optimizer`` by CProp (``docs/algorithm.md``, "How the scale is applied")."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch

from ..hyperparams import Validator, cdf_name, decay_rate, non_negative
from . import foreach as multi
from . import fused as compiled
from .base import _load_keeping_precision, validated
from .functional import cprop_scale, statistics_dtype, update_statistics_
from .variants import FOREACH, FUSED, check_parameters, implementation

#: One parameter's step in flight: parameter, its value before, new m, new v, step, scale.
Pending = tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, int, torch.Tensor]

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

    ``foreach`` and ``fused`` choose how CProp's own part (statistics, scale, the scaling of
    the base update) is computed, with torch.optim's meaning and defaults (docs/torch.md);
    the base optimizer keeps its own (``torch.optim.Adam(..., fused=True)``, say).
    """

    def __init__(
        self,
        optimizer: torch.optim.Optimizer,
        beta: float = 0.999,
        c: float = 1.0,
        eps: float = 1e-8,
        cdf: str = "bft",
        *,
        foreach: bool | None = None,
        fused: bool | None = None,
    ) -> None:
        if not isinstance(optimizer, torch.optim.Optimizer):
            raise ValueError(f"CProp: optimizer must be a torch.optim.Optimizer, got {type(optimizer).__name__}")
        hp = validated(WRAPPER_HYPERPARAMS, dict(beta=beta, c=c, eps=eps, cdf=cdf), "CProp")
        for index, group in enumerate(optimizer.param_groups):
            check_parameters(group["params"], foreach, fused, f"CProp param group {index}")
        self.foreach, self.fused = foreach, fused
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
            index = len(self.param_groups) - 1
            try:
                check_parameters(
                    self.param_groups[index]["params"], self.foreach, self.fused, f"CProp param group {index}"
                )
            except Exception:
                self.base_optimizer.param_groups.pop()
                raise
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
        work = []
        for p in self._params():
            if p.grad is None:
                continue
            if p.grad.is_sparse:
                raise ValueError("CProp: sparse gradients are not supported")
            work.append(p)
        how = implementation(work, self.foreach, self.fused)
        pending = {FOREACH: self._statistics_foreach, FUSED: self._statistics_fused}.get(how, self._statistics_single)(
            work, hp
        )
        self.base_optimizer.step()
        {FOREACH: self._scale_foreach, FUSED: self._scale_fused}.get(how, self._scale_single)(pending)
        for p, _, m, v, t, _ in pending:
            self.state[p] = {"step": t, "cprop_m": m, "cprop_v": v}
        return loss

    def _old_statistics(self, p: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, int]:
        """Copies of ``p``'s ``(m, v)`` (zeros before its first gradient) and its next step count."""
        dtype = statistics_dtype(p.dtype)
        state = self.state[p]
        t = state.get("step", 0) + 1
        m = state["cprop_m"].clone() if state else torch.zeros_like(p, dtype=dtype)
        v = state["cprop_v"].clone() if state else torch.zeros_like(p, dtype=dtype)
        return m, v, t

    # -- the per-tensor path ---------------------------------------------------------------

    def _statistics_single(self, params: list[torch.Tensor], hp: dict[str, Any]) -> list[Pending]:
        """New statistics and scale of every parameter, before the base optimizer's step."""
        pending = []
        for p in params:
            m, v, t = self._old_statistics(p)
            update_statistics_(m, v, p.grad.to(m.dtype), hp["beta"])
            s = cprop_scale(m, v, t, beta=hp["beta"], c=hp["c"], eps=hp["eps"], cdf_name=hp["cdf"])
            pending.append((p, p.to(m.dtype, copy=True), m, v, t, s))
        return pending

    @staticmethod
    def _scale_single(pending: list[Pending]) -> None:
        """``param <- before + (param - before) * s`` after the base optimizer's step."""
        for p, before, _, _, _, s in pending:
            after = p.to(before.dtype)
            scaled = before + (after - before) * s
            # No update (after == before, also +-inf) or an update scaled by s = 0 leaves the
            # parameter as it was, where IEEE would give inf - inf or 0 * inf = NaN (e.g. a
            # float16 parameter that torch's own Adam made NaN with a zero gradient), as the reference.
            p.copy_(torch.where((s == 0.0) | (after == before), before, scaled))

    # -- the multi-tensor path (torch._foreach_* per device and dtype) -----------------------

    def _statistics_foreach(self, params: list[torch.Tensor], hp: dict[str, Any]) -> list[Pending]:
        pending: list[Pending] = []
        for indices in multi.group_by_device_and_dtype(range(len(params)), params).values():
            ps = [params[k] for k in indices]
            old = [self._old_statistics(p) for p in ps]
            ms, vs, ts = [o[0] for o in old], [o[1] for o in old], [o[2] for o in old]
            multi.update_statistics_(ms, vs, [p.grad.to(m.dtype) for p, m in zip(ps, ms)], hp["beta"])
            scales = multi.cprop_scales(ms, vs, ts, beta=hp["beta"], c=hp["c"], eps=hp["eps"], cdf_name=hp["cdf"])
            befores = [p.to(m.dtype, copy=True) for p, m in zip(ps, ms)]
            pending += zip(ps, befores, ms, vs, ts, scales)
        return pending

    @staticmethod
    def _scale_foreach(pending: list[Pending]) -> None:
        if not pending:
            return
        befores, scales = [q[1] for q in pending], [q[5] for q in pending]
        afters = [p.to(before.dtype) for p, before, *_ in pending]
        scaled = torch._foreach_sub(afters, befores)
        torch._foreach_mul_(scaled, scales)
        torch._foreach_add_(scaled, befores)
        for (p, before, *_, s), after, value in zip(pending, afters, scaled):
            p.copy_(torch.where((s == 0.0) | (after == before), before, value))

    # -- the compiled path (fused.stats_kernel and fused.combine_kernel) ---------------------

    def _statistics_fused(self, params: list[torch.Tensor], hp: dict[str, Any]) -> list[Pending]:
        pending: list[Pending] = []
        numbers: dict[tuple[int, torch.dtype, torch.device], torch.Tensor] = {}
        for p in params:
            key = compiled.kernel_key("stats", p, normal=hp["cdf"] == "normal")
            m, v, t = self._old_statistics(p)
            if (t, m.dtype, p.device) not in numbers:
                values = compiled.cprop_numbers(hp["beta"], hp["c"], hp["eps"], hp["cdf"], t)
                numbers[t, m.dtype, p.device] = compiled.pack(compiled.CPROP_SCALARS, values, m.dtype, p.device)
            out = compiled.run_in_place(key, p.grad, m, v, scalars=numbers[t, m.dtype, p.device])
            if out is None:  # an empty parameter
                m_new, v_new, s = m, v, torch.empty_like(m)
            else:
                m_new, v_new, s = (x.view(p.shape) for x in out)
            pending.append((p, p.to(m.dtype, copy=True), m_new, v_new, t, s))
        return pending

    @staticmethod
    def _scale_fused(pending: list[Pending]) -> None:
        for p, before, _, _, _, s in pending:
            key = compiled.kernel_key("combine", p)
            compiled.run_in_place(key, p, before, s)

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
        if not isinstance(state_dict, dict):
            raise ValueError(f"CProp.load_state_dict: expected a dict, got {type(state_dict).__name__}")
        missing = {"base", "cprop", "state", "param_groups"} - set(state_dict)
        if missing:
            raise ValueError(
                f"CProp.load_state_dict: the state dict has no {', '.join(map(repr, sorted(missing)))}: "
                "not a state dict of CProp (expected 'state', 'param_groups', 'base', 'cprop')"
            )
        hp = validated(WRAPPER_HYPERPARAMS, state_dict["cprop"], "CProp.load_state_dict")
        own = {"state": state_dict["state"], "param_groups": state_dict["param_groups"]}
        self.base_optimizer.load_state_dict(state_dict["base"])
        _load_keeping_precision(self, own)
        self.param_groups = self.base_optimizer.param_groups
        self.beta, self.c, self.eps, self.cdf = hp["beta"], hp["c"], hp["eps"], hp["cdf"]
