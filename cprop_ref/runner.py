"""Run an optimizer on a test problem and record what happened, step by step.

``run(problem, "cprop-sgd", steps=1000, seed=0, runs=8)`` advances ``runs`` independent
runs as one ``(runs, dim)`` array (every cprop-ref optimizer is element-wise, so this is
exactly ``runs`` separate runs) and returns a :class:`History`:

- ``loss``, ``grad_norm`` (of the exact, full-data gradient) and ``distance`` (to the
  nearest known minimiser, ``None`` where none is known), shape ``(steps + 1, runs)``,
  row 0 being the start;
- for optimizers with CProp, the scale statistics after each step, shape
  ``(steps, runs)``: ``scale_mean``, ``scale_min`` and ``scale_ones`` (the share of
  elements whose scale is exactly 1);
- optionally the trajectory, ``(steps + 1, runs, dim)``.

Randomness: ``seed`` feeds a ``numpy.random.SeedSequence`` split into two streams, one for
the start points (random only for problems such as the MLP) and one for the gradient
noise, so the same seed gives the same history, and two optimizers run with the same seed
see the same start and, while the noise does not depend on the point, the same noise.

A run that diverges (a non-finite stochastic gradient or loss) stops there: the history
keeps every step up to the last finite one and ``diverged`` says what happened.
"""

from __future__ import annotations

import inspect
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from problems import Problem

from .optim import SGD, Adam, AdamW, CProp, CPropAdam, CPropSGD, OptimizerProtocol

#: Optimizer names the runner builds, with the base family whose learning rate they use.
OPTIMIZER_FAMILIES: dict[str, str] = {
    "sgd": "sgd",
    "cprop-sgd": "sgd",
    "adam": "adam",
    "cprop-adam": "adam",
    "adamw": "adam",
    "cprop-adamw": "adam",
}
#: Short names accepted in specs for CProp's hyperparameters.
_CPROP_ALIASES = {"beta": "cprop_beta", "c": "cprop_c", "cdf": "cprop_cdf"}
_FLAGS = ("nesterov", "amsgrad")
#: Options whose values are names, passed on as text (``backend`` where the optimizers have one).
_TEXT_OPTIONS = ("cprop_cdf", "backend")

#: Runs at least this long show a progress bar by default (when stderr is a terminal).
PROGRESS_MIN_STEPS = 1000

OptimizerFactory = Callable[[list[np.ndarray]], OptimizerProtocol]


@dataclass(frozen=True)
class OptimizerSpec:
    """An optimizer by name with hyperparameter overrides, e.g. ``cprop-sgd:c=3:lr=0.1``.

    ``options`` uses the optimizers' keyword names (``lr``, ``momentum``, ``betas``,
    ``cprop_beta``, ``cprop_c``, ``cprop_eps``, ``cprop_cdf``, ...). ``cprop-adamw`` is
    the :class:`~cprop_ref.CProp` wrapper around :class:`~cprop_ref.AdamW`.
    """

    name: str
    options: dict[str, Any] = field(default_factory=dict)
    label: str = ""

    def __post_init__(self) -> None:
        if self.name not in OPTIMIZER_FAMILIES:
            raise ValueError(f"unknown optimizer {self.name!r}; known: {', '.join(OPTIMIZER_FAMILIES)}")
        if not self.label:
            object.__setattr__(self, "label", self.name)

    @property
    def family(self) -> str:
        """``"sgd"`` or ``"adam"``: whose default learning rate this optimizer takes."""
        return OPTIMIZER_FAMILIES[self.name]

    @property
    def has_cprop(self) -> bool:
        return self.name.startswith("cprop-")

    def build(self, params: list[np.ndarray], default_lr: float | None = None) -> OptimizerProtocol:
        """The optimizer over ``params``; ``lr`` from the options, else ``default_lr``."""
        options = dict(self.options)
        if "lr" not in options:
            if default_lr is None:
                raise ValueError(f"optimizer {self.label!r}: no learning rate given")
            options["lr"] = default_lr
        if self.name == "cprop-adamw":
            wrapper_keys = {"cprop_beta": "beta", "cprop_c": "c", "cprop_eps": "eps", "cprop_cdf": "cdf"}
            wrapper = {wrapper_keys[k]: options.pop(k) for k in list(options) if k in wrapper_keys}
            _check_keywords(AdamW, options, self.label)
            return CProp(AdamW(params, **options), **wrapper)
        cls = {"sgd": SGD, "cprop-sgd": CPropSGD, "adam": Adam, "cprop-adam": CPropAdam, "adamw": AdamW}[self.name]
        _check_keywords(cls, options, self.label)
        return cls(params, **options)


def _check_keywords(cls: type, options: dict[str, Any], label: str) -> None:
    accepted = [p for p in inspect.signature(cls).parameters if p not in ("self", "params", "nonfinite")]
    unknown = sorted(set(options) - set(accepted))
    if unknown:
        raise ValueError(
            f"optimizer {label!r}: unknown hyperparameter(s) {', '.join(unknown)}; {cls.__name__} takes {', '.join(accepted)}"
        )


def parse_optimizer_spec(text: str) -> OptimizerSpec:
    """``"cprop-sgd:c=3:beta=0.99:lr=0.1"`` to an :class:`OptimizerSpec` (label: the text).

    Values are floats, except ``cdf`` and ``backend`` (names), ``nesterov``/``amsgrad`` (true/false) and
    ``betas`` (``0.9/0.999``); ``beta``, ``c`` and ``cdf`` stand for ``cprop_beta``, ...
    """
    name, *assignments = [part.strip() for part in text.strip().split(":")]
    options: dict[str, Any] = {}
    for item in assignments:
        key, sep, value = item.partition("=")
        key = _CPROP_ALIASES.get(key.strip(), key.strip())
        if not sep or not key:
            raise ValueError(f"optimizer spec {text!r}: {item!r} is not KEY=VALUE")
        options[key] = _parse_value(key, value.strip(), text)
    return OptimizerSpec(name, options, label=text.strip())


def _parse_value(key: str, value: str, text: str) -> Any:
    try:
        if key in _TEXT_OPTIONS:
            return value
        if key in _FLAGS:
            if value.lower() not in ("true", "false"):
                raise ValueError
            return value.lower() == "true"
        if key == "betas":
            beta1, beta2 = value.split("/")
            return (float(beta1), float(beta2))
        return float(value)
    except ValueError:
        raise ValueError(f"optimizer spec {text!r}: cannot read {key}={value!r}") from None


@dataclass
class History:
    """What one call of :func:`run` recorded (see the module docstring for the shapes)."""

    problem: str
    optimizer: str
    seed: int
    loss: np.ndarray
    grad_norm: np.ndarray
    distance: np.ndarray | None
    scale_mean: np.ndarray | None
    scale_min: np.ndarray | None
    scale_ones: np.ndarray | None
    trajectory: np.ndarray | None
    wall_time: float
    step_time: float
    diverged: str | None = None
    lr: float | None = None

    @property
    def steps(self) -> int:
        """Steps completed (and recorded)."""
        return self.loss.shape[0] - 1

    @property
    def runs(self) -> int:
        return self.loss.shape[1]

    def mean_loss(self) -> np.ndarray:
        """The loss averaged over runs, per step: shape ``(steps + 1,)``."""
        return self.loss.mean(axis=1)

    def steps_to_target(self, target: float) -> int | None:
        """The first step at which the run-averaged loss is ``<= target``; ``None`` if never."""
        reached = np.flatnonzero(self.mean_loss() <= target)
        return int(reached[0]) if reached.size else None


class _Progress:
    """A tqdm bar if tqdm (the ``progress`` extra) is installed, else a line every 10%."""

    def __init__(self, total: int, label: str) -> None:
        self.total, self.label, self.done, self.bar = total, label, 0, None
        try:
            from tqdm import tqdm
        except ImportError:
            self.next_report = 0.1
        else:
            self.bar = tqdm(total=total, desc=label, leave=False, file=sys.stderr, dynamic_ncols=True)

    def update(self) -> None:
        self.done += 1
        if self.bar is not None:
            self.bar.update()
        elif self.done >= self.next_report * self.total:
            print(f"{self.label}: {self.done}/{self.total} steps", file=sys.stderr, flush=True)
            self.next_report += 0.1

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()


def _scale_stats(optimizer: OptimizerProtocol) -> tuple[np.ndarray, np.ndarray, np.ndarray] | None:
    """Mean, min and share-at-1 of the CProp scale of the (single) parameter, per run."""
    scales = getattr(optimizer, "scales", None)
    if scales is None:
        return None
    s = scales()[0]
    if s is None:
        return None
    return s.mean(axis=-1), s.min(axis=-1), (s == 1.0).mean(axis=-1)


def run(
    problem: Problem,
    optimizer: str | OptimizerSpec | OptimizerFactory,
    steps: int,
    *,
    seed: int = 0,
    runs: int = 1,
    start: np.ndarray | None = None,
    record_trajectory: bool = False,
    progress: bool | None = None,
    warm_up: bool = True,
) -> History:
    """Run ``optimizer`` on ``problem`` for ``steps`` steps from ``seed``; see the module docstring.

    ``optimizer`` is a name (``"sgd"``, ``"cprop-sgd"``, ``"adam"``, ``"cprop-adam"``,
    ``"adamw"``, ``"cprop-adamw"``, or a spec such as ``"cprop-sgd:c=3"``; the learning
    rate defaults to ``problem.default_lr`` of its family), an :class:`OptimizerSpec`, or
    a factory ``params -> optimizer`` (any object with the optimizer protocol).
    ``start``: ``(dim,)`` or ``(runs, dim)``; default ``problem.initial_points``.
    ``progress``: a progress bar on stderr; ``None`` (default) shows one for runs of at
    least ``PROGRESS_MIN_STEPS`` steps when stderr is a terminal.
    ``warm_up``: step a throwaway copy once before the timed run (compilation, caches).
    """
    if isinstance(steps, bool) or not isinstance(steps, (int, np.integer)) or steps < 0:
        raise ValueError(f"invalid steps={steps!r}: must be an integer >= 0")
    if isinstance(runs, bool) or not isinstance(runs, (int, np.integer)) or runs < 1:
        raise ValueError(f"invalid runs={runs!r}: must be an integer >= 1")
    if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)) or seed < 0:
        raise ValueError(f"invalid seed={seed!r}: must be an integer >= 0")
    start_rng, noise_rng = (np.random.default_rng(s) for s in np.random.SeedSequence(int(seed)).spawn(2))
    x = _start_points(problem, start, runs, start_rng)

    if isinstance(optimizer, str):
        optimizer = parse_optimizer_spec(optimizer)
    if isinstance(optimizer, OptimizerSpec):
        spec = optimizer
        label = spec.label

        def factory(params: list[np.ndarray]) -> OptimizerProtocol:
            return spec.build(params, problem.default_lr.get(spec.family))
    elif callable(optimizer):
        label = getattr(optimizer, "__name__", type(optimizer).__name__)
        factory = optimizer
    else:
        raise ValueError(f"optimizer must be a name, an OptimizerSpec or a factory, got {type(optimizer).__name__}")
    if warm_up:
        # One step of a throwaway optimizer on a copy, with the exact gradient (no draw from
        # the noise stream): one-time costs such as Numba compiling a kernel stay out of the
        # timings, and the run itself is unchanged. It comes first, so that the optimizer a
        # factory made last is the one that runs.
        scratch = x.copy()
        with np.errstate(over="ignore", invalid="ignore"):
            factory([scratch]).step([problem.gradient(scratch)])
    opt = factory([x])
    lr = opt.param_groups[0].get("lr")

    losses, grad_norms, distances, trajectory = [], [], [], []
    scale_mean, scale_min, scale_ones = [], [], []
    has_distance = problem.minimisers is not None

    def record(loss: np.ndarray, grad: np.ndarray) -> None:
        losses.append(loss)
        grad_norms.append(np.linalg.norm(grad, axis=-1))
        if has_distance:
            distances.append(problem.distance_to_minimiser(x))
        if record_trajectory:
            trajectory.append(x.copy())

    diverged = None
    if progress is None:
        progress = steps >= PROGRESS_MIN_STEPS and sys.stderr.isatty()
    bar = _Progress(steps, f"{label} on {problem.name}") if progress and steps > 0 else None
    step_time = 0.0
    began = time.perf_counter()
    # Overflow on the way to divergence is expected; it is detected below, not warned about.
    with np.errstate(over="ignore", invalid="ignore", divide="ignore"):
        loss, grad = problem.value_and_gradient(x)
        if not np.all(np.isfinite(loss)):
            raise ValueError(f"{problem.name}: the loss at the start is not finite ({loss})")
        record(loss, grad)
        for step in range(1, steps + 1):
            grad = problem.stochastic_gradient(x, noise_rng)
            if not np.all(np.isfinite(grad)):
                diverged = _divergence(label, problem, step, "stochastic gradient", ~np.isfinite(grad).all(axis=-1))
                break
            tick = time.perf_counter()
            opt.step([grad])
            step_time += time.perf_counter() - tick
            loss, grad = problem.value_and_gradient(x)
            if not np.all(np.isfinite(loss)):
                diverged = _divergence(label, problem, step, "loss", ~np.isfinite(loss))
                break
            record(loss, grad)
            stats = _scale_stats(opt)
            if stats is not None:
                scale_mean.append(stats[0])
                scale_min.append(stats[1])
                scale_ones.append(stats[2])
            if bar is not None:
                bar.update()
    wall_time = time.perf_counter() - began
    if bar is not None:
        bar.close()

    def stack(rows: list[np.ndarray]) -> np.ndarray | None:
        return np.array(rows) if rows else None

    return History(
        problem=problem.name,
        optimizer=label,
        seed=int(seed),
        loss=np.array(losses),
        grad_norm=np.array(grad_norms),
        distance=stack(distances),
        scale_mean=stack(scale_mean),
        scale_min=stack(scale_min),
        scale_ones=stack(scale_ones),
        trajectory=stack(trajectory),
        wall_time=wall_time,
        step_time=step_time,
        diverged=diverged,
        lr=lr,
    )


def _start_points(problem: Problem, start: np.ndarray | None, runs: int, rng: np.random.Generator) -> np.ndarray:
    if start is None:
        return np.array(problem.initial_points(runs, rng), dtype=np.float64)
    start = np.asarray(start, dtype=np.float64)
    if start.shape == (problem.dim,):
        return np.tile(start, (runs, 1))
    if start.shape == (runs, problem.dim):
        return start.copy()
    raise ValueError(f"start has shape {start.shape}; expected ({problem.dim},) or ({runs}, {problem.dim})")


def _divergence(label: str, problem: Problem, step: int, what: str, bad_runs: np.ndarray) -> str:
    runs = ", ".join(str(i) for i in np.flatnonzero(bad_runs)[:10])
    more = " ..." if bad_runs.sum() > 10 else ""
    return (
        f"{label} on {problem.name} diverged at step {step}: the {what} is not finite in run(s) {runs}{more}; "
        f"the history is kept up to step {step - 1}"
    )
