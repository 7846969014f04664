"""Deliberately broken variants of cprop-ref's torch port, one bug each, that the harness must catch.

Each is a small subclass of :class:`cprop_ref.torch.CPropSGD` (the CProp-Adam one of
:class:`cprop_ref.torch.CPropAdam`) that overrides one step of the algorithm, wrapped as a
port factory with :class:`cprop_ref.conformance.torch_adapter.TorchPort`. The harness must
catch every one with a report naming the quantity that differs.
"""

from __future__ import annotations

from typing import Any

import torch

from cprop_ref.conformance.torch_adapter import TorchPort
from cprop_ref.torch import CPropAdam, CPropSGD
from cprop_ref.torch.functional import BFT_CUBIC, cdf, standardized_mean


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
