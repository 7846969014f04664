"""CProp-Adam for PyTorch (torch.optim.Adam semantics, scaled element-wise by CProp)."""

from __future__ import annotations

import math
from collections.abc import Iterable
from typing import Any

import torch

from ..hyperparams import ADAM_HYPERPARAMS, CPROP_HYPERPARAMS
from . import foreach as multi
from . import fused
from .base import CPropOptimizerMixin, validated, with_variant_options
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

    ``foreach`` and ``fused`` choose the implementation as in ``torch.optim.Adam``: ``None``
    (default) is multi-tensor on CUDA and per-tensor on the CPU, ``foreach=True`` the
    ``torch._foreach_*`` path, ``fused=True`` one kernel compiled by ``torch.compile`` per
    parameter (docs/torch.md). All give the same numbers and state.
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
        *,
        foreach: bool | None = None,
        fused: bool | None = None,
    ) -> None:
        name = type(self).__name__
        defaults = validated(self.hyperparams, dict(locals()), name)
        super().__init__(params, with_variant_options(defaults, foreach, fused))

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

    def _prepare_state(self, p: torch.Tensor, state: dict[str, Any], hp: dict[str, Any]) -> None:
        """The state tensors this step needs under ``hp``, created or split off before the math."""
        if not state:
            self._init_state(p, state, hp)
        if hp["amsgrad"] and "max_exp_avg_sq" not in state:
            state["max_exp_avg_sq"] = torch.zeros_like(state["exp_avg_sq"])
        allowed_m, allowed_v = self.sharing_allowed(hp)
        # A shared moment whose equality no longer holds continues, privately, from its value now.
        if "cprop_m" not in state and not allowed_m:
            state["cprop_m"] = state["exp_avg"].clone()
        if "cprop_v" not in state and not allowed_v:
            state["cprop_v"] = state["exp_avg_sq"].clone()

    def _new_param(self, p: torch.Tensor, g: torch.Tensor, state: dict[str, Any], hp: dict[str, Any]) -> torch.Tensor:
        """Adam's moments, CProp's statistics (shared or private) and ``p + delta * s``."""
        self._prepare_state(p, state, hp)
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

    # -- the multi-tensor and compiled paths (same numbers, same state) ------------------------

    def _step_foreach(self, items: list[tuple[torch.Tensor, torch.Tensor, dict[str, Any]]]) -> None:
        """:meth:`_new_param`'s operations over the parameters of each device and dtype."""
        hp = items[0][2]
        beta1, beta2 = hp["betas"]
        params = [p for p, _, _ in items]
        for indices in multi.group_by_device_and_dtype(range(len(items)), params).values():
            originals = [params[k] for k in indices]
            dtype = statistics_dtype(originals[0].dtype)
            ps = [p.to(dtype) for p in originals]
            gs = [items[k][1].to(dtype) for k in indices]
            states = [self.state[p] for p in originals]
            for p, state in zip(ps, states):
                self._prepare_state(p, state, hp)
            # On the CPU: a temporary, Adam's update and two for the scale (multi.Workspace).
            temp, out_deltas, work1, work2 = self._workspace().lists(ps, 4)
            wd = hp["weight_decay"]
            ds = gs if wd == 0.0 else torch._foreach_add(gs, torch._foreach_mul(ps, wd))
            exp_avgs = [st["exp_avg"] for st in states]
            exp_avg_sqs = [st["exp_avg_sq"] for st in states]
            multi.update_ema_(exp_avgs, ds, beta1, temp)
            squares = multi.into(temp, "mul", ds, ds)
            multi.update_ema_(exp_avg_sqs, squares, beta2, temp)  # (1 - beta2) d^2 in place
            second = exp_avg_sqs
            if hp["amsgrad"]:
                second = [st["max_exp_avg_sq"] for st in states]
                torch._foreach_maximum_(second, exp_avg_sqs)
            for state in states:
                state["step"] += 1
            ts = [st["step"] for st in states]
            denoms = multi.into(out_deltas, "sqrt", second)
            torch._foreach_div_(denoms, [math.sqrt(1.0 - beta2**t) for t in ts])
            torch._foreach_add_(denoms, hp["eps"])
            deltas = multi.into(out_deltas, "div", exp_avgs, denoms)  # into the denominators' buffer
            torch._foreach_mul_(deltas, [-(hp["lr"] / (1.0 - beta1**t)) for t in ts])
            # CProp's private moments take the raw gradient (shared ones were updated as Adam's).
            own_m = [k for k, st in enumerate(states) if "cprop_m" in st]
            own_v = [k for k, st in enumerate(states) if "cprop_v" in st]
            raw_m, raw_v = [gs[k] for k in own_m], [gs[k] for k in own_v]
            cprop_beta = hp["cprop_beta"]
            multi.update_cprop_moment_(
                [states[k]["cprop_m"] for k in own_m], raw_m, cprop_beta, multi.pick(temp, own_m)
            )
            if own_v:
                squares = multi.into(multi.pick(temp, own_v), "mul", raw_v, raw_v)
                multi.update_cprop_moment_(
                    [states[k]["cprop_v"] for k in own_v], squares, cprop_beta, multi.pick(temp, own_v)
                )
            views = [self._cprop_view(p, st) for p, st in zip(ps, states)]
            scales = multi.cprop_scales(
                [m for m, _, _ in views],
                [v for _, v, _ in views],
                ts,
                beta=cprop_beta,
                c=hp["cprop_c"],
                eps=hp["cprop_eps"],
                cdf_name=hp["cprop_cdf"],
                scratch=(work1, work2, temp),
            )
            torch._foreach_add_(ps, multi.scale_updates(deltas, scales))
            for p, original in zip(ps, originals):
                if p is not original:
                    original.copy_(p)

    def _step_fused(self, items: list[tuple[torch.Tensor, torch.Tensor, dict[str, Any]]]) -> None:
        """One compiled kernel per parameter (:func:`.fused.adam_kernel`); the group's numbers
        as one tensor per step count."""
        hp = items[0][2]
        numbers: dict[tuple[int, torch.dtype], torch.Tensor] = {}
        for p, g, _ in items:
            state = self.state[p]
            self._prepare_state(p, state, hp)
            t = state["step"] + 1
            dtype = state["exp_avg"].dtype
            if (t, dtype) not in numbers:
                numbers[t, dtype] = fused.pack(fused.ADAM_SCALARS, fused.adam_numbers(hp, t), dtype, p.device)
            key = fused.kernel_key(
                "adam",
                p,
                normal=hp["cprop_cdf"] == "normal",
                amsgrad=hp["amsgrad"],
                private_m="cprop_m" in state,
                private_v="cprop_v" in state,
            )
            tensors = (p, g, state["exp_avg"], state["exp_avg_sq"])
            optional = tuple(state.get(k) for k in ("max_exp_avg_sq", "cprop_m", "cprop_v"))
            optional = (optional[0] if key.amsgrad else None,) + optional[1:]
            fused.run_in_place(key, *tensors, *optional, scalars=numbers[t, dtype])
            state["step"] = t
