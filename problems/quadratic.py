"""An ill-conditioned quadratic with a chosen condition number."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import ClassVar

import numpy as np
from scipy.stats import special_ortho_group

from .base import MinimumAtOrigin, Problem, check_non_negative, check_positive_int


@dataclass(frozen=True, kw_only=True)
class IllConditionedQuadratic(MinimumAtOrigin, Problem):
    """``f(x) = 0.5 x^T A x`` with ``A = Q diag(h) Q^T``, ``h`` log-spaced from 1 down to
    ``1 / condition`` (so ``cond(A) = condition``), ``Q`` the identity or, with ``rotate``,
    a random rotation drawn from ``seed``.

    Gradient ``A x = Q (h * (Q^T x))``. Minimiser ``x = 0``, minimum 0. Default start:
    all ones. With ``rotate=False`` the axes are the eigenvectors and an element-wise
    method such as CProp or Adam sees each curvature separately; a rotation mixes them.
    """

    dim: int = 20
    condition: float = 100.0
    rotate: bool = False
    seed: int = 0
    curvature: np.ndarray = field(init=False, repr=False, compare=False)
    rotation: np.ndarray | None = field(init=False, repr=False, compare=False)

    name: ClassVar[str] = "quadratic"
    summary: ClassVar[str] = "ill-conditioned quadratic, N-D, chosen condition number, optional rotation"
    target_gap: ClassVar[float | None] = 1e-3
    default_lr: ClassVar[dict[str, float]] = {"sgd": 0.5, "adam": 1e-2}

    def __post_init__(self) -> None:
        super().__post_init__()
        check_positive_int("dim", self.dim)
        if check_non_negative("condition", self.condition) < 1.0:
            raise ValueError(f"invalid condition={self.condition!r}: must be >= 1")
        if not isinstance(self.rotate, bool):
            raise ValueError(f"invalid rotate={self.rotate!r}: must be True or False")
        check_positive_int("seed", self.seed, minimum=0)
        object.__setattr__(self, "curvature", np.logspace(0.0, -np.log10(self.condition), self.dim))
        rotation = None
        if self.rotate and self.dim > 1:
            rotation = special_ortho_group.rvs(self.dim, random_state=np.random.default_rng(self.seed))
        object.__setattr__(self, "rotation", rotation)

    def default_start(self) -> np.ndarray:
        return np.ones(self.dim)

    def _eigen_coordinates(self, x: np.ndarray) -> np.ndarray:
        return x if self.rotation is None else x @ self.rotation.astype(x.dtype)

    def _value(self, x: np.ndarray) -> np.ndarray:
        y = self._eigen_coordinates(x)
        return 0.5 * np.sum(self.curvature.astype(x.dtype) * y * y, axis=-1)

    def _gradient(self, x: np.ndarray) -> np.ndarray:
        hy = self.curvature.astype(x.dtype) * self._eigen_coordinates(x)
        return hy if self.rotation is None else hy @ self.rotation.T.astype(x.dtype)


#: The name :mod:`cprop_ref.demo` uses: the diagonal quadratic with gradient noise.
NoisyQuadratic = IllConditionedQuadratic
