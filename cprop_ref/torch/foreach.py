"""The multi-tensor (``foreach=True``) path of the torch port: the eager port's operations
(:mod:`.functional`, ``adam``, ``sgd``) applied to lists of tensors of one device and dtype
with ``torch._foreach_*`` ops, one kernel launch per operation and list instead of per
tensor, and the same numbers: every product, sum and quotient is the eager one, rounded once.

Numbers that differ between tensors (the bias correction of each tensor's own step count)
are scalar lists; a choice that the eager port makes in Python per tensor (one sample:
``se = eps``; ``beta = 0``) is made here per tensor too. ``torch.where`` has no foreach form:
the few selections (overflow, ``0 * inf``) are per tensor.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from ..scale import bias_correction, degrees_of_freedom
from .functional import cdf, standardized_mean

Tensors = list[torch.Tensor]


def update_ema_(xs: Sequence[torch.Tensor], ys: Sequence[torch.Tensor], beta: float) -> None:
    """In place: ``x <- beta x + (1 - beta) y`` for every pair (``functional.update_ema_``)."""
    if not xs:
        return
    torch._foreach_mul_(xs, beta)
    torch._foreach_add_(xs, torch._foreach_mul(ys, 1.0 - beta))


def update_cprop_moment_(xs: Sequence[torch.Tensor], ys: Sequence[torch.Tensor], beta: float) -> None:
    """``functional.update_cprop_moment_``: ``beta = 0`` copies (``0 * inf`` would be NaN)."""
    if not xs:
        return
    if beta == 0.0:
        torch._foreach_copy_(xs, ys)
    else:
        update_ema_(xs, ys, beta)


def update_statistics_(
    ms: Sequence[torch.Tensor], vs: Sequence[torch.Tensor], gs: Sequence[torch.Tensor], beta: float
) -> None:
    """In place: ``m <- beta m + (1 - beta) g`` and ``v <- beta v + (1 - beta) g^2``."""
    update_cprop_moment_(ms, gs, beta)
    update_cprop_moment_(vs, torch._foreach_mul(gs, gs), beta)


def cprop_scales(
    ms: Sequence[torch.Tensor],
    vs: Sequence[torch.Tensor],
    ts: Sequence[int],
    *,
    beta: float,
    c: float,
    eps: float,
    cdf_name: str,
) -> Tensors:
    """``functional.cprop_scale`` of every ``(m, v, t)``: the scales in [0, 1]."""
    if not ms:
        return []
    if min(ts) < 1:
        raise ValueError(f"the CProp scale needs at least one gradient; t={min(ts)}")
    bs = [bias_correction(beta, t) for t in ts]
    m_hats = list(torch._foreach_div(ms, bs))
    v_hats = torch._foreach_div(vs, bs)
    for k, (m, m_hat) in enumerate(zip(ms, m_hats)):
        # Clamped to the largest finite value where a finite mean's quotient overflowed.
        overflowed = torch.isinf(m_hat) & torch.isfinite(m)
        largest = torch.full_like(m_hat, torch.finfo(m_hat.dtype).max)
        m_hats[k] = torch.where(overflowed, torch.copysign(largest, m), m_hat)
    ses = standard_errors(m_hats, v_hats, [degrees_of_freedom(beta, t) for t in ts], eps)
    zs = [standardized_mean(m_hat, se) for m_hat, se in zip(m_hats, ses)]
    ps = [cdf(z, cdf_name) for z in zs]
    torch._foreach_sub_(ps, 0.5)
    torch._foreach_abs_(ps)
    torch._foreach_mul_(ps, 2.0 * c)
    torch._foreach_clamp_max_(ps, 1.0)
    return ps


def standard_errors(m_hats: Tensors, v_hats: Tensors, dofs: Sequence[float], eps: float) -> Tensors:
    """``functional.standard_error`` of every tensor: ``sqrt(max(v - m^2, 0) / (n - 1 + eps)) + eps``,
    exactly ``eps`` where the tensor has one sample (``dof == 0``)."""
    out: list[torch.Tensor | None] = [None] * len(m_hats)
    several = [k for k, dof in enumerate(dofs) if dof != 0.0]
    for k, dof in enumerate(dofs):
        if dof == 0.0:
            out[k] = torch.full_like(m_hats[k], eps)
    if several:
        m_hat = [m_hats[k] for k in several]
        v_hat = [v_hats[k] for k in several]
        differences = torch._foreach_sub(v_hat, torch._foreach_mul(m_hat, m_hat))
        variances = []
        for v, difference in zip(v_hat, differences):
            difference = torch.where(torch.isinf(v) & torch.isnan(difference), torch.inf, difference)
            variances.append(torch.clamp_min(difference, 0.0))
        ratios = torch._foreach_div(variances, [dofs[k] + eps for k in several])
        ratios = [torch.where(var == 0.0, torch.zeros_like(var), r) for var, r in zip(variances, ratios)]
        torch._foreach_sqrt_(ratios)
        torch._foreach_add_(ratios, eps)
        for k, se in zip(several, ratios):
            out[k] = se
    return out  # type: ignore[return-value]


def scale_updates(updates: Sequence[torch.Tensor], scales: Sequence[torch.Tensor]) -> Tensors:
    """``functional.scale_update`` of every pair: ``update * s``, 0 where ``s == 0``."""
    products = torch._foreach_mul(updates, scales)
    return [torch.where(s == 0.0, torch.zeros_like(u), us) for u, s, us in zip(updates, scales, products)]


def group_by_device_and_dtype(
    indices: Sequence[int], tensors: Sequence[torch.Tensor]
) -> dict[tuple[torch.device, torch.dtype], list[int]]:
    """``indices`` grouped by their tensor's ``(device, dtype)``, in order (as torch.optim
    groups them for its foreach and fused kernels)."""
    groups: dict[tuple[torch.device, torch.dtype], list[int]] = {}
    for k in indices:
        groups.setdefault((tensors[k].device, tensors[k].dtype), []).append(k)
    return groups
