"""What a sweep is: problem, optimizers, grid, seeds, steps, and how it is cut into units.

Everything here is checked before any run starts, and a :class:`SweepConfig` is plain
data (JSON in the store's attributes, pickled to Dask workers). A *unit* of work is one
optimizer and one block of the grid points it takes, with every seed: the rows of one
vectorised simulation, written to the store as whole zarr chunks.
"""

from __future__ import annotations

import itertools
import json
import math
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np

from problems import Problem, make_problem, parse_options, problem_class

from ..runner import OptimizerSpec, accepted_options, canonical_option, parse_optimizer_spec

#: The hyperparameters a grid may sweep: the optimizers' numeric ones.
GRID_KEYS: tuple[str, ...] = (
    "lr",
    "momentum",
    "dampening",
    "weight_decay",
    "eps",
    "cprop_beta",
    "cprop_c",
    "cprop_eps",
)
#: Rows (grid points x seeds) of one unit, at most, unless one grid point has more seeds.
DEFAULT_CHUNK_ROWS = 4096
#: Version of the store's layout; a store of another version is refused.
STORE_FORMAT = 1


@dataclass(frozen=True)
class SweepConfig:
    """A sweep, fully specified. ``grid`` maps canonical hyperparameter names to values
    (in the grid's order); ``chunks`` the block length along each grid key."""

    problem: str
    problem_options: dict[str, Any]
    optimizers: tuple[str, ...]
    grid: dict[str, tuple[float, ...]]
    seeds: tuple[int, ...]
    steps: int
    target: float | None
    record_every: int
    chunks: tuple[int, ...]
    format: int = STORE_FORMAT

    # -- derived --------------------------------------------------------------------

    @property
    def keys(self) -> tuple[str, ...]:
        return tuple(self.grid)

    @property
    def shape(self) -> tuple[int, ...]:
        """``(optimizers, *grid lengths, seeds)``."""
        return (len(self.optimizers), *(len(v) for v in self.grid.values()), len(self.seeds))

    def record_steps(self) -> np.ndarray:
        """``0, record_every, ...`` and always the last step."""
        recorded = np.arange(0, self.steps + 1, self.record_every, dtype=np.int64)
        return recorded if recorded[-1] == self.steps else np.append(recorded, self.steps)

    def spec(self, index: int) -> OptimizerSpec:
        return parse_optimizer_spec(self.optimizers[index])

    def takes(self, index: int) -> tuple[bool, ...]:
        """Per grid key: does optimizer ``index`` take it (else it is computed once and broadcast)."""
        accepted = accepted_options(self.spec(index).name)
        return tuple(key in accepted for key in self.keys)

    def build_problem(self) -> Problem:
        return make_problem(self.problem, **self.problem_options)

    def units(self) -> list[Unit]:
        """Every unit of work, optimizer by optimizer, blocks in C order."""
        out = []
        for index in range(len(self.optimizers)):
            takes = self.takes(index)
            ranges = []
            for key, size, taken in zip(self.keys, self.chunks, takes):
                length = len(self.grid[key])
                ranges.append([(a, min(a + size, length)) for a in range(0, length, size)] if taken else [None])
            for blocks in itertools.product(*ranges):
                out.append(Unit(index, tuple(blocks)))
        return out

    # -- the store's attribute ------------------------------------------------------

    def to_json(self) -> str:
        return json.dumps(asdict(self), sort_keys=True)

    @classmethod
    def from_json(cls, text: str) -> SweepConfig:
        data = json.loads(text)
        data["optimizers"] = tuple(data["optimizers"])
        data["grid"] = {k: tuple(v) for k, v in data["grid"].items()}
        data["seeds"] = tuple(data["seeds"])
        data["chunks"] = tuple(data["chunks"])
        return cls(**data)

    def differences(self, other: SweepConfig) -> list[str]:
        """What differs from ``other``, one phrase per field: ``steps 2000 (store: 1000)``."""
        mine, theirs = asdict(self), asdict(other)
        return [f"{name} {mine[name]!r} (store: {theirs[name]!r})" for name in mine if mine[name] != theirs[name]]


@dataclass(frozen=True)
class Unit:
    """Optimizer ``optimizer`` on the grid block ``blocks``: per grid key a ``(start, stop)``
    range, or ``None`` for a key the optimizer does not take (computed at the key's first
    value and broadcast along the whole axis)."""

    optimizer: int
    blocks: tuple[tuple[int, int] | None, ...]

    def key(self) -> str:
        """A name for the unit, unique within its sweep: ``2-0:4-*``."""
        blocks = "-".join("*" if b is None else f"{b[0]}:{b[1]}" for b in self.blocks)
        return f"{self.optimizer}-{blocks}" if blocks else str(self.optimizer)

    def region(self, config: SweepConfig) -> dict[str, slice]:
        """The unit's slice of the dataset along ``optimizer`` and every grid key."""
        region = {"optimizer": slice(self.optimizer, self.optimizer + 1)}
        for key, block in zip(config.keys, self.blocks):
            region[key] = slice(None) if block is None else slice(*block)
        return region

    def points(self, config: SweepConfig) -> list[dict[str, float]]:
        """The grid points the unit computes (C order over the taken keys), as hyperparameters."""
        axes = []
        for key, block in zip(config.keys, self.blocks):
            if block is not None:
                axes.append([(key, v) for v in config.grid[key][block[0] : block[1]]])
        return [dict(point) for point in itertools.product(*axes)]

    def point_shape(self, config: SweepConfig) -> tuple[int, ...]:
        """The unit's extent per grid key (1 for a broadcast key)."""
        return tuple(1 if block is None else block[1] - block[0] for block in self.blocks)


# -- building and checking a config ------------------------------------------------------


def make_config(
    problem: str | Problem,
    optimizers: Sequence[str | OptimizerSpec] | str,
    grid: Mapping[str, Any],
    seeds: int | Sequence[int],
    steps: int,
    *,
    problem_options: Mapping[str, Any] | None = None,
    target: float | None = None,
    record_every: int | None = None,
    chunk_rows: int = DEFAULT_CHUNK_ROWS,
) -> SweepConfig:
    """Check every argument of a sweep and return its :class:`SweepConfig`; a ``ValueError``
    naming the first bad one otherwise (nothing has run yet)."""
    problem_name, options = _problem(problem, problem_options)
    built = make_problem(problem_name, **options)
    specs = _optimizers(optimizers)
    grid_values = _grid(grid, specs)
    _check_values_build(specs, grid_values, built)
    seed_list = _seeds(seeds)
    steps = _positive_int("steps", steps)
    if record_every is None:
        record_every = max(1, steps // 100)
    record_every = _positive_int("record_every", record_every)
    if target is None:
        target = built.target_loss()
    elif isinstance(target, bool) or not isinstance(target, (int, float)) or not math.isfinite(target):
        raise ValueError(f"invalid target={target!r}: must be a finite number")
    chunk_rows = _positive_int("chunk_rows", chunk_rows)
    chunks = _chunks([len(v) for v in grid_values.values()], len(seed_list), chunk_rows)
    return SweepConfig(
        problem=problem_name,
        problem_options=options,
        optimizers=tuple(spec.label for spec in specs),
        grid=grid_values,
        seeds=tuple(seed_list),
        steps=steps,
        target=None if target is None else float(target),
        record_every=record_every,
        chunks=tuple(chunks),
    )


def _problem(problem: str | Problem, options: Mapping[str, Any] | None) -> tuple[str, dict[str, Any]]:
    if isinstance(problem, Problem):
        if options:
            raise ValueError("problem_options: give them with the problem's name, not with a built problem")
        return problem.name, {name: getattr(problem, name) for name in problem.options()}
    if not isinstance(problem, str):
        raise ValueError(f"problem must be a name or a Problem, got {type(problem).__name__}")
    problem_class(problem)  # unknown name: ValueError listing the known ones
    options = dict(options or {})
    texts = [f"{k}={v}" for k, v in options.items() if isinstance(v, str)]
    options.update(parse_options(problem, texts))  # "noise=1" style strings typed by the problem
    return problem, options


def _optimizers(optimizers: Sequence[str | OptimizerSpec] | str) -> list[OptimizerSpec]:
    """Specs with their text as label (the store keeps them as text)."""
    items = optimizers.split(",") if isinstance(optimizers, str) else list(optimizers)
    if not items:
        raise ValueError("optimizers: the list is empty")
    specs = []
    for item in items:
        if isinstance(item, OptimizerSpec):
            specs.append(parse_optimizer_spec(_spec_text(item)))
        elif isinstance(item, str) and item.strip():
            specs.append(parse_optimizer_spec(item))
        else:
            raise ValueError(f"optimizers: {item!r} is not an optimizer spec")
    labels = [spec.label for spec in specs]
    repeated = sorted({label for label in labels if labels.count(label) > 1})
    if repeated:
        raise ValueError(f"optimizers: {', '.join(repeated)} listed more than once")
    return specs


def _spec_text(spec: OptimizerSpec) -> str:
    """``NAME:KEY=VALUE...`` that :func:`parse_optimizer_spec` reads back as ``spec``."""
    parts = [spec.name]
    for key, value in spec.options.items():
        if isinstance(value, tuple):
            value = "/".join(repr(v) for v in value)
        elif isinstance(value, bool):
            value = str(value).lower()
        parts.append(f"{key}={value!r}" if isinstance(value, float) else f"{key}={value}")
    return ":".join(parts)


def _check_values_build(specs: list[OptimizerSpec], grid: dict[str, tuple[float, ...]], problem: Problem) -> None:
    """Build every optimizer once with every grid value it takes (on a dummy parameter):
    a value the optimizer refuses (``lr=-1``) fails here, before any run, with its message."""
    for spec in specs:
        accepted = accepted_options(spec.name)
        default_lr = problem.default_lr.get(spec.family)
        spec.build([np.zeros(1)], default_lr)
        for key, values in grid.items():
            if key not in accepted:
                continue
            for value in values:
                try:
                    OptimizerSpec(spec.name, {**spec.options, key: value}, spec.label).build([np.zeros(1)], default_lr)
                except ValueError as err:
                    raise ValueError(f"grid key {key!r}, value {value!r} for {spec.label!r}: {err}") from None


def _grid(grid: Mapping[str, Any], specs: list[OptimizerSpec]) -> dict[str, tuple[float, ...]]:
    if not isinstance(grid, Mapping):
        raise ValueError(f"grid must map hyperparameter names to value lists, got {type(grid).__name__}")
    out: dict[str, tuple[float, ...]] = {}
    for raw_key, raw_values in grid.items():
        key = canonical_option(str(raw_key))
        if key not in GRID_KEYS:
            raise ValueError(f"grid key {raw_key!r}: not a numeric hyperparameter; one of {', '.join(GRID_KEYS)}")
        if key in out:
            raise ValueError(f"grid key {raw_key!r}: {key} is in the grid twice")
        takers = [spec for spec in specs if key in accepted_options(spec.name)]
        if not takers:
            names = ", ".join(spec.label for spec in specs)
            raise ValueError(f"grid key {raw_key!r}: none of the optimizers ({names}) takes {key}")
        for spec in takers:
            if key in spec.options:
                raise ValueError(f"grid key {raw_key!r}: optimizer {spec.label!r} already sets {key}")
        out[key] = _values(raw_key, raw_values)
    return out


def _values(key: Any, values: Any) -> tuple[float, ...]:
    if isinstance(values, (str, bytes)) or not hasattr(values, "__iter__"):
        raise ValueError(f"grid key {key!r}: values must be a list of numbers, got {values!r}")
    out = []
    for value in values:
        if isinstance(value, bool) or not isinstance(value, (int, float, np.integer, np.floating)):
            raise ValueError(f"grid key {key!r}: value {value!r} is not a number")
        if not math.isfinite(value):
            raise ValueError(f"grid key {key!r}: value {value!r} is not finite")
        out.append(float(value))
    if not out:
        raise ValueError(f"grid key {key!r}: the value list is empty")
    if len(set(out)) != len(out):
        raise ValueError(f"grid key {key!r}: values repeat ({out})")
    return tuple(out)


def _seeds(seeds: int | Sequence[int]) -> list[int]:
    if isinstance(seeds, (int, np.integer)) and not isinstance(seeds, bool):
        if seeds < 1:
            raise ValueError(f"invalid seeds={seeds!r}: a count must be >= 1")
        return list(range(int(seeds)))
    if isinstance(seeds, (str, bytes)) or not hasattr(seeds, "__iter__"):
        raise ValueError(f"invalid seeds={seeds!r}: a count or a list of integers >= 0")
    out = list(seeds)
    if not out:
        raise ValueError("invalid seeds=[]: the list is empty")
    for seed in out:
        if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)) or seed < 0:
            raise ValueError(f"invalid seed {seed!r} in seeds: must be an integer >= 0")
    if len(set(out)) != len(out):
        raise ValueError(f"invalid seeds={out}: seeds repeat")
    return [int(s) for s in out]


def _positive_int(name: str, value: Any) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 1:
        raise ValueError(f"invalid {name}={value!r}: must be an integer >= 1")
    return int(value)


def _chunks(lengths: list[int], seeds: int, chunk_rows: int) -> list[int]:
    """Block lengths per grid key: whole axes from the last key backwards while the
    rows (points x seeds) fit in ``chunk_rows``, then a partial block, then single points."""
    chunks = [1] * len(lengths)
    rows = seeds
    for j in reversed(range(len(lengths))):
        fit = max(1, chunk_rows // rows)
        chunks[j] = min(lengths[j], fit)
        rows *= chunks[j]
        if chunks[j] < lengths[j]:
            break
    return chunks


def parse_grid_values(key: str, text: str) -> tuple[float, ...]:
    """``--grid`` values: ``a,b,c`` or a range ``low:high:count[:log|lin]`` (both ends included;
    ``log`` spaced evenly in log10, for positive ends)."""
    text = text.strip()
    if ":" in text:
        parts = text.split(":")
        if len(parts) not in (3, 4):
            raise ValueError(f"--grid {key}={text}: a range is LOW:HIGH:COUNT[:log|lin]")
        scale = parts[3].strip().lower() if len(parts) == 4 else "lin"
        try:
            low, high, count = float(parts[0]), float(parts[1]), int(parts[2])
        except ValueError:
            raise ValueError(f"--grid {key}={text}: LOW and HIGH must be numbers, COUNT an integer") from None
        if count < 1 or scale not in ("log", "lin") or not (math.isfinite(low) and math.isfinite(high)):
            raise ValueError(f"--grid {key}={text}: COUNT must be >= 1 and the scale log or lin, ends finite")
        if count > 1 and low == high:
            raise ValueError(f"--grid {key}={text}: LOW equals HIGH with COUNT {count}")
        if scale == "log":
            if low <= 0 or high <= 0:
                raise ValueError(f"--grid {key}={text}: a log range needs positive ends")
            values = np.logspace(math.log10(low), math.log10(high), count)
        else:
            values = np.linspace(low, high, count)
        # round-trip through 12 significant digits: 1e-4:1:5:log gives 1e-4, 1e-3, ... exactly
        return tuple(float(f"{v:.12g}") for v in values)
    items = [item.strip() for item in text.split(",")]
    if not text or any(not item for item in items):
        raise ValueError(f"--grid {key}={text!r}: empty value")
    try:
        return tuple(float(item) for item in items)
    except ValueError:
        raise ValueError(f"--grid {key}={text}: not a list of numbers") from None
