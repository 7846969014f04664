"""What every test problem offers, and the checks and noise model they share.

A problem is a function ``f: R^dim -> R`` with a hand-derived gradient. Every method
accepts points with any number of leading batch axes, ``x.shape == (..., dim)``, and
evaluates each point independently: ``value(x)`` has shape ``x.shape[:-1]`` and
``gradient(x)`` the shape of ``x``. So ``runs`` independent runs advance as one array of
shape ``(runs, dim)``, which an element-wise optimizer such as CProp treats exactly like
``runs`` separate arrays.

Noise models (the stochastic gradient, drawn with a caller-supplied
``numpy.random.Generator``):

- *additive Gaussian*: every problem has ``noise`` (default 0); the stochastic gradient
  adds independent ``N(0, noise^2)`` to every element;
- *mini-batch sampling*: problems built on data (``quadratic-deep``, ``logistic``,
  ``digits-mlp``) average the per-example gradient over ``batch_size`` examples drawn
  uniformly with replacement (independent mini-batches per batch row), an unbiased
  estimate of the full-data gradient;
- the Noisy Quadratic Model draws Gaussian noise with covariance ``H / batch_size``.

Both kinds add up when a data problem also sets ``noise > 0``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, fields
from typing import Any, ClassVar

import numpy as np

from .streams import RunStreams


@dataclass(frozen=True, kw_only=True)
class Problem:
    """Base class of the test problems (frozen dataclasses with keyword-only options).

    Subclasses set the class attributes ``name`` (registry name), ``summary`` (one line)
    and ``noise_models``, and implement ``_value`` and ``_gradient`` on validated float
    arrays of shape ``(..., dim)``; data problems also override ``_sample_gradient``.
    """

    #: Standard deviation of the additive Gaussian gradient noise (gradient units).
    noise: float = 0.0

    name: ClassVar[str] = ""
    summary: ClassVar[str] = ""
    #: Human-readable noise options, for ``cprop-ref problems``.
    noise_models: ClassVar[str] = "noise (additive Gaussian, std)"
    #: ``((x_low, x_high), (y_low, y_high))`` of the contour plot, for 2-D problems.
    plot_box: ClassVar[tuple[tuple[float, float], tuple[float, float]] | None] = None
    #: ``loss - minimum`` that counts as reached in ``cprop-ref compare`` (problems with a
    #: known minimum) unless ``--target`` is given ...
    target_gap: ClassVar[float | None] = None
    #: ... or the loss itself, for problems whose minimum is unknown.
    default_target: ClassVar[float | None] = None
    #: Learning rates that make the base optimizers work from the default start:
    #: ``{"sgd": ..., "adam": ...}``; CProp variants use their base optimizer's rate.
    default_lr: ClassVar[dict[str, float]] = {"sgd": 1e-3, "adam": 1e-2}

    def __post_init__(self) -> None:
        check_non_negative("noise", self.noise)

    # -- what subclasses provide ---------------------------------------------------------

    @property
    def dim(self) -> int:
        """Number of parameters (the length of the last axis of ``x``)."""
        raise NotImplementedError

    @property
    def minimisers(self) -> np.ndarray | None:
        """The known global minimisers, shape ``(k, dim)``, or ``None`` if none is known."""
        return None

    @property
    def minimum(self) -> float | None:
        """The global minimum value, or ``None`` if unknown."""
        return None

    def default_start(self) -> np.ndarray:
        """The documented start point, shape ``(dim,)``, float64."""
        raise NotImplementedError

    def _value(self, x: np.ndarray) -> np.ndarray:
        raise NotImplementedError

    def _gradient(self, x: np.ndarray) -> np.ndarray:
        raise NotImplementedError

    def _sample_gradient(self, x: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        """The noise-free part of the stochastic gradient (the exact one unless overridden)."""
        return self._gradient(x)

    # -- the public, checked interface ---------------------------------------------------

    def start_point(self, run_seed: int) -> np.ndarray:
        """The start of the run with seed ``run_seed``, shape ``(dim,)``: the default start.

        Problems whose start is random (the MLP's weights) draw it from ``run_seed`` and
        their own options, so a run's start depends on its seed alone (not on the batch).
        """
        check_positive_int("run_seed", run_seed, minimum=0)
        return self.default_start()

    def initial_points(self, runs: int, rng: np.random.Generator) -> np.ndarray:
        """``runs`` start points, shape ``(runs, dim)``: :meth:`start_point` of ``runs``
        seeds drawn from ``rng`` (the default start, repeated, for deterministic starts)."""
        seeds = rng.integers(0, 2**63 - 1, size=check_positive_int("runs", runs))
        return np.stack([self.start_point(int(s)) for s in seeds])

    def value(self, x: np.ndarray) -> np.ndarray:
        """``f(x)`` for every point: shape ``x.shape[:-1]``."""
        return np.asarray(self._value(self.check_point(x)), dtype=x.dtype)

    def gradient(self, x: np.ndarray) -> np.ndarray:
        """The exact gradient ``grad f(x)`` (full data for data problems): shape of ``x``."""
        return np.asarray(self._gradient(self.check_point(x)), dtype=x.dtype)

    def value_and_gradient(self, x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """``(value(x), gradient(x))``; problems that share work between the two override
        ``_value_and_gradient``."""
        x = self.check_point(x)
        value, grad = self._value_and_gradient(x)
        return np.asarray(value, dtype=x.dtype), np.asarray(grad, dtype=x.dtype)

    def _value_and_gradient(self, x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        return self._value(x), self._gradient(x)

    def stochastic_gradient(self, x: np.ndarray, rng: np.random.Generator | RunStreams) -> np.ndarray:
        """An unbiased estimate of ``gradient(x)`` under the problem's noise model.

        ``rng``: a ``numpy.random.Generator``, or a :class:`~problems.streams.RunStreams`
        with one stream per row of ``x`` (``x.shape == (runs, dim)``), which makes row ``i``
        of the noise depend on run ``i``'s seed alone."""
        x = self.check_point(x)
        if not isinstance(rng, (np.random.Generator, RunStreams)):
            raise ValueError(f"rng must be a numpy.random.Generator or a RunStreams, got {type(rng).__name__}")
        g = np.asarray(self._sample_gradient(x, rng), dtype=x.dtype)
        if self.noise > 0.0:
            g = g + self.noise * rng.standard_normal(x.shape, dtype=x.dtype)
        return g

    def distance_to_minimiser(self, x: np.ndarray) -> np.ndarray | None:
        """Euclidean distance from each point to the nearest known minimiser, or ``None``."""
        minimisers = self.minimisers
        if minimisers is None:
            return None
        x = self.check_point(x)
        differences = x[..., None, :] - minimisers.astype(x.dtype)
        return np.sqrt(np.min(np.sum(differences * differences, axis=-1), axis=-1))

    def target_loss(self) -> float | None:
        """The loss that counts as reached: ``minimum + target_gap`` or ``default_target``."""
        minimum = self.minimum
        if self.target_gap is not None and minimum is not None:
            return minimum + self.target_gap
        return self.default_target

    def check_point(self, x: Any) -> np.ndarray:
        """``x`` must be a float32/float64 array whose last axis has length ``dim``."""
        if not isinstance(x, np.ndarray):
            raise ValueError(f"{self.name}: x must be a numpy.ndarray, got {type(x).__name__}")
        if x.dtype not in (np.float32, np.float64):
            raise ValueError(f"{self.name}: x has dtype {x.dtype}; float32 or float64 expected")
        if x.ndim < 1 or x.shape[-1] != self.dim:
            raise ValueError(f"{self.name}: x has shape {x.shape}; the last axis must have length dim={self.dim}")
        return x

    @classmethod
    def options(cls) -> dict[str, Any]:
        """The keyword options and their defaults."""
        return {f.name: f.default for f in fields(cls) if f.init}

    def describe(self) -> str:
        """One line: the options as they are set."""
        return ", ".join(f"{name}={getattr(self, name)!r}" for name in self.options())


class MinimumAtOrigin:
    """For problems whose only global minimiser is ``x = 0`` with minimum 0."""

    dim: int

    @property
    def minimisers(self) -> np.ndarray:
        return np.zeros((1, self.dim))

    @property
    def minimum(self) -> float:
        return 0.0


# -- small validators shared by the problems ---------------------------------------------


def check_non_negative(name: str, value: Any) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float, np.floating, np.integer)):
        raise ValueError(f"invalid {name}={value!r}: must be a real number")
    if not (math.isfinite(value) and value >= 0):
        raise ValueError(f"invalid {name}={value!r}: must be finite and >= 0")
    return float(value)


def check_positive(name: str, value: Any) -> float:
    if check_non_negative(name, value) <= 0:
        raise ValueError(f"invalid {name}={value!r}: must be > 0")
    return float(value)


def check_positive_int(name: str, value: Any, minimum: int = 1) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < minimum:
        raise ValueError(f"invalid {name}={value!r}: must be an integer >= {minimum}")
    return int(value)


def batch_indices(rng: np.random.Generator, leading_shape: tuple[int, ...], n: int, batch_size: int) -> np.ndarray:
    """Indices of ``batch_size`` examples out of ``n``, uniform with replacement, for every
    point of the batch: shape ``leading_shape + (batch_size,)``.

    Sampling with replacement makes the mini-batch mean of per-example gradients an
    unbiased estimate of the full-data mean, with variance ``per-example variance / batch_size``.
    """
    return rng.integers(0, n, size=(*leading_shape, batch_size))
