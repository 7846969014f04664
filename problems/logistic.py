"""L2-regularised logistic regression on a seeded synthetic data set."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import ClassVar

import numpy as np
from scipy.special import expit

from .base import Problem, batch_indices, check_non_negative, check_positive_int

#: Newton's method stops when a step moves the weights by less than this (max norm).
_NEWTON_TOLERANCE = 1e-13


@dataclass(frozen=True, kw_only=True)
class LogisticRegression(Problem):
    """``f(w) = mean_j [log(1 + exp(z_j)) - y_j z_j] + 0.5 l2 |w|^2`` with ``z_j = a_j . w``.

    Data (from ``seed``): features ``a_j ~ N(0, I)`` (``features`` of them, the last one a
    constant 1 for the intercept), labels ``y_j ~ Bernoulli(sigmoid(a_j . w_true))`` with
    ``w_true ~ N(0, I)``. Gradient ``mean_j (sigmoid(z_j) - y_j) a_j + l2 w``; the
    mini-batch gradient averages ``batch_size`` examples drawn with replacement.
    With ``l2 > 0`` the loss is strictly convex: its minimiser is computed once by
    Newton's method (Hessian ``mean_j s_j (1 - s_j) a_j a_j^T + l2 I``) to rounding
    accuracy. Default start: zeros (the loss there is ``log 2``).
    """

    samples: int = 1000
    features: int = 10
    batch_size: int = 32
    l2: float = 1e-3
    seed: int = 0
    inputs: np.ndarray = field(init=False, repr=False, compare=False)
    labels: np.ndarray = field(init=False, repr=False, compare=False)
    solution: np.ndarray = field(init=False, repr=False, compare=False)

    name: ClassVar[str] = "logistic"
    summary: ClassVar[str] = "L2-regularised logistic regression on seeded synthetic data"
    noise_models: ClassVar[str] = "batch_size (mini-batches of the data); noise (additive Gaussian, std)"
    target_gap: ClassVar[float | None] = 1e-3
    default_lr: ClassVar[dict[str, float]] = {"sgd": 0.5, "adam": 1e-2}

    def __post_init__(self) -> None:
        super().__post_init__()
        check_positive_int("samples", self.samples)
        check_positive_int("features", self.features)
        check_positive_int("batch_size", self.batch_size)
        if check_non_negative("l2", self.l2) <= 0:
            raise ValueError(f"invalid l2={self.l2!r}: must be > 0 (the minimiser must be unique)")
        check_positive_int("seed", self.seed, minimum=0)
        rng = np.random.default_rng(self.seed)
        inputs = rng.standard_normal((self.samples, self.features))
        inputs[:, -1] = 1.0
        w_true = rng.standard_normal(self.features)
        labels = (rng.random(self.samples) < expit(inputs @ w_true)).astype(np.float64)
        object.__setattr__(self, "inputs", inputs)
        object.__setattr__(self, "labels", labels)
        object.__setattr__(self, "solution", self._newton(np.zeros(self.features)))

    def _newton(self, w: np.ndarray) -> np.ndarray:
        for _ in range(100):
            s = expit(self.inputs @ w)
            hessian = (self.inputs.T * (s * (1.0 - s))) @ self.inputs / self.samples + self.l2 * np.eye(self.features)
            step = np.linalg.solve(hessian, self._gradient(w))
            w = w - step
            if np.max(np.abs(step)) < _NEWTON_TOLERANCE * max(1.0, np.max(np.abs(w))):
                return w
        raise RuntimeError("logistic: Newton's method did not converge")  # strictly convex: not reached

    @property
    def dim(self) -> int:
        return self.features

    @property
    def minimisers(self) -> np.ndarray:
        return self.solution[None, :].copy()

    @property
    def minimum(self) -> float:
        return float(self._value(self.solution))

    def default_start(self) -> np.ndarray:
        return np.zeros(self.dim)

    @staticmethod
    def _log_loss(z: np.ndarray, y: np.ndarray) -> np.ndarray:
        """``log(1 + exp(z)) - y z``, written with ``logaddexp`` so large ``|z|`` cannot overflow."""
        return np.logaddexp(0.0, z) - y * z

    def _value(self, x: np.ndarray) -> np.ndarray:
        z = x @ self.inputs.T.astype(x.dtype)
        return np.mean(self._log_loss(z, self.labels), axis=-1) + 0.5 * self.l2 * np.sum(x * x, axis=-1)

    def _gradient(self, x: np.ndarray) -> np.ndarray:
        a = self.inputs.astype(x.dtype)
        residual = expit(x @ a.T) - self.labels.astype(x.dtype)
        return residual @ a / self.samples + self.l2 * x

    def _sample_gradient(self, x: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        idx = batch_indices(rng, x.shape[:-1], self.samples, self.batch_size)
        a = self.inputs[idx].astype(x.dtype)  # (..., batch, features)
        residual = expit(np.einsum("...bf,...f->...b", a, x)) - self.labels[idx].astype(x.dtype)
        return np.einsum("...b,...bf->...f", residual, a) / self.batch_size + self.l2 * x
