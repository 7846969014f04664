"""Running an optimizer step through the fused kernels, generic over the kernel families.

The shells in :mod:`cprop_ref.optim` validate the hyperparameters and the gradients
first; then, with ``backend="numba"``, :func:`fused_step` updates in place every
parameter the kernels handle (float32 and float64, C-contiguous), one kernel launch per
dtype for all of them, and hands the rest back to the NumPy path. What a launch needs of a
family (arena rows, scalar and flag rows, kernels) comes from the family's declaration
(:class:`.family.KernelFamily`, named by the optimizer's ``kernel_family``); what it needs of
the optimizer is :class:`FusedOptimizer`; what it keeps between steps is the optimizer's
:class:`.plan.LaunchPlan`. The per-parameter state dicts get views into the arena
(:mod:`.flat`); their contents are what the NumPy path would have stored, within the
tolerance policy.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any, Protocol

import numba
import numpy as np

from ..gradients import unaliased
from ..hyperparams import run_arrays
from .family import KernelFamily, Kernels, SteadyKernels, kernel_family
from .flat import FlatState, chunk_table, layout_key
from .plan import LastLaunch, LaunchPlan
from .wrapper import WRAPPER

KERNEL_DTYPES: tuple[np.dtype, ...] = (np.dtype(np.float32), np.dtype(np.float64))
#: Below this many elements in a launch one thread does the work: waking the others costs more.
PARALLEL_THRESHOLD = 1 << 15
#: Whether CProp-Adam and CProp-SGD may run in one loop per element (``adam._cprop_adam_loop``,
#: ``sgd._cprop_sgd_loop``; one variant per launch: ``one_loop_variant``); the tests set it to
#: False to compare with the chunked stages, which must give the same bits.
ONE_LOOP = True


class FusedOptimizer(Protocol):
    """What :func:`fused_step` needs of an optimizer (:class:`cprop_ref.optim.Optimizer` has it):
    its groups and state, its non-finite policy, the name of its kernel family, the plan it
    owns, and its three public checks."""

    param_groups: list[dict[str, Any]]
    state: list[dict[str, Any]]
    nonfinite: str
    kernel_family: str | None
    kernel_plan: LaunchPlan

    @property
    def hyperparams(self) -> Mapping[str, Any]: ...

    def check_params(self) -> list[np.ndarray]: ...

    def validated_groups(self) -> list[dict[str, Any]]: ...

    def check_grads(self, grads: Sequence[np.ndarray | None]) -> list[np.ndarray | None]: ...


def kernel_eligible(param: np.ndarray) -> bool:
    """Whether the kernels can update ``param`` in place (float32/float64, C-contiguous)."""
    return param.dtype in KERNEL_DTYPES and param.flags.c_contiguous


def _arena(plan: LaunchPlan, rows: tuple[str, ...], dtype: np.dtype, params: Sequence[np.ndarray]) -> FlatState:
    """The plan's arena for ``dtype``, rebuilt when its parameters changed."""
    members = [(k, p) for k, p in enumerate(params) if p.dtype == dtype and kernel_eligible(p)]
    flat = plan.arenas.get(dtype)
    if flat is None or flat.rows != rows or flat.key != layout_key(members):
        flat = FlatState(rows, members, dtype)
        plan.arenas[dtype] = flat
    return flat


def _by_dtype(params: Sequence[np.ndarray], grads: Sequence[np.ndarray | None]) -> dict[np.dtype, list[int]]:
    out: dict[np.dtype, list[int]] = {}
    for k, (p, g) in enumerate(zip(params, grads)):
        if g is not None and kernel_eligible(p):
            out.setdefault(p.dtype, []).append(k)
    return out


class _Launch:
    """The tables of one kernel launch over the tensors ``ks`` of one arena."""

    def __init__(self, flat: FlatState, ks: list[int], chunk: int) -> None:
        key = tuple(ks)
        cached = flat.launches.get(key)
        if cached is None:
            idx = np.asarray([flat.position[k] for k in ks], dtype=np.intp)
            sizes, offsets, p_addr = flat.sizes[idx], flat.offsets[idx], flat.param_addresses[idx]
            cached = (sizes, offsets, p_addr, *chunk_table(sizes, chunk), int(sizes.sum()))
            flat.launches[key] = cached
        self.sizes, self.offsets, self.p_addr, self.tensor, self.lo, self.hi, self.total = cached
        self.flat = flat
        self.params = [flat.param(k) for k in ks] if len(ks) == 1 else []

    def run(
        self,
        kernels: Kernels,
        grads: Sequence[np.ndarray | None],
        ks: list[int],
        scalars: np.ndarray,
        flags: np.ndarray,
        check_finite: bool | None,
        extra: tuple = (),
    ) -> bool:
        """Launch ``kernels`` = (one, serial, parallel); ``check_finite=None``: a kernel without
        the check (the wrapper's); ``extra``: arguments after the others (the one-loop
        variant of the Adam and SGD families, :func:`_launch_variant`). Returns False if the kernel found a non-finite gradient (and then
        changed nothing)."""
        one, serial, parallel = kernels
        arena = self.flat.arena
        small = self.total < PARALLEL_THRESHOLD
        if one is not None and small and len(ks) == 1:
            # One small tensor: pass the arrays themselves, no address table (the tiny-step path).
            k = ks[0]
            p, g = self.params[0], grads[k]
            if not g.flags.c_contiguous:
                g = np.ascontiguousarray(g)
            return one(p.reshape(-1), g.reshape(-1), arena, self.offsets[0], scalars[0], flags[0], check_finite, *extra)
        keep: list[np.ndarray] = []
        g_addr = _grad_addresses(grads, ks, keep)
        args = (
            self.p_addr,
            g_addr,
            self.sizes,
            self.offsets,
            arena,
            self.tensor,
            self.lo,
            self.hi,
            scalars,
            flags,
        )
        if check_finite is not None:
            args = (*args, check_finite)
        workers = min(numba.get_num_threads(), self.tensor.size)
        if small or workers < 2:
            ok = serial(*args, *extra)
        else:
            ok = parallel(*args, workers, *extra)
        return ok is not False


def _table(rows: list[tuple], dtype: np.dtype) -> np.ndarray:
    """The scalar table in the array dtype: each double rounded once, as NumPy rounds a
    Python float; a hyperparameter past float32's range becomes inf there too, silently."""
    with np.errstate(over="ignore"):
        return np.array(rows, dtype=dtype)


def _grad_addresses(grads: Sequence[np.ndarray | None], ks: list[int], keep: list[np.ndarray]) -> np.ndarray:
    addresses = np.empty(len(ks), dtype=np.intp)
    for i, k in enumerate(ks):
        g = grads[k]
        if not g.flags.c_contiguous:
            g = np.ascontiguousarray(g)
            keep.append(g)  # alive until the kernel has run
        addresses[i] = g.ctypes.data
    return addresses


def frozen(value: Any) -> Any:
    """What a hyperparameter value is now, as something that cannot change later: lists,
    tuples and arrays by their contents (an ndarray ``betas`` may be changed in place, and
    the cache below must see it), with the types of the elements."""
    kind = type(value)
    if kind is float or kind is bool or kind is str or kind is int:  # the usual: immutable, cheap
        return (kind, value)
    if kind is list or kind is tuple:
        return (kind, tuple(frozen(v) for v in value))
    if isinstance(value, np.ndarray):
        return (kind, value.dtype.str, value.shape, value.tobytes())
    return (kind, value)


def validated_groups(opt: FusedOptimizer) -> list[dict[str, Any]]:
    """``opt.validated_groups()``, reused while neither a hyperparameter nor the arrays of a
    group changed: the values are compared with their types (so ``amsgrad=1`` is still
    refused), lists and arrays by their contents, the parameters by identity."""
    names = opt.hyperparams
    key = []
    for group in opt.param_groups:
        try:
            values = tuple(frozen(group[name]) for name in names)
        except KeyError:
            values = None  # a hyperparameter was removed: validated_groups says which
        key.append((tuple(group["params"]), values))
    plan = opt.kernel_plan
    if plan.groups_key is not None and plan.groups is not None and _same_key(plan.groups_key, key):
        return plan.groups
    groups = opt.validated_groups()
    plan.groups_key, plan.groups = key, groups
    plan.per_run = any(run_arrays({n: g[n] for n in names}) for g in groups)
    return groups


def _same_key(old: list, new: list) -> bool:
    if len(old) != len(new):
        return False
    for (old_params, old_values), (new_params, new_values) in zip(old, new):
        if len(old_params) != len(new_params) or any(a is not b for a, b in zip(old_params, new_params)):
            return False
        if new_values is None or old_values != new_values:  # NaN != NaN: such a value is validated again
            return False
    return True


def _plain_gradients(params: list[np.ndarray], grads: Any) -> bool:
    """Whether ``grads`` is a list of arrays (or None) matching ``params`` exactly in count,
    type, shape and dtype: then ``check_gradients`` would only look at the values."""
    if not isinstance(grads, (list, tuple)) or len(grads) != len(params):
        return False
    for p, g in zip(params, grads):
        if g is not None and (type(g) is not np.ndarray or g.shape != p.shape or g.dtype != p.dtype):
            return False
    return True


def param_pairs(groups: list[dict[str, Any]]) -> list[tuple[np.ndarray, dict[str, Any]]]:
    """``(parameter, its group)`` for every parameter, group after group (``step``'s order)."""
    return [(p, group) for group in groups for p in group["params"]]


def fused_step(opt: FusedOptimizer, grads: Any) -> tuple[list[dict[str, Any]], list[np.ndarray | None]]:
    """Validate, then step every kernel-eligible parameter of ``opt`` in place; return the
    validated groups and the gradients left for the NumPy path (``None`` where done).

    When all the work is one kernel launch, the finiteness check of the gradients runs
    inside the kernel, before it writes anything; if it fails, the step falls back to
    ``opt.check_grads``, which raises (``nonfinite="raise"``) or drops the
    gradients (``"skip"``) exactly as on the NumPy path. Otherwise the gradients are
    checked first, as there.
    """
    plan = opt.kernel_plan
    steady = plan.steady
    if steady is not None:
        stepped = steady.step(opt, grads)
        if stepped:
            return steady.groups, [None]
        # None: the steady state no longer applies; False: a non-finite gradient, which the
        # general path below finds again and handles (nothing was written).
    opt.check_params()
    groups = validated_groups(opt)
    if plan.per_run:
        # Per-run hyperparameter arrays: the NumPy path steps the whole optimizer, class by
        # class of runs (cprop_ref.optim.rows), with exactly the bits of the scalar NumPy path.
        plan.steady = None
        return groups, opt.check_grads(grads)
    family = kernel_family(opt.kernel_family)  # type: ignore[arg-type]
    pairs = param_pairs(groups)
    params = [p for p, _ in pairs]
    by_dtype = _by_dtype(params, grads) if _plain_gradients(params, grads) else None
    one_launch = (
        by_dtype is not None
        and len(by_dtype) <= 1
        and all(g is None or kernel_eligible(p) for p, g in zip(params, grads))
    )
    if one_launch:
        checked = list(grads)
        check_finite = opt.nonfinite != "propagate"
    else:
        checked = opt.check_grads(grads)
        by_dtype = _by_dtype(params, checked)
        check_finite = False
    # The kernels read each gradient while they write parameters and state: one that shares
    # memory with them is copied first (the step uses the values of the call).
    checked = unaliased(checked, params, plan.buffers(), plan.memory)
    remaining = list(checked)
    plan.steady = None
    for dtype, ks in by_dtype.items():  # type: ignore[union-attr]
        if not _family_step(opt, family, pairs, checked, dtype, ks, check_finite):
            # A non-finite gradient, found before anything was written: the full check
            # raises or drops it, and the step runs on what is left.
            checked = unaliased(opt.check_grads(grads), params, plan.buffers(), plan.memory)
            return groups, fused_step_checked(opt, groups, pairs, checked)
        for k in ks:
            remaining[k] = None
    if one_launch and family.steady is not None and len(params) == 1 and remaining[0] is None:
        plan.steady = TinyPlan.for_optimizer(opt, groups, family.steady)
    return groups, remaining


class TinyPlan:
    """The steady state of an optimizer over one small tensor (the Rosenbrock case), for a
    family with steady-state kernels (:class:`.family.SteadyKernels`: the Adam family): while
    the hyperparameter values, the parameter, its state dict and the arena views in it are the
    very objects of the previous step, a step is the kernel call alone, with the scalars
    computed inside it (:func:`.adam.adam_one_from_hyperparameters`) and the step count
    incremented in place. Anything else goes back to the general path."""

    def __init__(self, opt: FusedOptimizer, groups: list, last: LastLaunch, kernels: SteadyKernels) -> None:
        flat = last.arena
        self.groups = groups
        self.param = opt.param_groups[0]["params"][0]
        self.flat_param = self.param.reshape(-1)
        self.state = opt.state[0]
        self.size = len(self.state)
        self.entries = tuple((k, v) for k, v in self.state.items() if isinstance(v, np.ndarray))
        self.group = groups[0]
        # The raw values the groups were validated from: the same objects (and, for a list,
        # the same contents) mean the same validated groups.
        raw = opt.param_groups[0]
        self.raw = tuple(
            (name, raw[name], frozen(raw[name]) if isinstance(raw[name], (list, np.ndarray)) else None)
            for name in opt.hyperparams
        )
        self.separate_grad: np.ndarray | None = None  # the last gradient found not to share memory
        self.param_owns_memory = self.param.base is None and bool(self.param.flags.owndata)
        self.hyperparameters = np.array(
            kernels.hyperparameter_row(self.group, float(np.finfo(flat.arena.dtype).max)), dtype=np.float64
        )
        self.powers = kernels.powers
        self.kernel = kernels.one_from_hyperparameters
        self.flags = last.flags
        self.variant = last.variant
        self.arena = flat.arena
        self.offset = int(flat.offsets[0])

    @classmethod
    def for_optimizer(cls, opt: FusedOptimizer, groups: list, kernels: SteadyKernels) -> TinyPlan | None:
        last = opt.kernel_plan.last_launch
        p = opt.param_groups[0]["params"][0]
        if last is None or p.size >= PARALLEL_THRESHOLD or len(opt.state) != 1:
            return None
        return cls(opt, groups, last, kernels)

    def step(self, opt: FusedOptimizer, grads: Any) -> bool | None:
        if len(opt.param_groups) != 1 or type(grads) not in (list, tuple) or len(grads) != 1:
            return None
        raw = opt.param_groups[0]
        for name, value, contents in self.raw:
            current = raw.get(name)
            if current is not value or (contents is not None and frozen(current) != contents):
                return None
        g, p = grads[0], self.param
        if type(g) is not np.ndarray or g.shape != p.shape or g.dtype != p.dtype or not g.flags.c_contiguous:
            return None
        if not p.flags.writeable:
            return None  # the general path refuses it, naming the parameter
        if g is not self.separate_grad and not (self.param_owns_memory and g.base is None and g.flags.owndata):
            # A gradient sharing memory with the parameter or the state goes the general way
            # (copied first). Two arrays that own their memory (the usual fresh gradient and
            # parameter; the arena owns its own) cannot share any; otherwise the byte ranges
            # decide, once per gradient object (an array's memory never moves).
            if np.may_share_memory(g, p) or np.may_share_memory(g, self.arena):
                return None
            self.separate_grad = g
        group_params = raw["params"]  # the user's list (it may have been replaced)
        state = opt.state[0] if len(opt.state) == 1 else None
        if len(group_params) != 1 or group_params[0] is not p or state is not self.state or len(state) != self.size:
            return None
        for name, view in self.entries:
            if state.get(name) is not view:
                return None
        t = state["step"] + 1
        check_finite = opt.nonfinite != "propagate"
        ok = self.kernel(
            self.flat_param,
            g if g.ndim == 1 else g.reshape(-1),
            self.arena,
            self.offset,
            self.hyperparameters,
            *self.powers(self.group, t),
            self.flags,
            check_finite,
            *self.variant,
        )
        if ok:
            state["step"] = t
        return ok


def fused_step_checked(opt: FusedOptimizer, groups: list, pairs: list, checked: list) -> list[np.ndarray | None]:
    """The step for gradients already checked: every eligible tensor, no finiteness check."""
    params = [p for p, _ in pairs]
    family = kernel_family(opt.kernel_family)  # type: ignore[arg-type]
    remaining = list(checked)
    for dtype, ks in _by_dtype(params, checked).items():
        _family_step(opt, family, pairs, checked, dtype, ks, False)
        for k in ks:
            remaining[k] = None
    return remaining


def _launch_variant(flags: list, variants: list[tuple | None], none: tuple) -> tuple[np.ndarray, tuple]:
    """The flag table and the one-loop variant of a launch, as the kernel's marker arguments
    (``none`` if no tensor has one, or the one loop is switched off): the first tensor's that
    has one (usually all tensors share it). The tensors of that variant get the flag
    ``one_loop`` (the rows' field of that name) and run the one loop; any other tensor takes
    the chunked stages."""
    table = np.array(flags, dtype=np.int64)
    variant = next((v for v in variants if v is not None), None) if ONE_LOOP else None
    if variant is None:
        return table, none  # every row's one_loop is False, as tensor_step builds it
    table[:, flags[0]._fields.index("one_loop")] = [own == variant for own in variants]
    return table, variant


def _family_step(
    opt: FusedOptimizer,
    family: KernelFamily,
    pairs: list,
    grads: list,
    dtype: np.dtype,
    ks: list[int],
    check_finite: bool,
) -> bool:
    """One launch of ``family``'s kernels over the tensors ``ks`` of ``dtype``: each tensor's rows
    from the declaration (:meth:`.family.KernelFamily.tensor_step`), then the kernel; the new
    states are committed only if it ran (False: a non-finite gradient, nothing written)."""
    plan = opt.kernel_plan
    flat = _arena(plan, family.state_rows, dtype, [p for p, _ in pairs])
    rows: dict = {}
    steps = [family.tensor_step(flat, k, opt.state[k], pairs[k][1], rows) for k in ks]
    flag_table, extra = _launch_variant([s.flags for s in steps], [s.variant for s in steps], family.no_one_loop)
    launch = _Launch(flat, ks, family.chunk)
    scalars = _table([s.scalars for s in steps], dtype)
    if not launch.run(family.kernels, grads, ks, scalars, flag_table, check_finite, extra):
        return False
    for k, step in zip(ks, steps):
        opt.state[k] = step.state
    plan.last_launch = LastLaunch(flat, flag_table[0], extra)
    return True


class FusedWrapper(Protocol):
    """What :class:`WrapperStep` needs of the CProp wrapper: its parameters, state and plan."""

    state: list[dict[str, Any]]
    kernel_plan: LaunchPlan

    @property
    def params(self) -> list[np.ndarray]: ...


class WrapperStep:
    """The CProp wrapper's fused step, in two halves around the base optimizer's step:
    the constructor saves the parameters it handles, :meth:`finish` scales the base
    optimizer's update and commits CProp's state. ``handled`` lists those parameters."""

    def __init__(self, wrapper: FusedWrapper, hp: dict[str, Any], grads: list[np.ndarray | None]) -> None:
        self.wrapper, self.hp, self.grads = wrapper, hp, grads
        params = wrapper.params
        self.batches: list[tuple[FlatState, list[int], _Launch]] = []
        self.handled: set[int] = set()
        save_serial, save_parallel = WRAPPER.save
        for dtype, ks in _by_dtype(params, grads).items():
            flat = _arena(wrapper.kernel_plan, WRAPPER.state_rows, dtype, params)
            launch = _Launch(flat, ks, WRAPPER.chunk)
            args = (launch.p_addr, launch.sizes, launch.offsets, flat.arena, launch.tensor, launch.lo, launch.hi)
            workers = min(numba.get_num_threads(), launch.tensor.size)
            if launch.total < PARALLEL_THRESHOLD or workers < 2:
                save_serial(*args)
            else:
                save_parallel(*args, workers)
            self.batches.append((flat, ks, launch))
            self.handled.update(ks)

    def finish(self) -> None:
        """After the base optimizer's step: CProp's moments, scale and the scaled update."""
        state = self.wrapper.state
        for flat, ks, launch in self.batches:
            rows: dict = {}
            steps = [WRAPPER.tensor_step(flat, k, state[k], self.hp, rows) for k in ks]
            flags = np.array([s.flags for s in steps], dtype=np.int64)
            scalars = _table([s.scalars for s in steps], flat.arena.dtype)
            launch.run(WRAPPER.kernels, self.grads, ks, scalars, flags, None)
            for k, step in zip(ks, steps):
                state[k] = step.state
