"""The Noisy Quadratic Model of Zhang et al. (2019), with its closed-form SGD loss.

Zhang, Li, Nado, Martens, Sachdeva, Dahl, Shallue, Grosse, "Which Algorithmic Choices
Matter at Which Batch Sizes? Insights From a Noisy Quadratic Model", NeurIPS 2019.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import ClassVar

import numpy as np

from .base import MinimumAtOrigin, Problem, check_non_negative, check_positive_int


@dataclass(frozen=True, kw_only=True)
class NoisyQuadraticModel(MinimumAtOrigin, Problem):
    """``f(x) = 0.5 sum_i h_i x_i^2`` with ``h_i = 1 / i`` (``i = 1..dim``).

    Gradient ``h * x``; the stochastic gradient is ``h * x + xi`` with
    ``xi ~ N(0, C)``, ``C = H / batch_size`` (diagonal), plus the additive ``noise`` if set,
    so the per-coordinate noise variance is ``c_i = h_i / batch_size + noise^2``.
    Minimiser 0, minimum 0; default start all ones.
    """

    dim: int = 100
    batch_size: float = 1.0
    curvature: np.ndarray = field(init=False, repr=False, compare=False)

    name: ClassVar[str] = "nqm"
    summary: ClassVar[str] = "Noisy Quadratic Model (Zhang et al. 2019), h_i = 1/i, noise covariance H/batch_size"
    noise_models: ClassVar[str] = "batch_size (noise covariance H/batch_size); noise (additive Gaussian, std)"
    target_gap: ClassVar[float | None] = 0.3
    default_lr: ClassVar[dict[str, float]] = {"sgd": 0.5, "adam": 1e-2}

    def __post_init__(self) -> None:
        super().__post_init__()
        check_positive_int("dim", self.dim)
        if check_non_negative("batch_size", self.batch_size) <= 0:
            raise ValueError(f"invalid batch_size={self.batch_size!r}: must be > 0")
        object.__setattr__(self, "curvature", 1.0 / np.arange(1, self.dim + 1))

    @property
    def noise_variance(self) -> np.ndarray:
        """``c_i = h_i / batch_size + noise^2``: the variance of gradient element ``i``."""
        return self.curvature / self.batch_size + self.noise**2

    def default_start(self) -> np.ndarray:
        return np.ones(self.dim)

    def _value(self, x: np.ndarray) -> np.ndarray:
        return 0.5 * np.sum(self.curvature.astype(x.dtype) * x * x, axis=-1)

    def _gradient(self, x: np.ndarray) -> np.ndarray:
        return self.curvature.astype(x.dtype) * x

    def _sample_gradient(self, x: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        sd = np.sqrt(self.curvature / self.batch_size).astype(x.dtype)
        return self._gradient(x) + sd * rng.standard_normal(x.shape, dtype=x.dtype)

    def expected_sgd_loss(self, lr: float, steps: int, start: np.ndarray | None = None) -> np.ndarray:
        """``E[f(x_t)]`` for ``t = 0..steps`` under plain SGD ``x <- x - lr * g`` (closed form).

        Each coordinate is an independent linear recursion
        ``x_i <- (1 - lr h_i) x_i - lr xi_i``, so with ``r_i = (1 - lr h_i)^2``:
        ``E[x_i(t)^2] = r_i^t x_i(0)^2 + lr^2 c_i (1 - r_i^t) / (1 - r_i)``
        (the geometric sum is ``t`` where ``r_i = 1``), and ``E[f] = 0.5 sum_i h_i E[x_i^2]``.
        """
        check_non_negative("lr", lr)
        check_positive_int("steps", steps, minimum=0)
        x0 = self.default_start() if start is None else np.asarray(self.check_point(start), dtype=np.float64)
        if x0.shape != (self.dim,):
            raise ValueError(f"start has shape {x0.shape}; ({self.dim},) expected")
        t = np.arange(steps + 1)[:, None]
        r = (1.0 - lr * self.curvature) ** 2
        with np.errstate(over="ignore", invalid="ignore", divide="ignore"):
            decay = r**t
            geometric = np.where(r == 1.0, t * 1.0, (1.0 - decay) / (1.0 - r))
        second_moment = decay * x0**2 + lr**2 * self.noise_variance * geometric
        return 0.5 * np.sum(self.curvature * second_moment, axis=-1)
