"""A noisy quadratic in the style of DeepOBS ``quadratic_deep`` (Schneider et al. 2019)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import ClassVar

import numpy as np
from scipy.stats import special_ortho_group

from .base import Problem, batch_indices, check_non_negative, check_positive_int


@dataclass(frozen=True, kw_only=True)
class QuadraticDeep(Problem):
    """``f(theta) = mean_j 0.5 (theta - z_j)^T H (theta - z_j)`` over a seeded data set.

    ``H = Q^T diag(lambda) Q`` in 100 dimensions with 90 eigenvalues drawn uniformly from
    (0, 1) and 10 from (30, 60) (DeepOBS's "deep learning" spectrum: a few large
    curvatures, many small ones), ``Q`` a random rotation; the data ``z_j ~ N(0,
    noise_level^2 I)``, ``train_size`` of them. Everything comes from ``seed``: two
    instances with the same options are identical.

    Writing ``zbar`` for the data mean, ``f(theta) = 0.5 (theta - zbar)^T H (theta - zbar)
    + f_min`` with ``f_min = mean_j 0.5 (z_j - zbar)^T H (z_j - zbar)``; the gradient is
    ``H (theta - zbar)``, the minimiser ``zbar``. The mini-batch gradient replaces ``zbar``
    by the mean of ``batch_size`` examples drawn with replacement. Default start: all ones.
    """

    small: int = 90
    large: int = 10
    train_size: int = 1000
    batch_size: int = 128
    noise_level: float = 0.6
    seed: int = 42
    hessian: np.ndarray = field(init=False, repr=False, compare=False)
    data: np.ndarray = field(init=False, repr=False, compare=False)
    data_mean: np.ndarray = field(init=False, repr=False, compare=False)
    loss_floor: float = field(init=False, repr=False, compare=False)

    name: ClassVar[str] = "quadratic-deep"
    summary: ClassVar[str] = "DeepOBS-style noisy quadratic, 100-D: 90 eigenvalues in (0,1), 10 in (30,60), rotated"
    noise_models: ClassVar[str] = "batch_size (mini-batches of the data); noise (additive Gaussian, std)"
    target_gap: ClassVar[float | None] = 0.165
    default_lr: ClassVar[dict[str, float]] = {"sgd": 1e-2, "adam": 1e-2}

    def __post_init__(self) -> None:
        super().__post_init__()
        check_positive_int("small", self.small, minimum=0)
        check_positive_int("large", self.large, minimum=0)
        check_positive_int("small + large", self.small + self.large)
        check_positive_int("train_size", self.train_size)
        check_positive_int("batch_size", self.batch_size)
        check_non_negative("noise_level", self.noise_level)
        check_positive_int("seed", self.seed, minimum=0)
        rng = np.random.default_rng(self.seed)
        eigenvalues = np.concatenate([rng.uniform(0.0, 1.0, self.small), rng.uniform(30.0, 60.0, self.large)])
        q = special_ortho_group.rvs(self.dim, random_state=rng) if self.dim > 1 else np.ones((1, 1))
        hessian = q.T @ (eigenvalues[:, None] * q)
        object.__setattr__(self, "hessian", 0.5 * (hessian + hessian.T))  # exactly symmetric
        data = self.noise_level * rng.standard_normal((self.train_size, self.dim))
        centred = data - data.mean(axis=0)
        object.__setattr__(self, "data", data)
        object.__setattr__(self, "data_mean", data.mean(axis=0))
        object.__setattr__(
            self, "loss_floor", float(0.5 * np.mean(np.sum((centred @ self.hessian) * centred, axis=-1)))
        )

    @property
    def dim(self) -> int:
        return self.small + self.large

    @property
    def minimisers(self) -> np.ndarray:
        return self.data_mean[None, :].copy()

    @property
    def minimum(self) -> float:
        return self.loss_floor

    def default_start(self) -> np.ndarray:
        return np.ones(self.dim)

    def _value(self, x: np.ndarray) -> np.ndarray:
        d = x - self.data_mean.astype(x.dtype)
        return 0.5 * np.sum((d @ self.hessian.astype(x.dtype)) * d, axis=-1) + self.loss_floor

    def _gradient(self, x: np.ndarray) -> np.ndarray:
        return (x - self.data_mean.astype(x.dtype)) @ self.hessian.astype(x.dtype)

    def _sample_gradient(self, x: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        idx = batch_indices(rng, x.shape[:-1], self.train_size, self.batch_size)
        batch_mean = self.data[idx].mean(axis=-2).astype(x.dtype)
        return (x - batch_mean) @ self.hessian.astype(x.dtype)
