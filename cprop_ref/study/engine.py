"""One unit of a sweep, computed: every grid point of the unit times every seed, advanced as
the rows of one array by :func:`cprop_ref.runner.simulate`.

Row ``p * seeds + k`` is grid point ``p`` (C order over the unit's block) with seed
``seeds[k]``: its start is ``problem.start_point(seeds[k])`` and its noise the stream of
``seeds[k]``, exactly those of ``run(problem, spec, steps, seed=seeds[k])``, so every entry
equals that single run whatever the unit, the chunking or the machine that computes it.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from problems import Problem
from problems.streams import RunStreams

from ..runner import OptimizerSpec, RowGroup, simulate, start_points
from .config import SweepConfig, Unit

#: The per-run results of a unit, with their extra dims (all have the unit's leading dims
#: ``(1 optimizer, *grid block, seeds)``).
RESULT_VARIABLES: dict[str, tuple[str, ...]] = {
    "loss": ("step",),
    "final_loss": (),
    "best_loss": (),
    "steps_to_target": (),
    "diverged": (),
    "diverged_step": (),
    "mean_scale": (),
}


def row_groups(
    problem: Problem, spec: OptimizerSpec, points: Sequence[dict[str, float]], x: np.ndarray, seeds: int
) -> list[RowGroup]:
    """The optimizers of a unit: one per grid point, over that point's ``seeds`` rows of ``x``
    (a view, so the optimizer steps the shared array in place). The optimizers are
    element-wise, so each row moves exactly as in a run of its own."""
    default_lr = problem.default_lr.get(spec.family)
    groups = []
    for p, point in enumerate(points):
        rows = slice(p * seeds, (p + 1) * seeds)
        optimizer = OptimizerSpec(spec.name, {**spec.options, **point}, spec.label).build([x[rows]], default_lr)
        groups.append(RowGroup(rows, optimizer))
    return groups


def compute_unit(config: SweepConfig | str, unit: Unit) -> dict[str, np.ndarray]:
    """The results of ``unit``: arrays shaped ``(1, *unit.point_shape(config), seeds[, steps])``.

    ``config`` may be the JSON of a :class:`SweepConfig` (what Dask workers receive)."""
    if isinstance(config, str):
        config = SweepConfig.from_json(config)
    problem = config.build_problem()
    points = unit.points(config)
    seeds = list(config.seeds)
    x = np.tile(start_points(problem, seeds), (len(points), 1))
    row_seeds = seeds * len(points)
    groups = row_groups(problem, config.spec(unit.optimizer), points, x, len(seeds))
    outcome = simulate(
        problem,
        x,
        groups,
        RunStreams(row_seeds),
        config.steps,
        record_steps=config.record_steps(),
        target=config.target,
    )
    lead = (1, *unit.point_shape(config), len(seeds))

    def per_run(values: np.ndarray) -> np.ndarray:
        return values.reshape(lead)

    mean_scale = outcome.mean_scale if outcome.mean_scale is not None else np.full(len(row_seeds), np.nan)
    return {
        "loss": outcome.loss.T.reshape(*lead, -1),
        "final_loss": per_run(outcome.final_loss),
        "best_loss": per_run(outcome.best_loss),
        "steps_to_target": per_run(outcome.steps_to_target),
        "diverged": per_run(outcome.diverged_at >= 0),
        "diverged_step": per_run(outcome.diverged_at),
        "mean_scale": per_run(mean_scale),
    }
