"""The optimizer shell: parameter groups, per-parameter state, checked steps, state dicts.

Subclasses supply the hyperparameter table and one function, :meth:`Optimizer._compute`,
that maps ``(param, grad, state, group)`` to the new parameter and the new state
without modifying anything (the hot loop of the optimizer family). :meth:`Optimizer.step`
checks every gradient first, computes every update, and only then writes them, so a
step that raises leaves parameters and state exactly as they were.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Sequence
from typing import Any, ClassVar

import numpy as np

from .. import checkpoint
from ..gradients import (
    check_gradients,
    check_nonfinite_policy,
    check_parameter,
    compute_dtype,
    first_overlap,
    parameters_are_plain,
)
from ..hyperparams import Validator, check_broadcasts, check_fits_dtypes
from ..kernels import DEFAULT_BACKEND, check_backend, check_kernel_cdf
from ..kernels.family import check_kernel_family
from ..kernels.plan import LaunchPlan
from .rows import has_run_arrays, step_by_class

ParamState = dict[str, Any]
Update = tuple[np.ndarray, ParamState]


def flat_params(param_groups: list[dict[str, Any]]) -> list[np.ndarray]:
    """The parameters of ``param_groups``, group after group (the order of ``step``'s gradients)."""
    return [p for group in param_groups for p in group["params"]]


def parameter_names(param_groups: list[dict[str, Any]]) -> list[str]:
    """``"parameter k (group i, index j)"`` for every parameter, in :func:`flat_params` order:
    how every error message names a parameter."""
    names = []
    for i, group in enumerate(param_groups):
        for j in range(len(group["params"])):
            names.append(f"parameter {len(names)} (group {i}, index {j})")
    return names


class Optimizer:
    """Base class of cprop-ref's optimizers (the optimizer protocol, see ``docs/optimizers.md``).

    ``params`` is a list of NumPy arrays, updated in place, or a list of parameter groups:
    dicts with a ``"params"`` list and their own hyperparameters, as in PyTorch.
    ``nonfinite`` says what a NaN or infinite gradient does: ``"raise"`` (default; the step
    changes nothing), ``"skip"`` (that parameter and its state are left alone for the
    step) or ``"propagate"`` (the formulas are applied as they are).
    ``backend`` is ``"numba"`` (default: fused kernels, state in one flat buffer per dtype,
    see ``docs/performance.md``) or ``"numpy"`` (the readable reference); it may be changed
    between steps, and checkpoints load into either. The real-valued hyperparameters may be
    arrays that broadcast against the group's parameters (one value per run, e.g. ``lr`` of
    shape ``(R, 1)`` for parameters of shape ``(R, dim)``): each run then moves exactly as the
    optimizer built with its scalars (:mod:`.rows`, ``docs/optimizers.md``).
    """

    hyperparams: ClassVar[dict[str, Validator]] = {}
    #: The family of fused kernels that runs the step with ``backend="numba"``, by name
    #: (:data:`cprop_ref.kernels.family.KERNEL_FAMILIES`; ``None``: the NumPy path only).
    kernel_family: ClassVar[str | None] = None
    #: What the fused steps keep between steps (:class:`cprop_ref.kernels.plan.LaunchPlan`);
    #: invalidated here when a group is added or a state dict loaded.
    kernel_plan: LaunchPlan

    def __init__(
        self,
        params: Iterable[Any],
        defaults: dict[str, Any],
        *,
        nonfinite: str = "raise",
        backend: str = DEFAULT_BACKEND,
    ) -> None:
        self.nonfinite = check_nonfinite_policy(nonfinite)
        self.backend = check_backend(backend)
        check_kernel_family(type(self).__name__, self.kernel_family)
        self.kernel_plan = LaunchPlan()
        self._per_run_scratch: dict[tuple, Optimizer] = {}
        self.defaults = {name: self._validate(name, value, type(self).__name__) for name, value in defaults.items()}
        self.param_groups: list[dict[str, Any]] = []
        self.state: list[ParamState] = []
        if isinstance(params, np.ndarray):
            raise ValueError("params must be a list of arrays or of parameter groups, not a single array")
        groups = list(params)
        if not groups:
            raise ValueError("params is empty: the optimizer needs at least one parameter")
        if all(isinstance(g, dict) for g in groups):
            for group in groups:
                self.add_param_group(group)
        else:
            self.add_param_group({"params": groups})

    # -- parameter groups ---------------------------------------------------------------

    def _validate(self, name: str, value: Any, where: str) -> Any:
        try:
            return self.hyperparams[name](name, value)
        except ValueError as err:
            raise ValueError(f"{where}: {err}") from None

    def _check_group(self, group: dict[str, Any], where: str) -> None:
        """Cross-hyperparameter rules (override); single values are checked by the table."""

    def add_param_group(self, group: dict[str, Any]) -> None:
        """Add a group of parameters with its own hyperparameters (missing ones take the defaults)."""
        index = len(self.param_groups)
        where = f"{type(self).__name__} param group {index}"
        if not isinstance(group, dict) or "params" not in group:
            raise ValueError(f"{where}: a parameter group is a dict with a 'params' list")
        unknown = set(group) - set(self.hyperparams) - {"params"}
        if unknown:
            raise ValueError(f"{where}: unknown hyperparameter(s) {sorted(unknown)}; known: {sorted(self.hyperparams)}")
        params = group["params"]
        params = [params] if isinstance(params, np.ndarray) else list(params)
        if not params:
            raise ValueError(f"{where}: 'params' is empty")
        existing = {id(p) for p in self.params}
        for j, p in enumerate(params):
            check_parameter(p, f"{where}, parameter {j}")
            if id(p) in existing:
                raise ValueError(f"{where}, parameter {j}: this array is already in the optimizer")
            existing.add(id(p))
        old = self.params
        overlap = first_overlap([*old, *params])
        if overlap is not None:
            i, j = overlap
            other = self.param_names()[i] if i < len(old) else f"parameter {i - len(old)} of this group"
            raise ValueError(
                f"{where}, parameter {j - len(old)}: shares memory with {other} (overlapping views of one "
                "array); every parameter needs memory of its own"
            )
        values = {name: group.get(name, self.defaults[name]) for name in self.hyperparams}
        new_group = self._checked_group(params, values, where)
        if self.backend == "numba" and self.kernel_family is not None and "cprop_cdf" in new_group:
            try:
                check_kernel_cdf("cprop_cdf", new_group["cprop_cdf"])
            except ValueError as err:
                raise ValueError(f"{where}: {err}") from None
        self.param_groups.append(new_group)
        self.state.extend({} for _ in params)
        self.kernel_plan.invalidate()

    def _checked_group(self, params: list[np.ndarray], values: dict[str, Any], where: str) -> dict[str, Any]:
        """The one check of a group's hyperparameters, at construction, at every step and at a
        load: each value by its validator (normalised), the cross-hyperparameter rules, and every
        real value finite in the compute dtype of the group's parameters."""
        checked: dict[str, Any] = {"params": params}
        for name in self.hyperparams:
            checked[name] = self._validate(name, values[name], where)
        self._check_group(checked, where)
        check_broadcasts(checked, params, where)
        check_fits_dtypes(
            {name: checked[name] for name in self.hyperparams},
            {compute_dtype(p.dtype) for p in params},
            where,
        )
        return checked

    def validated_groups(self) -> list[dict[str, Any]]:
        """Re-check the groups' hyperparameters (users change ``lr`` and others between
        steps) and return normalised copies, so a bad value is caught before anything moves."""
        groups = []
        for index, group in enumerate(self.param_groups):
            where = f"{type(self).__name__} param group {index}"
            missing = [name for name in self.hyperparams if name not in group]
            if missing:
                raise ValueError(f"{where}: hyperparameter(s) {missing} were removed from the group")
            groups.append(self._checked_group(group["params"], group, where))
        return groups

    def check_params(self) -> list[np.ndarray]:
        """The parameters, checked again as at construction (plain, writeable, of a supported
        dtype, no memory shared between two, one state entry each, state of the parameter's
        shape): a step runs this first, since ``param_groups`` may have been edited and an array
        made read-only since. The full check runs when the list of arrays changed; otherwise only
        the cheap per-array part. Raises ``ValueError`` naming the parameter; changes nothing."""
        return check_params_of(self, self.state, type(self).__name__)

    @property
    def params(self) -> list[np.ndarray]:
        """All parameters, group after group: the order ``step(grads)`` expects."""
        return flat_params(self.param_groups)

    def param_names(self) -> list[str]:
        """``"parameter k (group i, index j)"`` for every parameter, in ``params`` order."""
        return parameter_names(self.param_groups)

    def _flat(self, groups: list[dict[str, Any]]) -> list[tuple[np.ndarray, dict[str, Any]]]:
        return [(p, group) for group in groups for p in group["params"]]

    # -- stepping -----------------------------------------------------------------------

    def check_grads(self, grads: Sequence[np.ndarray | None]) -> list[np.ndarray | None]:
        """Validate ``grads`` for this optimizer and apply its non-finite policy; changes nothing."""
        return check_gradients(self.params, self.param_names(), grads, self.nonfinite)

    def step(self, grads: Sequence[np.ndarray | None]) -> None:
        """One optimization step. ``grads[k]`` is the gradient of ``params[k]`` (``None``: no
        step for that parameter, and its state does not advance)."""
        if check_backend(self.backend) == "numba" and self.kernel_family is not None:
            # Validates as below, then steps the float32/float64 parameters in place; the
            # rest (float16, non-contiguous) go on to the NumPy path.
            groups, checked = _fused_step()(self, grads)
            if not any(g is not None for g in checked):
                return  # every parameter was stepped by the kernels (or had no gradient)
        else:
            self.check_params()
            groups = self.validated_groups()
            checked = self.check_grads(grads)
        updates: list[tuple[int, Update]] = []
        # IEEE results (inf on overflow) are the defined ones; a user's np.seterr(all="raise")
        # must not abort a step half-way.
        with np.errstate(all="ignore"):
            for k, ((param, group), grad) in enumerate(zip(self._flat(groups), checked)):
                if grad is not None:
                    updates.append((k, self._compute_update(param, grad, self.state[k], group)))
        params = self.params
        for k, (new_param, new_state) in updates:
            with np.errstate(all="ignore"):  # float16 parameters: a cast past 65504 is inf, as in IEEE
                params[k][...] = new_param
            # 0-d parameters make NumPy return scalars; state entries are always arrays.
            self.state[k] = {
                name: (np.asarray(value) if isinstance(value, np.generic) else value)
                for name, value in new_state.items()
            }

    def _compute(self, param: np.ndarray, grad: np.ndarray, state: ParamState, group: dict[str, Any]) -> Update:
        """The new parameter and state for one tensor; must not modify its arguments."""
        raise NotImplementedError

    #: State entries that a class of runs may leave out (CProp-Adam's shared moments), and the
    #: entry that holds their value then (see :func:`.rows.step_by_class`).
    state_fill: ClassVar[dict[str, str]] = {}

    def _compute_update(self, param: np.ndarray, grad: np.ndarray, state: ParamState, group: dict[str, Any]) -> Update:
        """:meth:`_compute`, or, when the group holds per-run hyperparameter arrays, :meth:`_compute`
        per class of elements sharing their values (:func:`.rows.step_by_class`)."""
        if has_run_arrays(group, self.hyperparams):
            kernels = self.backend == "numba" and self.kernel_family is not None and param.dtype in _KERNEL_DTYPES
            rule = self._kernel_compute if kernels else self._compute
            return step_by_class(rule, param, grad, state, group, self.hyperparams, self.state_fill)
        return self._compute(param, grad, state, group)

    def _kernel_compute(self, param: np.ndarray, grad: np.ndarray, state: ParamState, group: dict[str, Any]) -> Update:
        """:meth:`_compute` by the fused kernels (``backend="numba"``): one step of a scratch
        optimizer of this class, built with ``group``'s scalars, over a copy of ``param`` and of
        ``state``, so each class of runs gets exactly the bits of the scalar Numba optimizer.
        The gradients were checked by the caller (``nonfinite="propagate"`` here).

        The scratch optimizers are kept between steps (one per dtype, size and setting) and
        their parameter and state overwritten in place, so that a step reuses their kernels'
        tables and plans; they hold no state of their own between steps."""
        values = {name: group[name] for name in self.hyperparams}
        key = (param.dtype.str, param.size, repr(tuple(values.values())))  # repr: -0.0 is not 0.0
        cache = self._per_run_scratch
        scratch = cache.get(key)
        if scratch is None:
            if len(cache) >= _SCRATCH_LIMIT:
                cache.clear()
            scratch = type(self)([np.array(param, copy=True)], **values, nonfinite="propagate", backend="numba")
            cache[key] = scratch
        else:
            scratch.param_groups[0]["params"][0][...] = param
        wanted = {k: v for k, v in state.items() if v is not None}
        target = scratch.state[0]
        present = [k for k, v in target.items() if v is not None]
        if present == list(wanted) and all(_fits(target[k], v) for k, v in wanted.items()):
            for k, v in wanted.items():
                if isinstance(v, np.ndarray):
                    target[k][...] = v
                else:
                    target[k] = v
        else:
            scratch.state[0] = {k: _copied(v) for k, v in wanted.items()}
        scratch.step([np.ascontiguousarray(grad)])
        new_param = np.array(scratch.param_groups[0]["params"][0], copy=True)
        return new_param, {k: _copied(v) for k, v in scratch.state[0].items()}

    @staticmethod
    def _as_compute(param: np.ndarray, grad: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        dtype = compute_dtype(param.dtype)
        return param.astype(dtype, copy=False), grad.astype(dtype, copy=False)

    # -- state --------------------------------------------------------------------------

    #: Names and kinds of the per-parameter state entries: ``"array"`` (shape of the
    #: parameter, compute dtype), ``"optional_array"`` (array or ``None``) or ``"count"``.
    state_schema: ClassVar[dict[str, str]] = {}

    def state_dict(self) -> dict[str, Any]:
        """A deep copy of the optimizer: hyperparameters per group and the state per parameter."""
        groups = []
        start = 0
        for group in self.param_groups:
            entry = {
                name: (np.array(group[name], copy=True) if isinstance(group[name], np.ndarray) else group[name])
                for name in self.hyperparams
            }
            if "betas" in entry:
                entry["betas"] = [np.array(b, copy=True) if isinstance(b, np.ndarray) else b for b in entry["betas"]]
            entry["params"] = list(range(start, start + len(group["params"])))
            start += len(group["params"])
            groups.append(entry)
        return {
            "optimizer": type(self).__name__,
            "nonfinite": self.nonfinite,
            "param_groups": groups,
            "param_specs": [{"shape": list(p.shape), "dtype": str(p.dtype)} for p in self.params],
            "state": [self._export_state(st) for st in self.state],
        }

    def _export_state(self, state: ParamState) -> dict[str, Any]:
        return {
            k: (np.array(v, copy=True) if isinstance(v, np.ndarray) else v) for k, v in state.items() if v is not None
        }

    def _import_state(self, entries: dict[str, Any], param: np.ndarray, where: str) -> ParamState:
        return import_state(entries, param, self.state_schema, where)

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        """Restore hyperparameters and state saved by :meth:`state_dict` into this optimizer,
        which must hold parameters of the same count, shapes and dtypes. Everything is
        checked before anything is assigned: on error the optimizer is unchanged."""
        name = type(self).__name__
        if not isinstance(state_dict, dict):
            raise ValueError(f"{name}.load_state_dict: expected a dict, got {type(state_dict).__name__}")
        if state_dict.get("optimizer") != name:
            raise ValueError(
                f"{name}.load_state_dict: the state dict is for {state_dict.get('optimizer')!r}, not {name}"
            )
        refuse_unknown_keys(state_dict, STATE_DICT_KEYS, f"{name}.load_state_dict")
        groups = state_dict.get("param_groups")
        if not isinstance(groups, list) or len(groups) != len(self.param_groups):
            count = len(groups) if isinstance(groups, list) else groups
            raise ValueError(
                f"{name}.load_state_dict: {count} parameter groups saved, the optimizer has {len(self.param_groups)}"
            )
        params = self.params
        specs = state_dict.get("param_specs")
        if not isinstance(specs, list) or len(specs) != len(params):
            count = len(specs) if isinstance(specs, list) else specs
            raise ValueError(f"{name}.load_state_dict: {count} parameters saved, the optimizer has {len(params)}")
        names = self.param_names()
        for pname, spec, p in zip(names, specs, params):
            if isinstance(spec, dict):
                refuse_unknown_keys(spec, ("shape", "dtype"), f"{name}.load_state_dict {pname} spec")
            if (
                not isinstance(spec, dict)
                or spec.get("shape") != list(p.shape)  # a list, as state_dict() and JSON give
                or spec.get("dtype") != str(p.dtype)
            ):
                raise ValueError(
                    f"{name}.load_state_dict: {pname} was saved as {spec}, is now {list(p.shape)} {p.dtype}"
                )
        new_groups = []
        start = 0
        for index, (saved, group) in enumerate(zip(groups, self.param_groups)):
            where = f"{name}.load_state_dict param group {index}"
            if not isinstance(saved, dict):
                raise ValueError(f"{where}: expected a dict")
            expected = list(range(start, start + len(group["params"])))
            start += len(group["params"])
            if saved.get("params") != expected:
                raise ValueError(f"{where}: saved with parameters {saved.get('params')}, the optimizer has {expected}")
            missing = set(self.hyperparams) - set(saved)
            if missing:
                raise ValueError(f"{where}: hyperparameter(s) {sorted(missing)} missing")
            refuse_unknown_keys(saved, ("params", *self.hyperparams), where)
            new_groups.append(self._checked_group(group["params"], saved, where))
        nonfinite = check_nonfinite_policy(state_dict.get("nonfinite", self.nonfinite))
        saved_state = state_dict.get("state")
        if not isinstance(saved_state, list) or len(saved_state) != len(params):
            raise ValueError(f"{name}.load_state_dict: 'state' must be a list with one entry per parameter")
        new_state = []
        for pname, entries, p in zip(names, saved_state, params):
            if not isinstance(entries, dict):
                raise ValueError(f"{name}.load_state_dict: state of {pname} must be a dict")
            state = self._import_state(entries, p, f"{name}.load_state_dict {pname}")
            check_state_values(state, nonfinite, f"{name}.load_state_dict {pname}")
            new_state.append(state)
        # Nothing above changed the optimizer; from here on nothing can fail.
        for group, new_group in zip(self.param_groups, new_groups):
            group.update(new_group)
        self.state = new_state
        self.nonfinite = nonfinite
        self.kernel_plan.invalidate()

    def save(self, path: str | os.PathLike[str]) -> None:
        """Write :meth:`state_dict` to an ``.npz`` checkpoint (atomically; no pickle)."""
        checkpoint.save(path, self.state_dict())

    def load(self, path: str | os.PathLike[str], max_bytes: int | None = None) -> None:
        """Load a checkpoint written by :meth:`save`; on any error the optimizer is unchanged. A file whose entries
        declare more than ``max_bytes`` (default: :meth:`checkpoint_bytes`, what a checkpoint of this optimizer
        can hold) is refused unread."""
        limit = self.checkpoint_bytes() if max_bytes is None else max_bytes
        name = "this optimizer's checkpoint can hold" if max_bytes is None and limit is not None else None
        self.load_state_dict(checkpoint.load(path, max_bytes=limit, limit_name=name))

    def checkpoint_bytes(self) -> int:
        """The most a checkpoint of this optimizer can declare: every state array of every
        parameter (``state_schema``, in the compute dtype) plus a margin for the metadata
        (:func:`cprop_ref.checkpoint.size_budget`)."""
        return checkpoint.size_budget(*state_size(self.params, self.state_schema))


_KERNEL_DTYPES = (np.dtype(np.float32), np.dtype(np.float64))


#: At most this many scratch optimizers per optimizer (distinct settings x dtypes x sizes).
_SCRATCH_LIMIT = 4096


def _fits(target: Any, value: Any) -> bool:
    """Whether ``value`` can be written into ``target`` in place (same kind, shape and dtype)."""
    if isinstance(value, np.ndarray):
        return isinstance(target, np.ndarray) and target.shape == value.shape and target.dtype == value.dtype
    return not isinstance(target, np.ndarray)


def _copied(value: Any) -> Any:
    return np.array(value, copy=True) if isinstance(value, np.ndarray) else value


def _fused_step() -> Any:
    """``kernels.dispatch.fused_step``, imported on the first fused step (Numba loads then)."""
    global _FUSED_STEP
    if _FUSED_STEP is None:
        from ..kernels.dispatch import fused_step

        _FUSED_STEP = fused_step
    return _FUSED_STEP


_FUSED_STEP: Any = None


def import_state(entries: dict[str, Any], param: np.ndarray, schema: dict[str, str], where: str) -> ParamState:
    """Validate one parameter's saved state against ``schema`` and return a fresh copy.

    ``schema`` maps entry names to ``"array"`` (the parameter's shape, its compute dtype),
    ``"optional_array"`` (such an array, or absent) or ``"count"`` (an integer >= 0).
    An empty dict is the state of a parameter that has not been stepped.
    """
    if not entries:
        return {}
    unknown = set(entries) - set(schema)
    if unknown:
        raise ValueError(f"{where}: unknown state entries {sorted(unknown)}")
    dtype = compute_dtype(param.dtype)
    state: ParamState = {}
    for name, kind in schema.items():
        value = entries.get(name)
        if value is None:
            if kind == "optional_array":
                continue
            raise ValueError(f"{where}: state entry {name!r} is missing")
        if kind == "count":
            if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 0:
                raise ValueError(f"{where}: state entry {name!r} must be a count >= 0, got {value!r}")
            state[name] = int(value)
        else:
            if not isinstance(value, np.ndarray) or value.shape != param.shape or value.dtype != dtype:
                got = f"{value.shape} {value.dtype}" if isinstance(value, np.ndarray) else type(value).__name__
                raise ValueError(f"{where}: state entry {name!r} must be a {param.shape} {dtype} array, got {got}")
            state[name] = np.array(value, copy=True)
    return state


#: The top-level keys of an optimizer's state dict.
STATE_DICT_KEYS: tuple[str, ...] = ("optimizer", "nonfinite", "param_groups", "param_specs", "state")
#: State entries that are second moments (EMAs of squares): never negative.
SECOND_MOMENTS: frozenset[str] = frozenset({"exp_avg_sq", "max_exp_avg_sq", "cprop_v"})


def refuse_unknown_keys(saved: dict[str, Any], known: Sequence[str], where: str) -> None:
    """A key a state dict may not hold is refused by name, not silently dropped (a group's
    ``"learning_rate"`` would otherwise load as if the default were meant)."""
    unknown = sorted(str(k) for k in saved if k not in known)
    if unknown:
        raise ValueError(f"{where}: unknown key(s) {unknown}; known: {sorted(known)}")


def check_state_values(state: ParamState, nonfinite: str, where: str) -> None:
    """Values a step from valid input cannot produce, refused by name: NaN anywhere (unless
    the policy is ``"propagate"``, under which NaN gradients enter the state as they are) and
    a negative second moment. +-inf can come from finite input (an overflowed square) and
    is allowed."""
    for key, value in state.items():
        if not isinstance(value, np.ndarray):
            continue
        if nonfinite != "propagate" and np.isnan(value).any():
            at = tuple(int(i) for i in np.argwhere(np.isnan(value))[0])
            raise ValueError(
                f"{where}: state entry {key!r} holds NaN (element {at}), which no step from finite gradients "
                f"gives; refused under nonfinite={nonfinite!r}"
            )
        if key in SECOND_MOMENTS and (value < 0).any():
            at = tuple(int(i) for i in np.argwhere(value < 0)[0])
            raise ValueError(
                f"{where}: state entry {key!r} is a second moment (an average of squares) but holds "
                f"{float(value[at])!r} < 0 at element {at}"
            )


def state_size(params: Sequence[np.ndarray], schema: dict[str, str]) -> tuple[int, int]:
    """Bytes and count of the arrays a full state of ``params`` under ``schema`` holds."""
    arrays = sum(1 for kind in schema.values() if kind != "count")
    nbytes = sum(p.size * compute_dtype(p.dtype).itemsize for p in params) * arrays
    return nbytes, arrays * len(params)


def check_params_of(owner: Any, state: list[ParamState], label: str) -> list[np.ndarray]:
    """The parameters of ``owner`` (an optimizer or the wrapper) checked by :func:`check_param_list`
    against ``state``; when they are the very arrays of the last full check, only the cheap
    per-array part runs (an array's memory never moves, so no overlap can have appeared)."""
    params = flat_params(owner.param_groups)
    known = owner.__dict__.get("_checked_params")
    if (
        known is not None
        and len(known) == len(params)
        and all(a is b for a, b in zip(known, params))
        and parameters_are_plain(params)
    ):
        return params
    check_param_list(params, parameter_names(owner.param_groups), state, label)
    owner.__dict__["_checked_params"] = params
    return params


def check_param_list(params: list[Any], names: list[str], state: list[ParamState], owner: str) -> None:
    """Every parameter as :func:`~cprop_ref.gradients.check_parameter` wants it, no two sharing
    memory, and ``state`` holding one entry per parameter whose arrays fit it. Raises
    ``ValueError`` naming the parameter."""
    for p, name in zip(params, names):
        check_parameter(p, f"{owner} {name}")
    overlap = first_overlap(params)
    if overlap is not None:
        i, j = overlap
        raise ValueError(
            f"{owner} {names[j]}: shares memory with {names[i]} (overlapping views of one array); "
            "every parameter needs memory of its own"
        )
    if len(state) != len(params):
        raise ValueError(
            f"{owner}: {len(params)} parameters in param_groups but state for {len(state)}: parameters were "
            "added to or removed from a group's 'params' list; add parameters with add_param_group"
        )
    for p, name, entries in zip(params, names, state):
        dtype = compute_dtype(p.dtype)
        for key, value in entries.items():
            if isinstance(value, np.ndarray) and (value.shape != p.shape or value.dtype != dtype):
                raise ValueError(
                    f"{owner} {name}: the array is now {p.shape} {p.dtype} but its state entry {key!r} is "
                    f"{value.shape} {value.dtype}: an array swapped into param_groups must have the shape and "
                    "dtype of the one it replaces (or start a new optimizer)"
                )
