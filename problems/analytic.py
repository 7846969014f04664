"""Classical optimization test functions with hand-derived gradients.

All take points of shape ``(..., dim)`` (see :mod:`problems.base`). The stochastic
gradient is the exact one plus additive Gaussian noise of standard deviation ``noise``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import ClassVar

import numpy as np

from .base import MinimumAtOrigin, Problem, check_positive_int


@dataclass(frozen=True, kw_only=True)
class Rosenbrock(Problem):
    """``f(x) = sum_{i<n-1} 100 (x_{i+1} - x_i^2)^2 + (1 - x_i)^2`` (``scipy.optimize.rosen``).

    Gradient, with ``r_i = x_{i+1} - x_i^2``: ``df/dx_i`` collects ``-400 x_i r_i - 2 (1 - x_i)``
    from the term ``i`` and ``200 r_{i-1}`` from the term ``i - 1``. Minimiser all ones,
    minimum 0. Default start ``(-2, 2)`` in 2-D, repeated as ``(-2, 2, -2, 2, ...)`` in
    N-D: the common start of optimizer pictures, chosen over DeepOBS's ``(-0.5, 1.5)``
    because from there a run must first fall into the curved valley and then travel
    along it, the two phases in which step-size control matters.
    """

    dim: int = 2

    name: ClassVar[str] = "rosenbrock"
    summary: ClassVar[str] = "Rosenbrock's narrow curved valley, N-D (scipy.optimize.rosen)"
    plot_box: ClassVar = ((-2.5, 2.0), (-1.0, 3.5))
    target_gap: ClassVar[float | None] = 1e-2
    default_lr: ClassVar[dict[str, float]] = {"sgd": 1e-3, "adam": 2e-2}

    def __post_init__(self) -> None:
        super().__post_init__()
        check_positive_int("dim", self.dim, minimum=2)

    @property
    def minimisers(self) -> np.ndarray:
        return np.ones((1, self.dim))

    @property
    def minimum(self) -> float:
        return 0.0

    def default_start(self) -> np.ndarray:
        return np.where(np.arange(self.dim) % 2 == 0, -2.0, 2.0)

    def _value(self, x: np.ndarray) -> np.ndarray:
        a, b = x[..., :-1], x[..., 1:]
        return np.sum(100.0 * (b - a * a) ** 2 + (1.0 - a) ** 2, axis=-1)

    def _gradient(self, x: np.ndarray) -> np.ndarray:
        a, b = x[..., :-1], x[..., 1:]
        r = b - a * a
        g = np.zeros_like(x)
        g[..., :-1] += -400.0 * a * r - 2.0 * (1.0 - a)
        g[..., 1:] += 200.0 * r
        return g


@dataclass(frozen=True, kw_only=True)
class Beale(Problem):
    """``f(x, y) = (1.5 - x + xy)^2 + (2.25 - x + xy^2)^2 + (2.625 - x + xy^3)^2``.

    With ``t_k = c_k - x + x y^k`` (``c = 1.5, 2.25, 2.625``):
    ``df/dx = sum_k 2 t_k (y^k - 1)`` and ``df/dy = sum_k 2 t_k k x y^(k-1)``.
    Minimiser ``(3, 0.5)``, minimum 0. Default start ``(1, 1)``: the gradient there points
    along ``y`` only, and the run must turn into the flat curved valley towards ``(3, 0.5)``.
    """

    name: ClassVar[str] = "beale"
    summary: ClassVar[str] = "Beale's function, 2-D, flat valley with steep walls"
    plot_box: ClassVar = ((-1.0, 4.5), (-1.5, 2.0))
    target_gap: ClassVar[float | None] = 1e-3
    default_lr: ClassVar[dict[str, float]] = {"sgd": 1e-3, "adam": 1e-2}
    coefficients: ClassVar[tuple[float, float, float]] = (1.5, 2.25, 2.625)

    @property
    def dim(self) -> int:
        return 2

    @property
    def minimisers(self) -> np.ndarray:
        return np.array([[3.0, 0.5]])

    @property
    def minimum(self) -> float:
        return 0.0

    def default_start(self) -> np.ndarray:
        return np.array([1.0, 1.0])

    def _terms(self, x: np.ndarray) -> tuple[np.ndarray, np.ndarray, list[np.ndarray]]:
        u, y = x[..., 0], x[..., 1]
        return u, y, [c - u + u * y ** (k + 1) for k, c in enumerate(self.coefficients)]

    def _value(self, x: np.ndarray) -> np.ndarray:
        _, _, terms = self._terms(x)
        return sum(t * t for t in terms)

    def _gradient(self, x: np.ndarray) -> np.ndarray:
        u, y, terms = self._terms(x)
        d_u = sum(2.0 * t * (y ** (k + 1) - 1.0) for k, t in enumerate(terms))
        d_y = sum(2.0 * t * (k + 1) * u * y**k for k, t in enumerate(terms))
        return np.stack([d_u, d_y], axis=-1)


@dataclass(frozen=True, kw_only=True)
class Branin(Problem):
    """``f(x, y) = a (y - b x^2 + c x - r)^2 + s (1 - t) cos(x) + s`` with
    ``a = 1, b = 5.1 / (4 pi^2), c = 5 / pi, r = 6, s = 10, t = 1 / (8 pi)``.

    With ``q = y - b x^2 + c x - r``: ``df/dx = 2 a q (c - 2 b x) - s (1 - t) sin(x)``,
    ``df/dy = 2 a q``. Three global minimisers ``(-pi, 12.275)``, ``(pi, 2.275)``,
    ``(3 pi, 2.475)`` (``q = 0`` and ``sin x = 0`` there), minimum ``s t = 0.397887``.
    Default start ``(2.5, 7.5)``, the centre of the usual domain ``[-5, 10] x [0, 15]``.
    """

    name: ClassVar[str] = "branin"
    summary: ClassVar[str] = "Branin-Hoo, 2-D, three global minima (0.397887)"
    plot_box: ClassVar = ((-5.0, 10.0), (0.0, 15.0))
    target_gap: ClassVar[float | None] = 1e-3
    default_lr: ClassVar[dict[str, float]] = {"sgd": 1e-2, "adam": 5e-2}
    a: ClassVar[float] = 1.0
    b: ClassVar[float] = 5.1 / (4.0 * math.pi**2)
    c: ClassVar[float] = 5.0 / math.pi
    r: ClassVar[float] = 6.0
    s: ClassVar[float] = 10.0
    t: ClassVar[float] = 1.0 / (8.0 * math.pi)

    @property
    def dim(self) -> int:
        return 2

    @property
    def minimisers(self) -> np.ndarray:
        xs = np.array([-math.pi, math.pi, 3.0 * math.pi])
        return np.stack([xs, self.b * xs**2 - self.c * xs + self.r], axis=-1)

    @property
    def minimum(self) -> float:
        return self.s * self.t

    def default_start(self) -> np.ndarray:
        return np.array([2.5, 7.5])

    def _q(self, u: np.ndarray, y: np.ndarray) -> np.ndarray:
        return y - self.b * u * u + self.c * u - self.r

    def _value(self, x: np.ndarray) -> np.ndarray:
        u, y = x[..., 0], x[..., 1]
        q = self._q(u, y)
        return self.a * q * q + self.s * (1.0 - self.t) * np.cos(u) + self.s

    def _gradient(self, x: np.ndarray) -> np.ndarray:
        u, y = x[..., 0], x[..., 1]
        q = self._q(u, y)
        d_u = 2.0 * self.a * q * (self.c - 2.0 * self.b * u) - self.s * (1.0 - self.t) * np.sin(u)
        return np.stack([d_u, 2.0 * self.a * q], axis=-1)


@dataclass(frozen=True, kw_only=True)
class Rastrigin(MinimumAtOrigin, Problem):
    """``f(x) = 10 n + sum_i (x_i^2 - 10 cos(2 pi x_i))``; ``df/dx_i = 2 x_i + 20 pi sin(2 pi x_i)``.

    A local minimum near every integer point; the global one is ``x = 0``, minimum 0.
    Default start ``2.2`` in every coordinate: two basins away from the optimum, where
    a plain gradient method stalls in the local minimum near 2.
    """

    dim: int = 2

    name: ClassVar[str] = "rastrigin"
    summary: ClassVar[str] = "Rastrigin, N-D, a local minimum near every integer point"
    plot_box: ClassVar = ((-3.0, 3.0), (-3.0, 3.0))
    target_gap: ClassVar[float | None] = 1e-2
    default_lr: ClassVar[dict[str, float]] = {"sgd": 1e-3, "adam": 5e-2}

    def __post_init__(self) -> None:
        super().__post_init__()
        check_positive_int("dim", self.dim)

    def default_start(self) -> np.ndarray:
        return np.full(self.dim, 2.2)

    def _value(self, x: np.ndarray) -> np.ndarray:
        return 10.0 * self.dim + np.sum(x * x - 10.0 * np.cos(2.0 * math.pi * x), axis=-1)

    def _gradient(self, x: np.ndarray) -> np.ndarray:
        return 2.0 * x + 20.0 * math.pi * np.sin(2.0 * math.pi * x)


def _styblinski_tang_root() -> float:
    """The smallest root of ``4 x^3 - 32 x + 5`` (the global minimiser per coordinate),
    from ``numpy.roots`` polished by Newton steps to full double precision."""
    x = float(min(np.roots([4.0, 0.0, -32.0, 5.0]).real))
    for _ in range(3):
        x -= (4.0 * x**3 - 32.0 * x + 5.0) / (12.0 * x * x - 32.0)
    return x


@dataclass(frozen=True, kw_only=True)
class StyblinskiTang(Problem):
    """``f(x) = 0.5 sum_i (x_i^4 - 16 x_i^2 + 5 x_i)``; ``df/dx_i = 2 x_i^3 - 16 x_i + 2.5``.

    Each coordinate has a local minimum near 2.7468 and the global one at
    ``x* = -2.903534`` (the smallest root of ``4 x^3 - 32 x + 5``); minimum
    ``-39.16617 n``. Default start ``0.5`` in every coordinate: on the slope towards the
    *local* minimum, so only noise or momentum can carry a run to the global one.
    """

    dim: int = 2

    name: ClassVar[str] = "styblinski-tang"
    summary: ClassVar[str] = "Styblinski-Tang, N-D, 2^N local minima"
    plot_box: ClassVar = ((-4.5, 4.5), (-4.5, 4.5))
    target_gap: ClassVar[float | None] = 1e-2
    default_lr: ClassVar[dict[str, float]] = {"sgd": 1e-2, "adam": 5e-2}

    def __post_init__(self) -> None:
        super().__post_init__()
        check_positive_int("dim", self.dim)

    @property
    def minimisers(self) -> np.ndarray:
        return np.full((1, self.dim), _styblinski_tang_root())

    @property
    def minimum(self) -> float:
        x = _styblinski_tang_root()
        return self.dim * 0.5 * (x**4 - 16.0 * x * x + 5.0 * x)

    def default_start(self) -> np.ndarray:
        return np.full(self.dim, 0.5)

    def _value(self, x: np.ndarray) -> np.ndarray:
        return 0.5 * np.sum(x**4 - 16.0 * x * x + 5.0 * x, axis=-1)

    def _gradient(self, x: np.ndarray) -> np.ndarray:
        return 2.0 * x**3 - 16.0 * x + 2.5
