"""Pure update rules of the base optimizers (torch.optim semantics).

Each rule takes the parameter, the gradient and the optimizer's per-tensor state,
and returns the *new* state and the update direction or the new parameter; nothing
is modified in place. The optimizer classes in :mod:`cprop_ref.optim` apply these.
Arithmetic runs in the dtype of the arrays; hyperparameters are Python floats
(weak scalars in NumPy 2), so float32 stays float32.
"""

from __future__ import annotations

import math
from typing import Any, NamedTuple

import numpy as np


def sgd_direction(
    param: np.ndarray,
    grad: np.ndarray,
    momentum_buffer: np.ndarray | None,
    *,
    momentum: float,
    dampening: float,
    weight_decay: float,
    nesterov: bool,
) -> tuple[np.ndarray, np.ndarray | None]:
    """SGD's descent direction ``d`` (the update is ``param - lr * d``) and the new buffer.

    ``d = g + wd * param``; with momentum ``buf <- d`` on the first step (``buf is None``),
    else ``buf <- momentum * buf + (1 - dampening) * d``; then ``d <- d + momentum * buf``
    (Nesterov) or ``d <- buf``. Without momentum the buffer stays ``None``.
    """
    d = grad + weight_decay * param if weight_decay != 0.0 else grad
    if momentum == 0.0:
        return d, None
    if momentum_buffer is None:
        buf = np.array(d, copy=True)
    else:
        buf = momentum * momentum_buffer + (1.0 - dampening) * d
    d = d + momentum * buf if nesterov else buf
    return d, buf


class AdamMoments(NamedTuple):
    """Adam's per-tensor state: first and second moment, AMSGrad's running max, step count."""

    exp_avg: np.ndarray
    exp_avg_sq: np.ndarray
    max_exp_avg_sq: np.ndarray | None
    step: int


def adam_moments(moments: AdamMoments, d: np.ndarray, *, beta1: float, beta2: float, amsgrad: bool) -> AdamMoments:
    """``m <- b1 m + (1 - b1) d``, ``v <- b2 v + (1 - b2) d^2``, AMSGrad max, ``step + 1``.

    ``d`` is the gradient, with coupled weight decay already added for Adam. The first
    moment is written as a weighted sum, not torch's ``lerp``, so that it is bit for bit
    CProp's ``m`` when ``beta1 == cprop_beta`` (the two differ in rounding only).
    """
    with np.errstate(over="ignore"):  # as in torch, a square past the range is inf, silently
        exp_avg = beta1 * moments.exp_avg + (1.0 - beta1) * d
        exp_avg_sq = beta2 * moments.exp_avg_sq + (1.0 - beta2) * (d * d)
    max_sq = np.maximum(moments.max_exp_avg_sq, exp_avg_sq) if amsgrad else moments.max_exp_avg_sq
    return AdamMoments(exp_avg, exp_avg_sq, max_sq, moments.step + 1)


def adam_delta(moments: AdamMoments, *, lr: float, beta1: float, beta2: float, eps: float, amsgrad: bool) -> np.ndarray:
    """Adam's update ``delta`` (the new parameter is ``param + delta``), torch's formula:

    ``delta = -lr / (1 - b1^t) * m / (sqrt(v) / sqrt(1 - b2^t) + eps)``, with ``v`` the
    AMSGrad maximum when ``amsgrad``. The step size and ``sqrt(1 - b2^t)`` are computed
    as Python floats (double precision) and rounded once to the array dtype, as torch does.
    """
    t = moments.step
    step_size = lr / (1.0 - beta1**t)
    bias_correction2_sqrt = math.sqrt(1.0 - beta2**t)
    second = moments.max_exp_avg_sq if amsgrad else moments.exp_avg_sq
    denom = np.sqrt(second) / bias_correction2_sqrt + eps
    return -step_size * (moments.exp_avg / denom)


def cprop_adam_sharing_allowed(group: dict[str, Any]) -> tuple[bool, bool]:
    """Whether Adam's first and second moments equal CProp-Adam's ``m`` and ``v`` under the
    hyperparameters ``group``: no weight decay (Adam's moments then average the raw gradient,
    as CProp's do) and ``beta1 == cprop_beta`` (``beta2 == cprop_beta``)."""
    beta1, beta2 = group["betas"]
    raw = group["weight_decay"] == 0.0
    return raw and beta1 == group["cprop_beta"], raw and beta2 == group["cprop_beta"]


def cprop_adam_shares_moments(state: dict[str, Any], group: dict[str, Any]) -> tuple[bool, bool]:
    """Whether a tensor's CProp-Adam ``state`` holds CProp's ``m`` (``v``) inside Adam's moment:
    it has no ``cprop_m`` (``cprop_v``) entry; a tensor never stepped shares what ``group`` allows."""
    if not state:
        return cprop_adam_sharing_allowed(group)
    return "cprop_m" not in state, "cprop_v" not in state


def cprop_adam_private_moments(state: dict[str, Any], group: dict[str, Any]) -> tuple[bool, bool]:
    """Whether this step of CProp-Adam keeps CProp's first (second) moment apart from Adam's: it
    is not shared now, or sharing stopped being allowed (then it continues, private, from
    Adam's current value, which is exactly CProp's)."""
    shares_m, shares_v = cprop_adam_shares_moments(state, group)
    allowed_m, allowed_v = cprop_adam_sharing_allowed(group)
    return not (shares_m and allowed_m), not (shares_v and allowed_v)
