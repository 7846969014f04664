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

Randomness, per run: run ``i`` of ``run(..., seed=s, runs=R)`` has seed ``s + i``. Its
start is ``problem.start_point(s + i)`` (random only for problems such as the MLP) and its
gradient noise comes from its own stream (:class:`problems.streams.RunStreams`, SplitMix64
keyed by ``SeedSequence(s + i)``), so row ``i`` equals ``run(..., seed=s + i, runs=1)``
whatever ``R`` is, the same seed gives the same history, and two optimizers run with the
same seed see the same start and, while the noise does not depend on the point, the same noise.

A run that diverges (a non-finite stochastic gradient or loss) is frozen at its last finite
point and its entries are NaN from that step on; the other runs go on. ``diverged_at``
gives the step per run, ``diverged`` a summary, and averages leave diverged runs out.
"""

from __future__ import annotations

import inspect
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from problems import Problem
from problems.streams import RunStreams

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


_OPTIMIZER_CLASSES: dict[str, type] = {
    "sgd": SGD,
    "cprop-sgd": CPropSGD,
    "adam": Adam,
    "cprop-adam": CPropAdam,
    "adamw": AdamW,
    "cprop-adamw": AdamW,
}


def accepted_options(name: str) -> tuple[str, ...]:
    """The keyword options an optimizer spec ``name`` takes (as :class:`OptimizerSpec` spells them)."""
    cls = _OPTIMIZER_CLASSES[OptimizerSpec(name).name]
    accepted = [p for p in inspect.signature(cls).parameters if p not in ("self", "params", "nonfinite")]
    if name == "cprop-adamw":
        accepted += ["cprop_beta", "cprop_c", "cprop_eps", "cprop_cdf"]
    return tuple(accepted)


def canonical_option(key: str) -> str:
    """``c``, ``beta``, ``cdf`` to ``cprop_c``, ...; other names as they are."""
    return _CPROP_ALIASES.get(key, key)


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
    """What one call of :func:`run` recorded (see the module docstring for the shapes).

    Per run (shape ``(runs,)``): ``seeds`` (run ``i``'s seed), ``diverged_at`` (the step
    at which the run diverged, ``-1`` if it did not), ``best_loss`` (the lowest finite
    loss), ``mean_scale`` (the CProp scale averaged over elements and the steps before any
    divergence; ``None`` without CProp). ``diverged`` is a one-line summary or ``None``.
    """

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
    seeds: np.ndarray | None = None
    diverged_at: np.ndarray | None = None
    best_loss: np.ndarray | None = None
    mean_scale: np.ndarray | None = None

    @property
    def steps(self) -> int:
        """Steps recorded (a diverged run's rows are NaN from its divergence on)."""
        return self.loss.shape[0] - 1

    @property
    def runs(self) -> int:
        return self.loss.shape[1]

    @property
    def finished(self) -> np.ndarray:
        """Which runs did not diverge, shape ``(runs,)``."""
        if self.diverged_at is None:
            return np.ones(self.runs, dtype=bool)
        return self.diverged_at < 0

    @property
    def diverged_count(self) -> int:
        return int(self.runs - self.finished.sum())

    def mean_loss(self) -> np.ndarray:
        """The loss averaged over the runs that did not diverge, per step: shape
        ``(steps + 1,)`` (NaN if every run diverged)."""
        kept = self.loss[:, self.finished]
        if kept.shape[1] == 0:
            return np.full(self.loss.shape[0], np.nan)
        return kept.mean(axis=1)

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


@dataclass(frozen=True)
class RowGroup:
    """Rows ``rows`` of a batch, stepped by ``optimizer`` (whose parameter is ``x[rows]``)."""

    rows: slice
    optimizer: OptimizerProtocol


@dataclass
class Outcome:
    """What :func:`simulate` recorded. ``loss`` (and the optional ``grad_norm``,
    ``distance``, ``trajectory``) have one row per recorded step; the scale statistics
    one row per recorded step after the start; per-run summaries have shape ``(runs,)``.
    Entries of a run after it diverged are NaN."""

    record_steps: np.ndarray
    loss: np.ndarray
    final_loss: np.ndarray
    best_loss: np.ndarray
    steps_to_target: np.ndarray
    diverged_at: np.ndarray
    mean_scale: np.ndarray | None
    grad_norm: np.ndarray | None = None
    distance: np.ndarray | None = None
    scale_mean: np.ndarray | None = None
    scale_min: np.ndarray | None = None
    scale_ones: np.ndarray | None = None
    trajectory: np.ndarray | None = None
    step_time: float = 0.0
    first_divergence: tuple[int, str, np.ndarray] | None = None


def record_schedule(steps: int, every: int) -> np.ndarray:
    """The steps recorded: ``0, every, 2 every, ...`` and always the last one."""
    recorded = np.arange(0, steps + 1, every, dtype=np.int64)
    return recorded if recorded[-1] == steps else np.append(recorded, steps)


def simulate(
    problem: Problem,
    x: np.ndarray,
    groups: Sequence[RowGroup],
    noise: RunStreams,
    steps: int,
    *,
    record_steps: np.ndarray,
    target: float | None = None,
    details: bool = False,
    record_trajectory: bool = False,
    bar: _Progress | None = None,
) -> Outcome:
    """Advance the runs, the rows of ``x`` (shape ``(runs, dim)``), for ``steps`` steps:
    stochastic gradient from ``noise`` (one stream per row), one ``step`` of every group's
    optimizer, the full loss. The engine of :func:`run` and of the sweeps.

    Divergence is per run: a run whose stochastic gradient or loss is not finite at step
    ``t`` is marked diverged at ``t`` and frozen at its last finite point (its rows of the
    gradient are zero from then on and its parameters are put back after every step, so
    the other runs, element-wise independent, go on exactly as they would alone).
    ``details``: also the gradient norm, the distance to the minimiser and the scale
    statistics at the recorded steps. ``mean_scale`` averages the CProp scale over the
    elements and the recorded steps after the start (before any divergence). The loop ends early when every run has diverged.
    """
    runs = x.shape[0]
    recorded = {int(t): k for k, t in enumerate(record_steps)}
    n_rec = len(record_steps)

    def blank(*shape: int) -> np.ndarray:
        return np.full(shape, np.nan)

    loss_rec = blank(n_rec, runs)
    grad_rec = blank(n_rec, runs) if details else None
    has_distance = details and problem.minimisers is not None
    dist_rec = blank(n_rec, runs) if has_distance else None
    traj_rec = blank(n_rec, runs, x.shape[1]) if record_trajectory else None
    scale_rec: list[np.ndarray] | None = None
    alive = np.ones(runs, dtype=bool)
    diverged_at = np.full(runs, -1, dtype=np.int64)
    reached = np.full(runs, -1, dtype=np.int64)
    scale_sum = np.zeros(runs)
    scale_count = np.zeros(runs, dtype=np.int64)
    has_scale = False
    first: tuple[int, str, np.ndarray] | None = None
    x_before = np.empty_like(x)

    def record(step: int, loss: np.ndarray, grad: np.ndarray | None) -> None:
        k = recorded.get(step)
        if k is None:
            return
        loss_rec[k] = np.where(alive, loss, np.nan)
        if grad_rec is not None and grad is not None:
            grad_rec[k] = np.where(alive, np.linalg.norm(grad, axis=-1), np.nan)
        if dist_rec is not None:
            dist_rec[k] = np.where(alive, problem.distance_to_minimiser(x), np.nan)
        if traj_rec is not None:
            traj_rec[k] = x

    def mark(step: int, bad: np.ndarray, what: str) -> None:
        nonlocal first
        diverged_at[bad] = step
        alive[bad] = False
        if first is None:
            first = (step, what, bad.copy())

    def full_loss() -> tuple[np.ndarray, np.ndarray | None]:
        if details:
            return problem.value_and_gradient(x)
        return problem.value(x), None

    step_time = 0.0
    # Overflow on the way to divergence is expected; it is detected below, not warned about.
    with np.errstate(over="ignore", invalid="ignore", divide="ignore"):
        loss, grad = full_loss()
        if not np.all(np.isfinite(loss)):
            raise ValueError(f"{problem.name}: the loss at the start is not finite ({loss})")
        best = loss.copy()
        if target is not None:
            reached[loss <= target] = 0
        record(0, loss, grad)
        for step in range(1, steps + 1):
            grad = problem.stochastic_gradient(x, noise)
            bad = alive & ~np.isfinite(grad).all(axis=-1)
            if bad.any():
                mark(step, bad, "stochastic gradient")
            frozen = not alive.all()
            if frozen:
                if not alive.any():
                    if traj_rec is not None:  # every run is frozen where it stopped
                        traj_rec[np.asarray(record_steps) >= step] = x
                    break
                grad[~alive] = 0.0  # a finite gradient, so the optimizers accept the step
            np.copyto(x_before, x)
            tick = time.perf_counter()
            for group in groups:
                group.optimizer.step([grad[group.rows]])
            step_time += time.perf_counter() - tick
            if frozen:
                x[~alive] = x_before[~alive]
            loss, grad = full_loss()
            bad = alive & ~np.isfinite(loss)
            if bad.any():
                mark(step, bad, "loss")
                x[bad] = x_before[bad]
            np.fmin(best, np.where(alive, loss, np.nan), out=best)
            if target is not None:
                reached[(reached < 0) & alive & (loss <= target)] = step
            # The scale is recomputed from the state, a cost comparable to the step: only at
            # recorded steps (every step for run(), which records every step).
            stats = _group_scale_stats(groups, runs) if step in recorded else None
            if stats is not None:
                has_scale = True
                scale_sum[alive] += stats[0][alive]
                scale_count[alive] += 1
                if details and step in recorded:
                    if scale_rec is None:
                        scale_rec = [blank(n_rec - 1, runs) for _ in range(3)]
                    for rows, stat in zip(scale_rec, stats):
                        rows[recorded[step] - 1] = np.where(alive, stat, np.nan)
            record(step, loss, grad)
            if bar is not None:
                bar.update()
    final = loss_rec[-1].copy()
    mean_scale = None
    if has_scale:
        with np.errstate(invalid="ignore"):
            mean_scale = np.where(scale_count > 0, scale_sum / np.maximum(scale_count, 1), np.nan)
    scale_mean, scale_min, scale_ones = scale_rec if scale_rec is not None else (None, None, None)
    return Outcome(
        record_steps=np.asarray(record_steps),
        loss=loss_rec,
        final_loss=final,
        best_loss=best,
        steps_to_target=reached,
        diverged_at=diverged_at,
        mean_scale=mean_scale,
        grad_norm=grad_rec,
        distance=dist_rec,
        scale_mean=scale_mean,
        scale_min=scale_min,
        scale_ones=scale_ones,
        trajectory=traj_rec,
        step_time=step_time,
        first_divergence=first,
    )


def _group_scale_stats(groups: Sequence[RowGroup], runs: int) -> tuple[np.ndarray, ...] | None:
    """The CProp scale statistics of every group, put together per run (``None`` without CProp)."""
    if len(groups) == 1 and groups[0].rows == slice(0, runs):
        return _scale_stats(groups[0].optimizer)
    parts = [(group.rows, _scale_stats(group.optimizer)) for group in groups]
    if all(stats is None for _, stats in parts):
        return None
    out = tuple(np.full(runs, np.nan) for _ in range(3))
    for rows, stats in parts:
        if stats is not None:
            for target, value in zip(out, stats):
                target[rows] = value
    return out


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
    Run ``i`` has seed ``seed + i``, and its row of the history equals that of
    ``run(..., seed=seed + i, runs=1)``.
    ``start``: ``(dim,)`` or ``(runs, dim)``; default: ``problem.start_point`` of each run's seed.
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
    seeds = run_seeds(int(seed), int(runs))
    x = start_points(problem, seeds) if start is None else _given_start(problem, start, int(runs))

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

    if progress is None:
        progress = steps >= PROGRESS_MIN_STEPS and sys.stderr.isatty()
    bar = _Progress(steps, f"{label} on {problem.name}") if progress and steps > 0 else None
    began = time.perf_counter()
    outcome = simulate(
        problem,
        x,
        [RowGroup(slice(0, int(runs)), opt)],
        RunStreams(seeds),
        steps,
        record_steps=np.arange(steps + 1),
        details=True,
        record_trajectory=record_trajectory,
        bar=bar,
    )
    wall_time = time.perf_counter() - began
    if bar is not None:
        bar.close()
    diverged = None
    if outcome.first_divergence is not None:
        diverged = _divergence(label, problem, outcome.diverged_at)
    return History(
        problem=problem.name,
        optimizer=label,
        seed=int(seed),
        loss=outcome.loss,
        grad_norm=outcome.grad_norm,
        distance=outcome.distance,
        scale_mean=outcome.scale_mean,
        scale_min=outcome.scale_min,
        scale_ones=outcome.scale_ones,
        trajectory=outcome.trajectory,
        wall_time=wall_time,
        step_time=outcome.step_time,
        diverged=diverged,
        lr=lr,
        seeds=np.array(seeds, dtype=np.int64),
        diverged_at=outcome.diverged_at,
        best_loss=outcome.best_loss,
        mean_scale=outcome.mean_scale,
    )


def run_seeds(seed: int, runs: int) -> list[int]:
    """The seeds of the runs of ``run(..., seed=seed, runs=runs)``: ``seed, seed + 1, ...``."""
    return list(range(seed, seed + runs))


def start_points(problem: Problem, seeds: Sequence[int]) -> np.ndarray:
    """The start of every run, ``problem.start_point(seed)`` stacked: shape ``(runs, dim)``, float64."""
    return np.stack([np.asarray(problem.start_point(int(s)), dtype=np.float64) for s in seeds])


def _given_start(problem: Problem, start: np.ndarray, runs: int) -> np.ndarray:
    start = np.asarray(start, dtype=np.float64)
    if start.shape == (problem.dim,):
        return np.tile(start, (runs, 1))
    if start.shape == (runs, problem.dim):
        return start.copy()
    raise ValueError(f"start has shape {start.shape}; expected ({problem.dim},) or ({runs}, {problem.dim})")


def _divergence(label: str, problem: Problem, diverged_at: np.ndarray) -> str:
    """One line: how many runs diverged, at which steps (the first ten)."""
    bad = np.flatnonzero(diverged_at >= 0)
    listed = ", ".join(f"{i} at step {diverged_at[i]}" for i in bad[:10])
    more = " ..." if bad.size > 10 else ""
    return (
        f"{label} on {problem.name}: {bad.size} of {diverged_at.size} run(s) diverged (run {listed}{more}); "
        "each was frozen at its last finite point and is left out of the averages"
    )
