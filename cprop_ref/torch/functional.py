"""CProp's statistics and scale on torch tensors (``docs/algorithm.md``, "One step of CProp"); pure functions except
the ``_``-suffixed ones, which update their first arguments in place as torch's do.

Hyperparameters are Python floats: torch treats them as weak scalars, so float32 tensors
stay float32 and the bias correction ``1 - beta**t`` and ``n`` are computed in double
precision and rounded once, exactly as the NumPy reference does.
"""

from __future__ import annotations

import math

import torch

from ..scale import bias_correction, degrees_of_freedom

#: Bowling et al. (2009) "best fit two" coefficients.
BFT_CUBIC = 0.07056
BFT_LINEAR = 1.5976
#: Bowling et al. (2009) "best fit one" coefficient.
BFO_LINEAR = 1.702
#: A logistic with the variance of the standard normal has scale sqrt(3) / pi.
LOGISTIC_SLOPE = math.pi / math.sqrt(3.0)
CDF_NAMES: tuple[str, ...] = ("normal", "bft", "bfo", "logistic")


def statistics_dtype(dtype: torch.dtype) -> torch.dtype:
    """CProp's statistics (and the update) are computed in float32 for 16-bit parameters:
    in float16 ``eps = 1e-8`` underflows to 0 and a zero gradient would give 0/0."""
    return torch.float32 if dtype in (torch.float16, torch.bfloat16) else dtype


def update_ema_(x: torch.Tensor, y: torch.Tensor, beta: float) -> None:
    """In place: ``x <- beta x + (1 - beta) y`` (the reference's order of operations: two
    products and a sum, each rounded once)."""
    x.mul_(beta).add_(y * (1.0 - beta))


def update_cprop_moment_(x: torch.Tensor, y: torch.Tensor, beta: float) -> None:
    """In place: one of CProp's moments, ``x <- beta x + (1 - beta) y``. ``beta = 0`` keeps no
    memory: the old value does not enter at all (written as ``0 * x`` it would give
    ``0 * inf = NaN`` after a square overflowed), as in the reference."""
    if beta == 0.0:
        x.copy_(y)
    else:
        update_ema_(x, y, beta)


def update_statistics_(m: torch.Tensor, v: torch.Tensor, g: torch.Tensor, beta: float) -> None:
    """In place: ``m <- beta m + (1 - beta) g`` and ``v <- beta v + (1 - beta) g^2``."""
    update_cprop_moment_(m, g, beta)
    update_cprop_moment_(v, g * g, beta)


def cdf(z: torch.Tensor, name: str) -> torch.Tensor:
    """``p = F(z)`` for the four CDFs; ``torch.sigmoid`` and ``torch.special.ndtr`` saturate
    to exactly 0 and 1 (also at ``z = +-inf``) without NaN."""
    if name == "normal":
        return torch.special.ndtr(z)
    if name == "bft":
        return torch.sigmoid(BFT_CUBIC * z**3 + BFT_LINEAR * z)
    if name == "bfo":
        return torch.sigmoid(BFO_LINEAR * z)
    if name == "logistic":
        return torch.sigmoid(LOGISTIC_SLOPE * z)
    raise ValueError(f"invalid cdf={name!r}: must be one of {', '.join(CDF_NAMES)}")


def standard_error(m_hat: torch.Tensor, v_hat: torch.Tensor, dof: float, eps: float) -> torch.Tensor:
    """``se = sqrt(max(v_hat - m_hat^2, 0) / (n - 1 + eps)) + eps`` with ``dof = n - 1``.

    ``dof == 0`` (one sample: the first step, or ``beta = 0``) gives ``se = eps`` exactly; an
    overflowed ``v_hat = inf`` gives ``se = inf``; a zero variance over a denominator that
    underflowed to 0 stays 0 (not 0/0).
    """
    if dof == 0.0:
        return torch.full_like(m_hat, eps)
    difference = v_hat - m_hat * m_hat
    difference = torch.where(torch.isinf(v_hat) & torch.isnan(difference), torch.inf, difference)
    variance = torch.clamp_min(difference, 0.0)
    ratio = torch.where(variance == 0.0, torch.zeros_like(variance), variance / (dof + eps))
    return torch.sqrt(ratio) + eps


def standardized_mean(m_hat: torch.Tensor, se: torch.Tensor) -> torch.Tensor:
    """``z = -m_hat / se``; where ``se == 0`` (eps = 0): ``-sign(m_hat) inf``, or 0 if ``m_hat == 0``."""
    z = -m_hat / se
    degenerate = se == 0.0
    limit = torch.where(m_hat == 0.0, torch.zeros_like(m_hat), -torch.sign(m_hat) * torch.inf)
    return torch.where(degenerate, limit, z)


def cprop_scale(
    m: torch.Tensor, v: torch.Tensor, t: int, *, beta: float, c: float, eps: float, cdf_name: str
) -> torch.Tensor:
    """The scale ``s = min(2 c |F(-m_hat / se) - 0.5|, 1)`` in [0, 1] after ``t >= 1`` gradients."""
    if t < 1:
        raise ValueError(f"the CProp scale needs at least one gradient; t={t}")
    b = bias_correction(beta, t)
    m_hat = m / b
    v_hat = v / b
    # The bias-corrected mean of finite gradients is at most the largest of them; where the
    # quotient rounds past the range it is clamped to that value, not inf (as the reference).
    overflowed = torch.isinf(m_hat) & torch.isfinite(m)  # no .any(): no device sync
    largest = torch.finfo(m_hat.dtype).max
    m_hat = torch.where(overflowed, torch.copysign(torch.full_like(m_hat, largest), m), m_hat)
    se = standard_error(m_hat, v_hat, degrees_of_freedom(beta, t), eps)
    p = cdf(standardized_mean(m_hat, se), cdf_name)
    return torch.clamp_max(2.0 * c * torch.abs(p - 0.5), 1.0)


def scale_update(update: torch.Tensor, s: torch.Tensor) -> torch.Tensor:
    """``update * s`` with ``0 * inf = 0``: a scale of 0 is no update at all, also where the
    base update overflowed to inf (IEEE would give NaN from finite gradients), as the reference."""
    return torch.where(s == 0.0, torch.zeros_like(update), update * s)
