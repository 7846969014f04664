"""Two checks of what a port's users rely on besides the numbers of one parameter list:

- ``refusals`` (e): an invalid hyperparameter (a negative learning rate, a ``beta`` outside
  ``[0, 1)``, an unknown CDF, Nesterov without momentum, ...) is refused when the optimizer is
  built, with ``ValueError``, as the reference refuses it, and the refusal changes nothing
  (the parameters handed to the factory are as they were);
- ``groups`` (f): one optimizer over two *parameter groups* with different hyperparameters
  (torch's ``param_groups``, optax's ``multi_transform``, ...): each group moves as an
  optimizer of its own configuration would, every step compared as in the open loop.

The refusals check has two more kinds of case, each needing an optional hook:

- an invalid hyperparameter in the *second* of two parameter groups (the ``groups`` hook below;
  the port's own optimizers, not the wrapper, whose own hyperparameters the groups share): it
  is refused as in a one-group optimizer, and the message names the group by its index as the
  groups were given, 0-based: the number 1 occurs in it once more than in the message of the
  same refusal in a one-group optimizer (``"param group 1: lr ..."``, not ``"param group 2"``);
- the port's own options that must be refused, which the harness cannot know: the hook
  ``port.option_refusals(config, params)`` returns ``(label, build)`` pairs, ``label`` naming
  the options (``"foreach=True, fused=True"``) and ``build()`` building the optimizer for the
  valid ``config`` over ``params`` with them. Each ``build()`` must raise ``ValueError`` whose
  message names one of the options of its label, and leave ``params`` unchanged. (The torch
  port's hook: ``foreach`` and ``fused`` together, either of them not a bool, ``fused=True``
  over parameters on a device the compiled path does not take.)

The groups check needs an optional hook of the factory, ``port.groups(configs, params)``:
``configs`` one :class:`~.config.PortConfig` per group (same optimizer, base and dtype; for
the wrapper ``CProp`` the same wrapper hyperparameters, since it wraps one base optimizer
whose groups differ), ``params`` the parameters of each group; it returns one run over all
tensors, group after group, with the read-outs of :mod:`.protocol`. A factory without it is
counted as declining the check.
"""

from __future__ import annotations

import math
import re
import traceback
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from .bounds import RunBounds
from .checks import (
    CALL_TIME_LIMIT,
    _check_run,
    _Comparer,
    _done,
    _note_config_paths,
    _port_call,
    _read_outs,
    _step_both,
    _time_limit,
)
from .config import PortConfig
from .dtypes import to_storage
from .protocol import MissingMethod, Unsupported, optional
from .reference import ReferenceRun
from .report import Coverage, arrays_literal, python_literal, snippet

Grads = Sequence[np.ndarray | None]


def _hook(port: Any, name: str, call: str, purpose: str) -> Any:
    """The factory's optional hook ``name``; ``MissingMethod`` (a check declined) without it."""
    hook = getattr(port, name, None)
    if not callable(hook):
        raise MissingMethod(f"the port has no {call} hook: {purpose}")
    return hook


def _stored(params: Sequence[np.ndarray], dtype: str) -> list[np.ndarray]:
    """Fresh copies of ``params`` in ``dtype``'s storage (what the harness hands a port)."""
    return [to_storage(p, dtype).copy() for p in params]


def probe_gradients(params: Sequence[np.ndarray], dtype: str) -> list[np.ndarray]:
    """One gradient per tensor, ``linspace(-1, 1)`` over its elements: the step that shows whether
    a refused ``add_group`` left anything behind (the differential run takes the same)."""
    return [to_storage(np.linspace(-1.0, 1.0, np.size(p)).reshape(np.shape(p)), dtype) for p in params]


def reference_refusal(config: PortConfig, params: Sequence[np.ndarray]) -> str | None:
    """The reference's ``ValueError`` message for ``config`` (``None``: the reference accepts it)."""
    try:
        ReferenceRun(config, [to_storage(p, config.dtype) for p in params])
    except ValueError as err:
        return str(err)
    return None


def check_refusal(
    port: Any,
    config: PortConfig,
    params: Sequence[np.ndarray],
    invalid: str,
    *,
    port_spec: str | None = None,
    coverage: Coverage | None = None,
) -> Coverage:
    """(e) ``config`` holds one invalid hyperparameter (``invalid`` names it, ``"lr=-0.1"``): the
    port's factory must raise ``ValueError`` (``Unsupported`` declines the configuration), and
    leave the parameters it was handed unchanged. The reference's refusal is what makes the
    case invalid: a case the reference accepts is a harness error (``ValueError``)."""
    coverage = Coverage() if coverage is None else coverage
    expected = reference_refusal(config, params)
    if expected is None:
        raise ValueError(f"check_refusal: the reference accepts {config.describe()}; not an invalid configuration")

    def make_snippet(step: int) -> str:
        return snippet(
            port_spec,
            config,
            f"check_refusal(port, config, params, {invalid!r})",
            params=arrays_literal(params, config.np_dtype),
        )

    comparer = _Comparer("refusals", config, coverage, make_snippet)
    arrays = _stored(params, config.dtype)
    _expect_refusal(comparer, lambda: port(config, arrays), arrays, invalid, f"as the reference raises: {expected}")
    return _done(coverage, config)


def _expect_refusal(comparer: _Comparer, build: Any, arrays: Sequence[np.ndarray], invalid: str, expected: str) -> str:
    """``build()`` must raise ``ValueError`` (``Unsupported`` passes through) and leave ``arrays``
    as they were; the message of the refusal. ``expected`` says what the reference does."""
    kept = [np.array(a, copy=True) for a in arrays]

    def fail(detail: str, trace: str = "") -> None:
        _refusal_failed(comparer, detail, trace=trace)

    try:
        with _time_limit(CALL_TIME_LIMIT[0]):
            build()
    except Unsupported:
        raise
    except ValueError as err:
        changed = [k for k, (a, b) in enumerate(zip(arrays, kept)) if not np.array_equal(a, b, equal_nan=True)]
        if changed:
            fail(
                f"the port refused {invalid} but changed parameter {changed[0]} it was handed (a refusal changes nothing)"
            )
        comparer.coverage.add_compared("refusal", 1)
        return str(err)
    except Exception as err:  # noqa: BLE001 - any other exception is the finding
        frames = [f for f in traceback.extract_tb(err.__traceback__) if "cprop_ref/conformance/" not in f.filename]
        fail(
            f"{invalid}: the port raised {type(err).__name__}: {err}; expected ValueError ({expected})",
            trace="".join(traceback.format_list(frames[-6:])).rstrip(),
        )
    fail(f"{invalid}: the port built the optimizer; expected ValueError ({expected})")
    return ""  # not reached: fail raises


def _count_number(message: str, number: int) -> int:
    """How often ``number`` stands on its own in ``message`` (not a digit of another number, a
    decimal or an exponent)."""
    return len(re.findall(rf"(?<![\w.+-]){number}(?![\w.])", message))


def check_group_refusal(
    port: Any,
    valid: PortConfig,
    invalid: PortConfig,
    params: Sequence[Sequence[np.ndarray]],
    change: str,
    *,
    port_spec: str | None = None,
    coverage: Coverage | None = None,
) -> Coverage:
    """(e) ``invalid`` (``valid`` with one invalid hyperparameter, ``change`` naming it) as the
    second of two parameter groups, through the port's ``groups`` hook: refused with
    ``ValueError``, nothing changed, and the message names the group by its index, 1: that
    number occurs in it once more than in the message of ``invalid`` in a one-group optimizer."""
    coverage = Coverage() if coverage is None else coverage
    if invalid.optimizer == "CProp":
        raise ValueError("check_group_refusal: the wrapper's own hyperparameters are shared by its groups")
    expected = reference_refusal(invalid, params[1])
    if expected is None:
        raise ValueError(
            f"check_group_refusal: the reference accepts {invalid.describe()}; not an invalid configuration"
        )
    hook = _hook(port, "groups", "groups(configs, params)", "the group refusal needs it")

    def make_snippet(step: int) -> str:
        return snippet(
            port_spec,
            invalid,
            f"check_group_refusal(port, valid, config, params, {change!r})",
            valid=f"PortConfig.from_json({python_literal(valid.to_json())})",
            params="[" + ", ".join(arrays_literal(ps, invalid.np_dtype) for ps in params) + "]",
        )

    comparer = _Comparer("refusals", invalid, coverage, make_snippet)
    single = _stored(params[1], invalid.dtype)
    alone = _expect_refusal(comparer, lambda: port(invalid, single), single, change, f"the reference: {expected}")
    grouped = [_stored(ps, invalid.dtype) for ps in params]
    in_group = _expect_refusal(
        comparer,
        lambda: hook([valid, invalid], grouped),
        [a for ps in grouped for a in ps],
        f"{change} in parameter group 1",
        f"the reference: {expected}",
    )
    _check_names_group_1(comparer, change, in_group, alone)
    _check_refused_add_group(comparer, port, valid, invalid, params, change, expected, alone)
    return _done(coverage, invalid)


def _refusal_failed(comparer: _Comparer, detail: str, step: int = 0, tensor: int = -1, trace: str = "") -> None:
    """Report a refusal that went wrong (raises :class:`~.report.ConformanceMismatch`)."""
    comparer.fail(step, tensor, (), "refusal", math.nan, math.nan, 0.0, detail, trace=trace)


def _check_names_group_1(comparer: _Comparer, change: str, in_group: str, alone: str) -> None:
    if _count_number(in_group, 1) != _count_number(alone, 1) + 1:
        _refusal_failed(
            comparer,
            f"{change} in the second parameter group (index 1) was refused with {in_group!r}, which does not "
            f"name the group: the number 1 should occur in it once more than in the one-group refusal {alone!r}",
        )


def _check_refused_add_group(
    comparer: _Comparer,
    port: Any,
    valid: PortConfig,
    invalid: PortConfig,
    params: Sequence[Sequence[np.ndarray]],
    change: str,
    expected: str,
    alone: str,
) -> None:
    """Where the run has ``add_group(config, params)``: adding ``invalid`` as group 1 to a built
    one-group run is refused like the constructor's group 1, and changes nothing: the run's next
    step is, bit for bit, the step of the same port built without the attempt."""
    first = _stored(params[0], valid.dtype)
    run = _port_call(comparer, 0, "building the optimizer", lambda: port(valid, first))
    add = optional(run, "add_group")
    if add is None:
        return
    second = _stored(params[1], invalid.dtype)
    added = _expect_refusal(
        comparer,
        lambda: add(invalid, second),
        second,
        f"{change} added as parameter group 1 to a built optimizer",
        f"the reference: {expected}",
    )
    _check_names_group_1(comparer, f"{change} added with add_group", added, alone)
    untouched = _port_call(
        comparer,
        0,
        "building the optimizer",
        lambda: port(valid, _stored(params[0], valid.dtype)),
    )
    grads = probe_gradients(params[0], valid.dtype)
    _port_call(comparer, 1, "a step after a refused add_group", lambda: run.step([g.copy() for g in grads]))
    untouched.step([g.copy() for g in grads])
    for k, (a, b) in enumerate(zip(run.params(), untouched.params())):
        if not np.array_equal(np.asarray(a), np.asarray(b), equal_nan=True):
            _refusal_failed(
                comparer,
                f"after add_group refused {change}, the next step of parameter {k} differs from the step of an "
                "optimizer that never saw the group (a refused call must change nothing)",
                step=1,
                tensor=k,
            )


def check_option_refusals(
    port: Any,
    config: PortConfig,
    params: Sequence[np.ndarray],
    *,
    port_spec: str | None = None,
    coverage: Coverage | None = None,
) -> Coverage:
    """(e) The port's own invalid options (its ``option_refusals(config, params)`` hook, for a
    valid ``config``): each ``build()`` raises ``ValueError`` naming one of its label's options
    and leaves the parameters unchanged."""
    coverage = Coverage() if coverage is None else coverage
    hook = _hook(port, "option_refusals", "option_refusals(config, params)", "it declares no options to refuse")

    def make_snippet(step: int) -> str:
        return snippet(
            port_spec,
            config,
            "check_option_refusals(port, config, params)",
            params=arrays_literal(params, config.np_dtype),
        )

    comparer = _Comparer("refusals", config, coverage, make_snippet)
    arrays = _stored(params, config.dtype)
    refusals = list(hook(config, arrays))
    if not refusals:
        raise MissingMethod("the port's option_refusals hook declares no options for this configuration")
    for label, build in refusals:
        message = _expect_refusal(comparer, build, arrays, label, "the port declares these options invalid")
        names = [item.split("=", 1)[0].strip() for item in label.split(",") if "=" in item]
        if names and not any(name in message for name in names):
            _refusal_failed(
                comparer,
                f"{label}: refused with {message!r}, which names none of the options {', '.join(names)}",
            )
    return _done(coverage, config)


class _GroupedReference:
    """The reference for a run over parameter groups: one reference run per group (groups do
    not interact), its tensors and read-outs one list, group after group."""

    def __init__(self, configs: Sequence[PortConfig], params: Sequence[Sequence[np.ndarray]]) -> None:
        self.runs = [ReferenceRun(c, ps) for c, ps in zip(configs, params)]
        self.sizes = [len(ps) for ps in params]

    def _split(self, values: Sequence[Any]) -> list[list[Any]]:
        out, start = [], 0
        for n in self.sizes:
            out.append(list(values[start : start + n]))
            start += n
        return out

    def step(self, grads: Grads) -> None:
        for run, gs in zip(self.runs, self._split(grads)):
            run.step(gs)

    def params(self) -> list[np.ndarray]:
        return [p for run in self.runs for p in run.params()]

    def states(self) -> list[dict[str, Any]]:
        return [st for run in self.runs for st in run.states()]

    def scales(self) -> list[np.ndarray | None]:
        return [s for run in self.runs for s in run.scales()]


class _GroupedBounds:
    """The bounds of a run over parameter groups: each tensor's from its own group's configuration."""

    def __init__(self, configs: Sequence[PortConfig], shapes: Sequence[Sequence[tuple[int, ...]]]) -> None:
        self.config = configs[0]  # the dtype, shared by the groups
        self.groups = [RunBounds(c, list(s)) for c, s in zip(configs, shapes)]
        self.tensors = [tb for rb in self.groups for tb in rb.tensors]
        self.where = [(g, k) for g, s in enumerate(shapes) for k in range(len(s))]

    def advance(self, k: int, *args: Any) -> dict[str, np.ndarray]:
        group, local = self.where[k]
        return self.groups[group].advance(local, *args)


def check_groups(
    port: Any,
    configs: Sequence[PortConfig],
    params: Sequence[Sequence[np.ndarray]],
    grads: Sequence[Grads],
    *,
    port_spec: str | None = None,
    coverage: Coverage | None = None,
) -> Coverage:
    """(f) One run over parameter groups (``configs[g]``, ``params[g]``), the same gradient stream
    (``grads[i]``: every tensor, group after group) into it and into one reference run per group;
    every step compared as in the open loop, each tensor within its own group's bounds."""
    coverage = Coverage() if coverage is None else coverage
    config = configs[0]
    for other in configs[1:]:
        if (other.optimizer, other.base, other.dtype) != (config.optimizer, config.base, config.dtype) or (
            config.optimizer == "CProp" and other.hyperparams != config.hyperparams
        ):
            raise ValueError(
                "check_groups: the groups' configurations must share the optimizer, base, dtype and, for "
                f"the wrapper, its own hyperparameters: {config.describe()} / {other.describe()}"
            )
    hook = _hook(port, "groups", "groups(configs, params)", "the parameter-groups check needs it")

    def make_snippet(step: int) -> str:
        stream = "[" + ", ".join(arrays_literal(gs) for gs in grads[:step]) + "]"
        return snippet(
            port_spec,
            config,
            "check_groups(port, configs, params, grads)",
            configs="[" + ", ".join(f"PortConfig.from_json({python_literal(c.to_json())})" for c in configs) + "]",
            params="[" + ", ".join(arrays_literal(ps, c.np_dtype) for c, ps in zip(configs, params)) + "]",
            grads=stream,
        )

    comparer = _Comparer("groups", config, coverage, make_snippet)
    stored = [_stored(ps, config.dtype) for ps in params]
    ref = _GroupedReference(configs, stored)
    for c in configs:
        _note_config_paths(coverage, c, None)
    run = _port_call_groups(comparer, hook, configs, stored)
    shapes = [[np.shape(p) for p in ps] for ps in stored]
    flat_shapes = [s for group in shapes for s in group]
    bounds = _GroupedBounds(configs, shapes)
    initial, _, _ = _read_outs(comparer, 0, run, flat_shapes, config)
    for k, (port_p, ref_p) in enumerate(zip(initial, ref.params())):
        comparer.compare(0, k, "param", port_p, ref_p, 0.0)
    for step, gs in enumerate(grads, start=1):
        _step_both(comparer, step, run, ref, bounds, gs)  # type: ignore[arg-type]
    for c in configs[1:]:
        coverage.configurations.add(c.describe())
    return _done(coverage, config)


def _port_call_groups(
    comparer: _Comparer, hook: Any, configs: Sequence[PortConfig], params: list[list[np.ndarray]]
) -> Any:
    run = _port_call(
        comparer,
        0,
        "building the optimizer over parameter groups",
        lambda: hook(list(configs), [[p.copy() for p in ps] for ps in params]),
    )
    _check_run(comparer, run, 0)
    return run


@dataclass
class RefusalCase:
    """``config`` with one invalid hyperparameter, named by ``invalid`` (``"cprop_beta=1.0"``)."""

    config: PortConfig
    params: list[np.ndarray]
    invalid: str

    def run(self, port: Any, port_spec: str | None = None, coverage: Coverage | None = None) -> Coverage:
        return check_refusal(port, self.config, self.params, self.invalid, port_spec=port_spec, coverage=coverage)


@dataclass
class GroupRefusalCase:
    """``invalid`` (``valid`` with one invalid hyperparameter, named by ``change``) as the second
    of two parameter groups (``params[g]``)."""

    valid: PortConfig
    invalid: PortConfig
    params: list[list[np.ndarray]]
    change: str

    @property
    def config(self) -> PortConfig:
        return self.invalid

    def run(self, port: Any, port_spec: str | None = None, coverage: Coverage | None = None) -> Coverage:
        return check_group_refusal(
            port, self.valid, self.invalid, self.params, self.change, port_spec=port_spec, coverage=coverage
        )


@dataclass
class OptionRefusalCase:
    """A valid ``config`` over ``params``: the port's own invalid options must be refused."""

    config: PortConfig
    params: list[np.ndarray]

    def run(self, port: Any, port_spec: str | None = None, coverage: Coverage | None = None) -> Coverage:
        return check_option_refusals(port, self.config, self.params, port_spec=port_spec, coverage=coverage)


@dataclass
class GroupsCase:
    """Two (or more) parameter groups: ``configs[g]`` over ``params[g]``; ``grads[i]`` flat over all tensors."""

    configs: list[PortConfig]
    params: list[list[np.ndarray]]
    grads: list[list[np.ndarray | None]]

    @property
    def config(self) -> PortConfig:
        return self.configs[0]

    def run(self, port: Any, port_spec: str | None = None, coverage: Coverage | None = None) -> Coverage:
        return check_groups(port, self.configs, self.params, self.grads, port_spec=port_spec, coverage=coverage)


#: Invalid values of each hyperparameter (``docs/algorithm.md``'s ranges: rates and ``c``, ``eps``,
#: weight decay, momentum ``>= 0`` and finite; decays in ``[0, 1)``; dampening in ``[0, 1]``; one of
#: the four CDFs). The wrapper's own names (``beta``, ``c``, ...) take the ``cprop_`` ones' values.
INVALID_VALUES: dict[str, tuple[Any, ...]] = {
    "lr": (-0.1, math.nan, math.inf),
    "cprop_beta": (1.0, -0.5, math.nan),
    "cprop_c": (-1.0, math.inf),
    "cprop_eps": (-1e-8, math.nan),
    "cprop_cdf": ("cauchy",),
    "momentum": (-0.5,),
    "dampening": (1.5, -0.1),
    "weight_decay": (-1.0, math.inf),
    "betas": ((1.0, 0.999), (0.9, 1.0), (-0.1, 0.999)),
    "eps": (-1e-8,),
}
#: Combinations that are invalid together (the reference's SGD: Nesterov needs momentum > 0
#: and no dampening).
INVALID_COMBINATIONS: tuple[dict[str, Any], ...] = (
    {"nesterov": True, "momentum": 0.0, "dampening": 0.0},
    {"nesterov": True, "momentum": 0.9, "dampening": 0.5},
)
_WRAPPER_NAMES = {"cprop_beta": "beta", "cprop_c": "c", "cprop_eps": "eps", "cprop_cdf": "cdf"}


def invalid_variants(config: PortConfig) -> list[tuple[PortConfig, str]]:
    """Every configuration that differs from ``config`` in one invalid hyperparameter of the
    optimizer's own (for the wrapper: CProp's ``beta``, ``c``, ``eps``, ``cdf``; its base optimizer's
    are the framework's), or in an invalid combination, each with the change named."""
    out = []
    own = config.hyperparams
    for name, values in INVALID_VALUES.items():
        key = _WRAPPER_NAMES.get(name, name) if config.optimizer == "CProp" else name
        if key not in own:
            continue
        for value in values:
            out.append((_replace(config, {key: value}), f"{key}={value!r}"))
    if config.optimizer == "CPropSGD":
        for combination in INVALID_COMBINATIONS:
            out.append((_replace(config, combination), ", ".join(f"{k}={v!r}" for k, v in combination.items())))
    return out


def _replace(config: PortConfig, changes: dict[str, Any]) -> PortConfig:
    return PortConfig(
        config.optimizer, {**config.hyperparams, **changes}, config.dtype, config.base, dict(config.base_hyperparams)
    )
