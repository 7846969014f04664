"""A diagonal quadratic with additive Gaussian gradient noise."""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np


@dataclass(frozen=True)
class NoisyQuadratic:
    """``f(x) = 0.5 * sum_i h_i x_i^2`` with ``h`` log-spaced from 1 down to ``1 / condition``.

    Gradient ``h * x``; the stochastic gradient adds independent ``N(0, noise^2)`` noise
    to every element. Minimiser ``x = 0``, minimum 0. Default start: all ones.
    """

    dim: int = 20
    condition: float = 100.0
    noise: float = 0.1
    curvature: np.ndarray = field(init=False, repr=False)

    def __post_init__(self) -> None:
        if self.dim < 1:
            raise ValueError(f"invalid dim={self.dim!r}: must be >= 1")
        if not self.condition >= 1.0:
            raise ValueError(f"invalid condition={self.condition!r}: must be >= 1")
        if not self.noise >= 0.0:
            raise ValueError(f"invalid noise={self.noise!r}: must be >= 0")
        object.__setattr__(self, "curvature", np.logspace(0.0, -np.log10(self.condition), self.dim))

    def default_start(self) -> np.ndarray:
        return np.ones(self.dim)

    def value(self, x: np.ndarray) -> np.ndarray:
        return 0.5 * np.sum(self.curvature * x * x, axis=-1)

    def gradient(self, x: np.ndarray) -> np.ndarray:
        return self.curvature * x

    def stochastic_gradient(self, x: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        return self.gradient(x) + self.noise * rng.standard_normal(x.shape)
