"""The multi-tensor (``foreach=True``) path of the torch port: the eager port's operations
(:mod:`.functional`, ``adam``, ``sgd``) applied to lists of tensors of one device and dtype
with ``torch._foreach_*`` ops, one kernel launch per operation and list instead of per
tensor, and the same numbers: every product, sum and quotient is the eager one, rounded once.

Numbers that differ between tensors (the bias correction of each tensor's own step count)
are scalar lists; a choice that the eager port makes in Python per tensor (one sample:
``se = eps``; ``beta = 0``) is made here per tensor too.

Two things make it fast without changing a bit:

- **No fresh tensors on the CPU.** Every pass of a large step would otherwise allocate its
  result, and torch's CPU allocator returns large blocks to the system: each new tensor
  costs a page fault per 4 KiB, more than the pass itself. On the CPU the intermediate
  results go into a :class:`Workspace` (buffers kept between steps, as many as the step
  needs at once) with ``out=`` and in-place operations; on other devices (CUDA: a caching
  allocator) the out-of-place ``_foreach`` ops are used as they are.
- **The guards for the edges of the range run only where they matter.** ``torch.where``
  has no foreach form and each one is a pass. :func:`cprop_scales` computes ``z`` without
  them (the same operations in the same order, so the same value wherever it is finite:
  see :func:`cprop_scales`), checks that every ``z`` of a tensor is finite with one sum,
  and recomputes only the tensors where one is not with the guarded operations
  (:func:`cprop_scales_guarded`, the eager port's ``torch.where`` passes).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from ..scale import bias_correction, degrees_of_freedom
from .functional import BFO_LINEAR, BFT_CUBIC, BFT_LINEAR, LOGISTIC_SLOPE, cdf, standardized_mean

Tensors = list[torch.Tensor]
Operand = float | Sequence[float] | Sequence[torch.Tensor]

#: The logistic CDFs as ``F(z) = sigmoid(cubic z^3 + linear z)`` (``functional.cdf``).
LOGISTIC_COEFFICIENTS: dict[str, tuple[float, float]] = {
    "bft": (BFT_CUBIC, BFT_LINEAR),
    "bfo": (0.0, BFO_LINEAR),
    "logistic": (0.0, LOGISTIC_SLOPE),
}


class Workspace:
    """Scratch buffers for the intermediate results of a step on the CPU, kept between steps.

    :meth:`lists` returns ``count`` lists of tensors shaped like ``like``, views of one flat
    buffer per device and dtype that grows to the largest request and is reused: a step
    allocates nothing after the first (torch's CPU allocator would map and fault in fresh
    pages for every large intermediate). It is not state: not saved, not copied, rebuilt on
    demand. On other devices it hands out nothing (``None``): the ``_foreach`` ops allocate
    from the device's caching allocator and keep their one launch per list.
    """

    def __init__(self) -> None:
        self._buffers: dict[tuple[torch.device, torch.dtype], torch.Tensor] = {}

    def lists(self, like: Sequence[torch.Tensor], count: int) -> list[Tensors | None]:
        """``count`` lists of scratch tensors shaped like ``like`` (one device and dtype), or
        ``count`` times ``None`` where ``like`` is not on the CPU or is empty."""
        if not like or like[0].device.type != "cpu":
            return [None] * count
        sizes = [t.numel() for t in like]
        total = sum(sizes)
        key = (like[0].device, like[0].dtype)
        buffer = self._buffers.get(key)
        if buffer is None or buffer.numel() < count * total:
            buffer = torch.empty(count * total, dtype=like[0].dtype, device=like[0].device)
            self._buffers[key] = buffer
        out: list[Tensors | None] = []
        offset = 0
        for _ in range(count):
            views = []
            for t, size in zip(like, sizes):
                views.append(buffer[offset : offset + size].view(t.shape))
                offset += size
            out.append(views)
        return out


def into(outs: Tensors | None, name: str, xs: Sequence[torch.Tensor], other: Operand | None = None) -> Tensors:
    """``torch.<name>(xs[k], other[k])`` for every ``k``: written into ``outs`` (``out=``, the
    same kernel as the out-of-place op; ``outs`` may alias ``xs``) or, where ``outs`` is
    ``None``, the out-of-place ``torch._foreach_<name>``. ``other``: a number, or a list of
    numbers or tensors, or ``None`` for a unary op."""
    if outs is None:
        op = getattr(torch, f"_foreach_{name}")
        return list(op(xs) if other is None else op(xs, other))
    op = getattr(torch, name)
    per_tensor = isinstance(other, Sequence)
    for k, (x, out) in enumerate(zip(xs, outs)):
        if other is None:
            op(x, out=out)
        else:
            op(x, other[k] if per_tensor else other, out=out)  # type: ignore[index]
    return list(outs)


def update_ema_(
    xs: Sequence[torch.Tensor], ys: Sequence[torch.Tensor], beta: float, scratch: Tensors | None = None
) -> None:
    """In place: ``x <- beta x + (1 - beta) y`` for every pair (``functional.update_ema_``);
    ``(1 - beta) y`` goes into ``scratch`` (which may be ``ys`` itself where ``y`` is not needed
    afterwards)."""
    if not xs:
        return
    torch._foreach_mul_(xs, beta)
    torch._foreach_add_(xs, into(scratch, "mul", ys, 1.0 - beta))


def update_cprop_moment_(
    xs: Sequence[torch.Tensor], ys: Sequence[torch.Tensor], beta: float, scratch: Tensors | None = None
) -> None:
    """``functional.update_cprop_moment_``: ``beta = 0`` copies (``0 * inf`` would be NaN)."""
    if not xs:
        return
    if beta == 0.0:
        torch._foreach_copy_(xs, ys)
    else:
        update_ema_(xs, ys, beta, scratch)


def update_statistics_(
    ms: Sequence[torch.Tensor],
    vs: Sequence[torch.Tensor],
    gs: Sequence[torch.Tensor],
    beta: float,
    scratch: Tensors | None = None,
) -> None:
    """In place: ``m <- beta m + (1 - beta) g`` and ``v <- beta v + (1 - beta) g^2``; the
    temporaries in ``scratch`` (shaped like ``gs``) where given."""
    update_cprop_moment_(ms, gs, beta, scratch)
    squares = into(scratch, "mul", gs, gs)
    update_cprop_moment_(vs, squares, beta, scratch)


def _in_dtype(x: float, dtype: torch.dtype) -> float:
    """``x`` rounded to ``dtype``, as a tensor op rounds a Python scalar operand."""
    return torch.tensor(x, dtype=torch.float64).to(dtype).item()


def cprop_scales(
    ms: Sequence[torch.Tensor],
    vs: Sequence[torch.Tensor],
    ts: Sequence[int],
    *,
    beta: float,
    c: float,
    eps: float,
    cdf_name: str,
    scratch: Sequence[Tensors | None] = (None, None, None),
) -> Tensors:
    """``functional.cprop_scale`` of every ``(m, v, t)``: the scales in [0, 1], bit for bit.

    ``scratch``: three lists of buffers shaped like ``ms`` (or ``None``); the scales are
    returned in some of them, or in fresh tensors.

    The fast path computes ``m_hat / se = -z`` with none of the eager port's guards: the
    same operations in the same order, so the same value wherever it is finite. Where the
    two may differ, it is not: an overflowed ``m_hat`` (finite ``m``) makes the variance
    ``-inf`` (clamped to 0) or NaN, hence ``se = eps`` and ``m_hat / se`` infinite, or NaN;
    ``v_hat = inf`` with a finite ``m_hat^2`` gives ``se = inf`` on both sides, with an
    infinite one a NaN variance here; ``se = 0`` gives ``+-inf`` or ``0 / 0``; a non-finite
    moment gives a non-finite ``m_hat``. The guard ``variance == 0 -> 0`` is not needed where
    ``n - 1 + eps`` is positive in the dtype (``0 / k = 0``); one sample (``n - 1 = 0``) and a
    denominator that rounds to 0 take the guarded path. A tensor with a non-finite value
    (its sum is then not finite) is recomputed by :func:`cprop_scales_guarded`; every other
    tensor goes on to the CDF with ``z`` negated in the coefficients (``F(z) = sigmoid(c3 z^3
    + c1 z)`` is ``sigmoid((-c3) (-z)^3 + (-c1)(-z))``, exactly: negation is exact and
    ``(-x)^3 = -(x^3)``).
    """
    if not ms:
        return []
    if min(ts) < 1:
        raise ValueError(f"the CProp scale needs at least one gradient; t={min(ts)}")
    dtype = ms[0].dtype
    dofs = [degrees_of_freedom(beta, t) for t in ts]
    fast = [k for k, dof in enumerate(dofs) if dof != 0.0 and _in_dtype(dof + eps, dtype) > 0.0]
    out: list[torch.Tensor | None] = [None] * len(ms)
    if fast:
        pick = [None if s is None else [s[k] for k in fast] for s in scratch]
        bs = [bias_correction(beta, ts[k]) for k in fast]
        m_hats = into(pick[0], "div", [ms[k] for k in fast], bs)
        variances = into(pick[1], "div", [vs[k] for k in fast], bs)
        torch._foreach_sub_(variances, into(pick[2], "mul", m_hats, m_hats))
        torch._foreach_clamp_min_(variances, 0.0)
        torch._foreach_div_(variances, [dofs[k] + eps for k in fast])
        torch._foreach_sqrt_(variances)
        torch._foreach_add_(variances, eps)
        neg_zs = into(pick[0], "div", m_hats, variances)  # m_hat / se = -z
        finite = torch.stack([z.sum() for z in neg_zs]).isfinite().tolist()
        ps = _cdf_of_negated(neg_zs, cdf_name, pick[2])
        torch._foreach_sub_(ps, 0.5)
        torch._foreach_abs_(ps)
        torch._foreach_mul_(ps, 2.0 * c)
        torch._foreach_clamp_max_(ps, 1.0)
        for k, p, ok in zip(fast, ps, finite):
            out[k] = p if ok else None
    rest = [k for k in range(len(ms)) if out[k] is None]
    if rest:
        redone = cprop_scales_guarded(
            [ms[k] for k in rest],
            [vs[k] for k in rest],
            [ts[k] for k in rest],
            beta=beta,
            c=c,
            eps=eps,
            cdf_name=cdf_name,
        )
        for k, s in zip(rest, redone):
            out[k] = s
    return out  # type: ignore[return-value]


def _cdf_of_negated(neg_zs: Tensors, cdf_name: str, scratch: Tensors | None) -> Tensors:
    """``F(z)`` (``functional.cdf``) from ``-z``, overwriting ``neg_zs`` (and ``scratch``)."""
    if cdf_name == "normal":
        torch._foreach_neg_(neg_zs)
        for z in neg_zs:
            torch.special.ndtr(z, out=z)
        return neg_zs
    if cdf_name not in LOGISTIC_COEFFICIENTS:
        raise ValueError(f"invalid cdf={cdf_name!r}: must be one of normal, {', '.join(LOGISTIC_COEFFICIENTS)}")
    cubic, linear = LOGISTIC_COEFFICIENTS[cdf_name]
    if cubic == 0.0:
        torch._foreach_mul_(neg_zs, -linear)
        q = neg_zs
    else:
        q = into(scratch, "pow", neg_zs, 3)
        torch._foreach_mul_(q, -cubic)
        torch._foreach_mul_(neg_zs, -linear)
        torch._foreach_add_(q, neg_zs)
    torch._foreach_sigmoid_(q)
    return q


def cprop_scales_guarded(
    ms: Sequence[torch.Tensor],
    vs: Sequence[torch.Tensor],
    ts: Sequence[int],
    *,
    beta: float,
    c: float,
    eps: float,
    cdf_name: str,
) -> Tensors:
    """``functional.cprop_scale`` of every ``(m, v, t)`` with every guard of the eager port
    (fresh tensors; the path of :func:`cprop_scales` for the tensors its fast path cannot take)."""
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


def scale_updates(updates: Sequence[torch.Tensor], scales: Tensors) -> Tensors:
    """``functional.scale_update`` of every pair, written into ``scales``: ``update * s``, 0
    where ``s == 0``. Where every element of an update is finite, ``update * 0`` is already a
    zero (of the update's sign, which changes no parameter's value: ``p + -0 == p``), so only
    tensors whose update has an infinite or NaN element (its sum is then not finite) take the
    guard, a ``torch.where`` pass."""
    finite = torch.stack([u.sum() for u in updates]).isfinite().tolist() if updates else []
    for k, ok in enumerate(finite):
        if not ok:
            scales[k] = torch.where(scales[k] == 0.0, torch.zeros_like(updates[k]), updates[k] * scales[k])
    plain = [k for k, ok in enumerate(finite) if ok]
    if plain:
        torch._foreach_mul_([scales[k] for k in plain], [updates[k] for k in plain])  # s u == u s
    return scales


def pick(lists: Tensors | None, indices: Sequence[int]) -> Tensors | None:
    """``lists[k]`` for ``k`` in ``indices`` (``None`` stays ``None``)."""
    return None if lists is None else [lists[k] for k in indices]


def group_by_device_and_dtype(
    indices: Sequence[int], tensors: Sequence[torch.Tensor]
) -> dict[tuple[torch.device, torch.dtype], list[int]]:
    """``indices`` grouped by their tensor's ``(device, dtype)``, in order (as torch.optim
    groups them for its foreach and fused kernels)."""
    groups: dict[tuple[torch.device, torch.dtype], list[int]] = {}
    for k in indices:
        groups.setdefault((tensors[k].device, tensors[k].dtype), []).append(k)
    return groups
