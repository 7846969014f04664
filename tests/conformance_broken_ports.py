"""Deliberately broken variants of cprop-ref's torch port, one bug each, that the harness must catch.

Each is a small subclass of :class:`cprop_ref.torch.CPropSGD` (the CProp-Adam one of
:class:`cprop_ref.torch.CPropAdam`) that overrides one step of the algorithm, wrapped as a
port factory with :class:`cprop_ref.conformance.torch_adapter.TorchPort`. The harness must
catch every one with a report naming the quantity that differs.
"""

from __future__ import annotations

import math
from typing import Any

import torch

from cprop_ref.conformance.torch_adapter import TorchPort
from cprop_ref.torch import CPropAdam, CPropSGD
from cprop_ref.torch.base import gradients_to_apply
from cprop_ref.torch.functional import BFT_CUBIC, cdf, scale_update, standardized_mean, statistics_dtype
from cprop_ref.torch.sgd import sgd_direction


def scale_variant(
    m: torch.Tensor,
    v: torch.Tensor,
    t: int,
    hp: dict[str, Any],
    *,
    n_minus: float = 1.0,
    bias_correct: bool = True,
    bft_cubic: float = BFT_CUBIC,
    clamp: bool = True,
) -> torch.Tensor:
    """The scale of ``docs/algorithm.md`` with one of four knobs turned the wrong way."""
    beta, c, eps, name = hp["cprop_beta"], hp["cprop_c"], hp["cprop_eps"], hp["cprop_cdf"]
    b = 1.0 - beta**t
    m_hat, v_hat = (m / b, v / b) if bias_correct else (m, v)
    n = b / (1.0 - beta)
    if n == 1.0 and n_minus == 1.0:
        se = torch.full_like(m_hat, eps)
    else:
        variance = torch.clamp_min(v_hat - m_hat * m_hat, 0.0)
        se = torch.sqrt(variance / (n - n_minus + eps)) + eps
    z = standardized_mean(m_hat, se)
    if name == "bft" and bft_cubic != BFT_CUBIC:
        p = torch.sigmoid(bft_cubic * z**3 + 1.5976 * z)
    else:
        p = cdf(z, name)
    s = 2.0 * c * torch.abs(p - 0.5)
    return torch.clamp_max(s, 1.0) if clamp else s


class NInsteadOfNMinusOne(CPropSGD):
    """Standard error with ``n`` instead of ``n - 1``."""

    def _scale(self, m, v, t, hp):
        return scale_variant(m, v, t, hp, n_minus=0.0)


class NoBiasCorrection(CPropSGD):
    """``m_hat = m``, ``v_hat = v``."""

    def _scale(self, m, v, t, hp):
        return scale_variant(m, v, t, hp, bias_correct=False)


class WrongBftConstant(CPropSGD):
    """``bft`` with 0.0706 for 0.07056."""

    def _scale(self, m, v, t, hp):
        return scale_variant(m, v, t, hp, bft_cubic=0.0706)


class UnclampedScale(CPropSGD):
    """``s = 2 c |p - 0.5|`` without ``min(., 1)``."""

    def _scale(self, m, v, t, hp):
        return scale_variant(m, v, t, hp, clamp=False)


class StatisticsAfterWeightDecay(CPropSGD):
    """CProp's statistics fed ``g + wd * p`` instead of the raw gradient."""

    def _statistics_input(self, p, g, hp):
        return g + hp["weight_decay"] * p


class StepOffByOne(CPropSGD):
    """The scale computed with ``t + 1`` gradients counted."""

    def _scale(self, m, v, t, hp):
        return super()._scale(m, v, t + 1, hp)


class MomentsAfterScale(CPropSGD):
    """The scale from the statistics *before* this step's gradient (``t`` already advanced)."""

    def _update_and_scale(self, m, v, g, state, hp):
        state["step"] = state.get("step", 0) + 1
        s = self._scale(m.clone(), v.clone(), state["step"], hp)
        super()._update_and_scale(m, v, g, state, hp)
        state["step"] -= 1
        return s


class ScaleBeforeMomentum(CPropSGD):
    """The scale applied to the gradient before momentum instead of to the update."""

    def _new_param(self, p, g, s, state, hp):
        return super()._new_param(p, g * s, torch.ones_like(s), state, hp)


class AdamStatisticsAfterWeightDecay(CPropAdam):
    """CProp-Adam whose private statistics see ``g + wd * p`` (the authors' CPropAdam does this)."""

    def _statistics_input(self, p, g, hp):
        return g + hp["weight_decay"] * p


BROKEN = {
    "n instead of n - 1": NInsteadOfNMinusOne,
    "missing bias correction": NoBiasCorrection,
    "wrong bft constant": WrongBftConstant,
    "unclamped scale": UnclampedScale,
    "statistics after weight decay": StatisticsAfterWeightDecay,
    "step counter off by one": StepOffByOne,
    "moments updated after the scale": MomentsAfterScale,
    "scale applied before momentum": ScaleBeforeMomentum,
    "CPropAdam statistics after weight decay": AdamStatisticsAfterWeightDecay,
}


def broken_port(cls: type) -> TorchPort:
    """A port factory that builds ``cls`` for its own optimizer and declines the others."""
    name = "CPropAdam" if issubclass(cls, CPropAdam) else "CPropSGD"
    return TorchPort(classes={name: cls})


# Importable port factories (``tests.conformance_broken_ports:n_instead_of_n_minus_one``), so
# that the reproduction snippets of the harness's reports can name them.
n_instead_of_n_minus_one = broken_port(NInsteadOfNMinusOne)
no_bias_correction = broken_port(NoBiasCorrection)
wrong_bft_constant = broken_port(WrongBftConstant)
unclamped_scale = broken_port(UnclampedScale)
statistics_after_weight_decay = broken_port(StatisticsAfterWeightDecay)
step_off_by_one = broken_port(StepOffByOne)
moments_after_scale = broken_port(MomentsAfterScale)
scale_before_momentum = broken_port(ScaleBeforeMomentum)
adam_statistics_after_weight_decay = broken_port(AdamStatisticsAfterWeightDecay)


# -- Valid alternatives: ports that compute CProp in another legitimate way.
# The harness must pass them: their differences from the reference are rounding, within the
# derived bounds.


def _fused_ema_(x: torch.Tensor, y: torch.Tensor, beta: float) -> None:
    """``x <- beta x + (1 - beta) y`` with torch's fused ``add_(alpha=)`` (one kernel, FMA where
    the CPU vectorises it); ``beta = 0`` keeps no memory (``0 * inf`` would be NaN)."""
    if beta == 0.0:
        x.copy_(y)
        return
    x.mul_(beta).add_(y, alpha=1.0 - beta)


def _fused_square_ema_(x: torch.Tensor, y: torch.Tensor, beta: float) -> None:
    """``x <- beta x + (1 - beta) y^2`` with ``addcmul_``: the square is never rounded alone."""
    if beta == 0.0:
        x.copy_(y * y)
        return
    x.mul_(beta).addcmul_(y, y, value=1.0 - beta)


def _lerp_keeping_infinities_(x: torch.Tensor, y: torch.Tensor, beta: float) -> None:
    """``x <- lerp(x, y, 1 - beta)`` (``x + (1 - beta)(y - x)``), with the weighted sum where an
    operand is infinite: ``lerp`` would give ``inf - inf = NaN`` after a square overflowed."""
    if beta == 0.0:
        x.copy_(y)
        return
    weighted = x * beta + y * (1.0 - beta)
    x.copy_(torch.where(torch.isinf(x) | torch.isinf(y), weighted, torch.lerp(x, y, 1.0 - beta)))


def _plain_lerp_(x: torch.Tensor, y: torch.Tensor, beta: float) -> None:
    if beta == 0.0:
        x.copy_(y)
        return
    x.lerp_(y, 1.0 - beta)


class _StatisticsVariant(CPropSGD):
    """CPropSGD with CProp's statistics updated by ``ema_`` (``m``) and ``square_ema_`` (``v``)."""

    ema_ = staticmethod(_fused_ema_)
    square_ema_ = staticmethod(_fused_square_ema_)

    def _update_and_scale(self, m, v, g, state, hp):
        self.ema_(m, g, hp["cprop_beta"])
        self.square_ema_(v, g, hp["cprop_beta"])
        state["step"] = state.get("step", 0) + 1
        return self._scale(m, v, state["step"], hp)


class FusedOpsSGD(_StatisticsVariant):
    """Valid: statistics with ``add_(alpha=)`` / ``addcmul_`` and the update ``p.add_(d * s, alpha=-lr)``."""

    def _new_param(self, p, g, s, state, hp):
        d, buf = sgd_direction(p, g, state.get("momentum_buffer"), hp)
        if buf is not None:
            state["momentum_buffer"] = buf
        return p.clone().add_(scale_update(d, s), alpha=-hp["lr"])


class LerpKeepingInfinities(_StatisticsVariant):
    """Valid: EMAs in ``lerp`` form, written to keep IEEE infinities."""

    ema_ = staticmethod(_lerp_keeping_infinities_)

    @staticmethod
    def square_ema_(x, y, beta):
        _lerp_keeping_infinities_(x, y * y, beta)


class PlainLerp(_StatisticsVariant):
    """Broken: EMAs in plain ``lerp`` form: after a square overflows, ``inf - inf = NaN``."""

    ema_ = staticmethod(_plain_lerp_)

    @staticmethod
    def square_ema_(x, y, beta):
        _plain_lerp_(x, y * y, beta)


class FusedOpsAdam(CPropAdam):
    """Valid: CProp-Adam as torch's own Adam writes it: ``mul_().add_(alpha=)``, ``addcmul_``,
    the step ``addcdiv`` and the scaled update ``addcmul``."""

    def _new_param(self, p, g, state, hp):
        if hp["amsgrad"] and "max_exp_avg_sq" not in state:
            state["max_exp_avg_sq"] = torch.zeros_like(state["exp_avg_sq"])
        allowed_m, allowed_v = self.sharing_allowed(hp)
        if "cprop_m" not in state and not allowed_m:
            state["cprop_m"] = state["exp_avg"].clone()
        if "cprop_v" not in state and not allowed_v:
            state["cprop_v"] = state["exp_avg_sq"].clone()
        d = g + hp["weight_decay"] * p if hp["weight_decay"] != 0.0 else g
        beta1, beta2 = hp["betas"]
        # Adam's own moments as torch's Adam writes them: no beta = 0 case (0 * inf is NaN
        # there, in torch and in the reference alike)
        state["exp_avg"].mul_(beta1).add_(d, alpha=1.0 - beta1)
        state["exp_avg_sq"].mul_(beta2).addcmul_(d, d, value=1.0 - beta2)
        if hp["amsgrad"]:
            torch.maximum(state["max_exp_avg_sq"], state["exp_avg_sq"], out=state["max_exp_avg_sq"])
        state["step"] += 1
        t = state["step"]
        beta = hp["cprop_beta"]
        if "cprop_m" in state:
            _fused_ema_(state["cprop_m"], g, beta)
        if "cprop_v" in state:
            _fused_square_ema_(state["cprop_v"], g, beta)
        m, v, _ = self._cprop_view(p, state)
        s = self._scale(m, v, t, hp)
        second = state["max_exp_avg_sq"] if hp["amsgrad"] else state["exp_avg_sq"]
        denom = (second.sqrt() / math.sqrt(1.0 - beta2**t)).add_(hp["eps"])
        delta = torch.zeros_like(p).addcdiv_(state["exp_avg"], denom, value=-hp["lr"] / (1.0 - beta1**t))
        return p.clone().addcmul_(scale_update(delta, s), torch.ones_like(s))


VALID = {
    "fused ops (CPropSGD)": FusedOpsSGD,
    "fused ops (CPropAdam)": FusedOpsAdam,
    "lerp keeping infinities": LerpKeepingInfinities,
}

fused_ops_sgd = broken_port(FusedOpsSGD)
fused_ops_adam = broken_port(FusedOpsAdam)
lerp_keeping_infinities = broken_port(LerpKeepingInfinities)
plain_lerp = broken_port(PlainLerp)


# -- Broken ports for the harness's former blind spots.


class StatisticsIn16Bits(CPropSGD):
    """CProp's statistics of float16 / bfloat16 parameters kept in the parameter's 16 bits
    (rounded after every step) instead of float32."""

    def _step_single(self, items):
        for p, grad, hp in items:
            dtype = statistics_dtype(p.dtype)
            state = self.state[p]
            p.copy_(self._step_tensor(p.to(dtype), grad.to(dtype), state, hp))
            if p.dtype != dtype:
                for key in ("cprop_m", "cprop_v"):
                    state[key].copy_(state[key].to(p.dtype))


class LostNonContiguousUpdate(CPropSGD):
    """Writes the new parameter through ``p.reshape(-1)``: for a non-contiguous parameter (a
    transposed weight, a strided slice) that is a copy, and the update is lost."""

    def _step_single(self, items):
        for p, grad, hp in items:
            dtype = statistics_dtype(p.dtype)
            new = self._step_tensor(p.to(dtype), grad.to(dtype), self.state[p], hp)
            p.reshape(-1).copy_(new.reshape(-1))


statistics_in_16_bits = broken_port(StatisticsIn16Bits)
lost_non_contiguous_update = broken_port(LostNonContiguousUpdate)


class LossyStateDict(CPropSGD):
    """``state_dict()`` leaves CProp's statistics out (only the step count and the momentum
    buffer are saved): after a resume the statistics start again from zero."""

    def state_dict(self):
        sd = super().state_dict()
        for entry in sd["state"].values():
            entry.pop("cprop_m", None)
            entry.pop("cprop_v", None)
        return sd


lossy_state_dict = broken_port(LossyStateDict)


class NoBetaZeroCase(CPropSGD):
    """``beta = 0`` without its special case: ``0 * v + g^2`` gives ``0 * inf = NaN`` once a
    square has overflowed."""

    def _update_and_scale(self, m, v, g, state, hp):
        beta = hp["cprop_beta"]
        m.mul_(beta).add_(g * (1.0 - beta))
        v.mul_(beta).add_(g * g * (1.0 - beta))
        state["step"] = state.get("step", 0) + 1
        return self._scale(m, v, state["step"], hp)


class BiasCorrectionDroppedAfter500(CPropSGD):
    """Drops the bias correction once ``t > 500`` (thinking ``1 - beta^t`` is 1 by then)."""

    def _scale(self, m, v, t, hp):
        return super()._scale(m, v, t, hp) if t <= 500 else scale_variant(m, v, t, hp, bias_correct=False)


class DampeningOnFirstStep(CPropSGD):
    """Momentum's first step takes the dampening too (torch's buffer starts as ``d``, undamped)."""

    def _new_param(self, p, g, s, state, hp):
        if hp["momentum"] != 0.0 and "momentum_buffer" not in state:
            state["momentum_buffer"] = torch.zeros_like(p)  # then buf = (1 - dampening) d
        return super()._new_param(p, g, s, state, hp)


no_beta_zero_case = broken_port(NoBetaZeroCase)
bias_correction_dropped_after_500 = broken_port(BiasCorrectionDroppedAfter500)
dampening_on_first_step = broken_port(DampeningOnFirstStep)


# -- Broken ports for what users rely on besides one parameter list's numbers.


class AcceptsInvalidHyperparameters(CPropSGD):
    """No check of the hyperparameters' ranges (only the constructor's cross-check of Nesterov
    remains): a negative learning rate or a ``cprop_beta`` of 1 is taken as given."""

    hyperparams = {name: (lambda name, value: value) for name in CPropSGD.hyperparams}


class StepRecordsAutograd(CPropSGD):
    """The step without ``torch.no_grad()``: on a model's parameters (leaves that require grad)
    the in-place update raises, or an autograd graph is recorded."""

    def step(self, closure=None):
        work = gradients_to_apply(self.param_groups, self._check_groups(), type(self).__name__)
        for items in work:
            self._step_single(items)


class FirstGroupsHyperparameters(CPropSGD):
    """Every parameter stepped with the first parameter group's hyperparameters."""

    def _check_groups(self):
        groups = super()._check_groups()
        return [groups[0] for _ in groups]


accepts_invalid_hyperparameters = broken_port(AcceptsInvalidHyperparameters)
step_records_autograd = broken_port(StepRecordsAutograd)
first_groups_hyperparameters = broken_port(FirstGroupsHyperparameters)


def declines_nearly_everything(config, params):
    """A port that implements only CPropSGD in float64 with the bft CDF and no weight decay,
    and declines the rest (each as Unsupported): whatever it runs is right, but it runs little."""
    from cprop_ref.conformance import Unsupported, torch_port

    hp = config.hyperparams
    if config.optimizer != "CPropSGD" or config.dtype != "float64" or hp["cprop_cdf"] != "bft" or hp["weight_decay"]:
        raise Unsupported(f"only CPropSGD in float64 with the bft CDF, no weight decay (not {config.name})")
    return torch_port(config, params)
