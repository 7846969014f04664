"""CProp-SGD for PyTorch (torch.optim.SGD semantics, scaled element-wise by CProp)."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import torch

from ..hyperparams import CPROP_HYPERPARAMS, SGD_HYPERPARAMS, check_sgd_group
from . import foreach as multi
from . import fused
from .base import CPropOptimizerMixin, validated, with_variant_options
from .functional import scale_update, statistics_dtype


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

    ``foreach`` and ``fused`` choose the implementation as in ``torch.optim.SGD``: ``None``
    (default) is multi-tensor on CUDA and per-tensor on the CPU, ``foreach=True`` the
    ``torch._foreach_*`` path, ``fused=True`` one kernel compiled by ``torch.compile`` per
    parameter (docs/torch.md). All give the same numbers and state.
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
        *,
        foreach: bool | None = None,
        fused: bool | None = None,
    ) -> None:
        name = type(self).__name__
        defaults = validated(self.hyperparams, dict(locals()), name)
        # Nesterov's rule is checked per group, the defaults' group included, by
        # ``_check_group`` as torch's constructor adds it (``add_param_group``).
        super().__init__(params, with_variant_options(defaults, foreach, fused))

    def _check_group(self, group: dict[str, Any], where: str) -> dict[str, Any]:
        hp = super()._check_group(group, where)
        check_sgd_group(hp, where)
        return hp

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

    # -- the multi-tensor and compiled paths (same numbers, same state) ------------------------

    def _step_foreach(self, items: list[tuple[torch.Tensor, torch.Tensor, dict[str, Any]]]) -> None:
        """:meth:`_step_tensor`'s operations over the parameters of each device and dtype."""
        hp = items[0][2]
        params = [p for p, _, _ in items]
        for indices in multi.group_by_device_and_dtype(range(len(items)), params).values():
            originals = [params[k] for k in indices]
            dtype = statistics_dtype(originals[0].dtype)
            ps = [p.to(dtype) for p in originals]
            gs = [items[k][1].to(dtype) for k in indices]
            states = [self.state[p] for p in originals]
            stats = [self._statistics(p, state) for p, state in zip(ps, states)]
            ms, vs = [m for m, _ in stats], [v for _, v in stats]
            # On the CPU: three lists of scratch for the statistics and the scale (multi.Workspace).
            work = self._workspace().lists(ps, 3)
            multi.update_statistics_(ms, vs, gs, hp["cprop_beta"], work[0])
            for state in states:
                state["step"] = state.get("step", 0) + 1
            scales = multi.cprop_scales(
                ms,
                vs,
                [st["step"] for st in states],
                beta=hp["cprop_beta"],
                c=hp["cprop_c"],
                eps=hp["cprop_eps"],
                cdf_name=hp["cprop_cdf"],
                scratch=work,
            )
            wd, momentum = hp["weight_decay"], hp["momentum"]
            ds = gs if wd == 0.0 else torch._foreach_add(gs, torch._foreach_mul(ps, wd))
            if momentum != 0.0:
                # torch's rule: the first buffer is d itself, later ones momentum buf + (1 - dampening) d.
                later = [k for k, st in enumerate(states) if "momentum_buffer" in st]
                for k, state in enumerate(states):
                    if "momentum_buffer" not in state:
                        state["momentum_buffer"] = ds[k].clone()
                if later:
                    bufs = [states[k]["momentum_buffer"] for k in later]
                    torch._foreach_mul_(bufs, momentum)
                    torch._foreach_add_(bufs, torch._foreach_mul([ds[k] for k in later], 1.0 - hp["dampening"]))
                bufs = [st["momentum_buffer"] for st in states]
                ds = torch._foreach_add(ds, torch._foreach_mul(bufs, momentum)) if hp["nesterov"] else bufs
            updates = multi.scale_updates(ds, scales)
            torch._foreach_mul_(updates, hp["lr"])
            torch._foreach_sub_(ps, updates)
            for p, original in zip(ps, originals):
                if p is not original:
                    original.copy_(p)

    def _step_fused(self, items: list[tuple[torch.Tensor, torch.Tensor, dict[str, Any]]]) -> None:
        """One compiled kernel per parameter (:func:`.fused.sgd_kernel`)."""
        hp = items[0][2]
        numbers: dict[tuple[int, bool, torch.dtype], torch.Tensor] = {}
        momentum = hp["momentum"] != 0.0
        for p, g, _ in items:
            state = self.state[p]
            m, v = self._statistics(p, state)
            first = momentum and "momentum_buffer" not in state
            if first:
                state["momentum_buffer"] = torch.zeros_like(m)
            t = state.get("step", 0) + 1
            if (t, first, m.dtype) not in numbers:
                values = fused.sgd_numbers(hp, t, first)
                numbers[t, first, m.dtype] = fused.pack(fused.SGD_SCALARS, values, m.dtype, p.device)
            key = fused.kernel_key("sgd", p, normal=hp["cprop_cdf"] == "normal", momentum=momentum)
            buf = state["momentum_buffer"] if momentum else None
            fused.run_in_place(key, p, g, m, v, buf, scalars=numbers[t, first, m.dtype])
            state["step"] = t
