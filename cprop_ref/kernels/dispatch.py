"""Running an optimizer step through the fused kernels.

The shells in :mod:`cprop_ref.optim` validate the hyperparameters and the gradients
first; then, with ``backend="numba"``, :func:`fused_step` updates in place every
parameter the kernels handle (float32 and float64, C-contiguous), one kernel launch per
dtype for all of them, and hands the rest back to the NumPy path. The per-parameter
state dicts get views into the arena (:mod:`.flat`); their contents are what the NumPy
path would have stored, within the tolerance policy.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import numba
import numpy as np

from ..gradients import unaliased
from ..hyperparams import run_arrays
from . import adam as adam_kernels
from . import sgd as sgd_kernels
from . import state_buffers
from . import wrapper as wrapper_kernels
from .flat import FlatState, chunk_table, layout_key
from .scale import CDF_CODES, CPROP_SCALAR_COUNT, cprop_scalars

KERNEL_DTYPES: tuple[np.dtype, ...] = (np.dtype(np.float32), np.dtype(np.float64))
#: Below this many elements in a launch one thread does the work: waking the others costs more.
PARALLEL_THRESHOLD = 1 << 15
_NO_CPROP = [0.0] * CPROP_SCALAR_COUNT
#: Whether CProp-Adam and CProp-SGD may run in one loop per element (``adam._cprop_adam_loop``,
#: ``sgd._cprop_sgd_loop``; one variant per launch: ``one_loop_variant``); the tests set it to
#: False to compare with the chunked stages, which must give the same bits.
ONE_LOOP = True


def kernel_eligible(param: np.ndarray) -> bool:
    """Whether the kernels can update ``param`` in place (float32/float64, C-contiguous)."""
    return param.dtype in KERNEL_DTYPES and param.flags.c_contiguous


def _arena(owner: Any, rows: tuple[str, ...], dtype: np.dtype, params: Sequence[np.ndarray]) -> FlatState:
    """The owner's arena for ``dtype``, rebuilt when its parameters changed."""
    members = [(k, p) for k, p in enumerate(params) if p.dtype == dtype and kernel_eligible(p)]
    cache = owner.__dict__.setdefault("_kernel_arenas", {})
    flat = cache.get(dtype)
    if flat is None or flat.rows != rows or flat.key != layout_key(members):
        flat = FlatState(rows, members, dtype)
        cache[dtype] = flat
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
        cache = flat.__dict__.setdefault("_launch_cache", {})
        key = tuple(ks)
        cached = cache.get(key)
        if cached is None:
            idx = np.asarray([flat.position[k] for k in ks], dtype=np.intp)
            sizes, offsets, p_addr = flat.sizes[idx], flat.offsets[idx], flat.param_addresses[idx]
            cached = (sizes, offsets, p_addr, *chunk_table(sizes, chunk), int(sizes.sum()))
            cache[key] = cached
        self.sizes, self.offsets, self.p_addr, self.tensor, self.lo, self.hi, self.total = cached
        self.flat = flat
        self.params = [flat.param(k) for k in ks] if len(ks) == 1 else []

    def run(
        self,
        kernels: tuple[Callable, Callable, Callable | None],
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


def _table(rows: list, dtype: np.dtype) -> np.ndarray:
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


def validated_groups(opt: Any) -> list[dict[str, Any]]:
    """``opt._validated_groups()``, reused while neither a hyperparameter nor the arrays of a
    group changed: the values are compared with their types (so ``amsgrad=1`` is still
    refused), lists and arrays by their contents, the parameters by identity."""
    names = opt.hyperparams
    key = []
    for group in opt.param_groups:
        try:
            values = tuple(frozen(group[name]) for name in names)
        except KeyError:
            values = None  # a hyperparameter was removed: _validated_groups says which
        key.append((tuple(group["params"]), values))
    cached = opt.__dict__.get("_kernel_groups")
    if cached is not None and _same_key(cached[0], key):
        return cached[1]
    groups = opt._validated_groups()
    opt.__dict__["_kernel_groups"] = (key, groups)
    opt.__dict__["_kernel_groups_per_run"] = any(run_arrays({n: g[n] for n in names}) for g in groups)
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


def fused_step(opt: Any, grads: Any) -> tuple[list[dict[str, Any]], list[np.ndarray | None]]:
    """Validate, then step every kernel-eligible parameter of ``opt`` in place; return the
    validated groups and the gradients left for the NumPy path (``None`` where done).

    When all the work is one kernel launch, the finiteness check of the gradients runs
    inside the kernel, before it writes anything; if it fails, the step falls back to
    :meth:`Optimizer.check_grads`, which raises (``nonfinite="raise"``) or drops the
    gradients (``"skip"``) exactly as on the NumPy path. Otherwise the gradients are
    checked first, as there.
    """
    plan = opt.__dict__.get("_kernel_plan")
    if plan is not None:
        stepped = plan.step(opt, grads)
        if stepped:
            return plan.groups, [None]
        # None: the plan no longer applies; False: a non-finite gradient, which the general
        # path below finds again and handles (nothing was written).
    opt.check_params()
    groups = validated_groups(opt)
    if opt.__dict__.get("_kernel_groups_per_run"):
        # Per-run hyperparameter arrays: the NumPy path steps the whole optimizer, class by
        # class of runs (cprop_ref.optim.rows), with exactly the bits of the scalar NumPy path.
        opt.__dict__["_kernel_plan"] = None
        return groups, opt.check_grads(grads)
    pairs = opt._flat(groups)
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
    checked = unaliased(checked, params, state_buffers(opt), opt.__dict__)
    step = _adam_family if opt.kernel_family == "adam" else _sgd_family
    remaining = list(checked)
    opt.__dict__["_kernel_plan"] = None
    for dtype, ks in by_dtype.items():
        if not step(opt, pairs, checked, dtype, ks, check_finite):
            # A non-finite gradient, found before anything was written: the full check
            # raises or drops it, and the step runs on what is left.
            checked = unaliased(opt.check_grads(grads), params, state_buffers(opt), opt.__dict__)
            return groups, fused_step_checked(opt, groups, pairs, checked)
        for k in ks:
            remaining[k] = None
    if one_launch and opt.kernel_family == "adam" and len(params) == 1 and remaining[0] is None:
        opt.__dict__["_kernel_plan"] = TinyPlan.for_optimizer(opt, groups)
    return groups, remaining


class TinyPlan:
    """The steady state of an Adam-family optimizer over one small tensor (the Rosenbrock
    case): while the hyperparameter values, the parameter, its state dict and the arena views
    in it are the very objects of the previous step, a step is the kernel call alone, with the
    scalars computed inside it (:func:`.adam.adam_one_from_hyperparameters`) and the step
    count incremented in place. Anything else goes back to the general path."""

    def __init__(self, opt: Any, groups: list, flat: FlatState, flags: np.ndarray, variant: tuple) -> None:
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
            adam_kernels.hyperparameter_row(self.group, float(np.finfo(flat.arena.dtype).max)), dtype=np.float64
        )
        self.flags = flags
        self.variant = variant
        self.arena = flat.arena
        self.offset = int(flat.offsets[0])

    @classmethod
    def for_optimizer(cls, opt: Any, groups: list) -> TinyPlan | None:
        last = opt.__dict__.get("_kernel_last")
        p = opt.param_groups[0]["params"][0]
        if last is None or p.size >= PARALLEL_THRESHOLD or len(opt.state) != 1:
            return None
        flat, flags, variant = last
        return cls(opt, groups, flat, flags, variant)

    def step(self, opt: Any, grads: Any) -> bool | None:
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
        ok = adam_kernels.adam_one_from_hyperparameters(
            self.flat_param,
            g if g.ndim == 1 else g.reshape(-1),
            self.arena,
            self.offset,
            self.hyperparameters,
            *adam_kernels.powers(self.group, t),
            self.flags,
            check_finite,
            *self.variant,
        )
        if ok:
            state["step"] = t
        return ok


def fused_step_checked(opt: Any, groups: list, pairs: list, checked: list) -> list[np.ndarray | None]:
    """The step for gradients already checked: every eligible tensor, no finiteness check."""
    params = [p for p, _ in pairs]
    step = _adam_family if opt.kernel_family == "adam" else _sgd_family
    remaining = list(checked)
    for dtype, ks in _by_dtype(params, checked).items():
        step(opt, pairs, checked, dtype, ks, False)
        for k in ks:
            remaining[k] = None
    return remaining


def _launch_variant(variants: list[tuple | None], flags: list[list], column: int, none: tuple) -> tuple:
    """The one-loop variant of a launch, as the kernel's marker arguments (``none`` if no
    tensor has one, or the one loop is switched off): the first tensor's that has one (usually
    all tensors share it). Sets the flag ``column`` of the tensors of that variant, which run
    the one loop; any other tensor takes the chunked stages."""
    variant = next((v for v in variants if v is not None), None) if ONE_LOOP else None
    for row, own in zip(flags, variants):
        row[column] = variant is not None and own == variant
    return none if variant is None else variant


def _adam_family(opt: Any, pairs: list, grads: list, dtype: np.dtype, ks: list[int], check_finite: bool) -> bool:
    cprop = "cprop_beta" in opt.hyperparams
    decoupled = bool(opt.decoupled_weight_decay)
    flat = _arena(opt, adam_kernels.FIELDS, dtype, [p for p, _ in pairs])
    largest = float(np.finfo(dtype).max)
    scalars, flags, variants, new_states = [], [], [], []
    for k in ks:
        group = pairs[k][1]
        state = opt.state[k]
        fresh = not state
        t = 1 if fresh else state["step"] + 1
        new = {"step": t}
        new["exp_avg"] = flat.adopt(k, "exp_avg", None if fresh else state["exp_avg"])
        new["exp_avg_sq"] = flat.adopt(k, "exp_avg_sq", None if fresh else state["exp_avg_sq"])
        old_max = state.get("max_exp_avg_sq")
        new["max_exp_avg_sq"] = flat.adopt(k, "max_exp_avg_sq", old_max) if group["amsgrad"] else old_max
        private_m = private_v = False
        cdf_code = 0
        if cprop:
            shares_m, shares_v = opt.shares_moments(state, group)
            allowed_m, allowed_v = opt.sharing_allowed(group)
            private_m, private_v = not (shares_m and allowed_m), not (shares_v and allowed_v)
            # A moment that stops being shared continues, private, from Adam's (CPropAdam._compute).
            if private_m:
                source = None if fresh else state.get("cprop_m", state["exp_avg"])
                new["cprop_m"] = flat.adopt(k, "cprop_m", source)
            if private_v:
                source = None if fresh else state.get("cprop_v", state["exp_avg_sq"])
                new["cprop_v"] = flat.adopt(k, "cprop_v", source)
            cdf_code = CDF_CODES[group["cprop_cdf"]]
            row = cprop_scalars(group["cprop_beta"], group["cprop_c"], group["cprop_eps"], t, largest)
        else:
            row = _NO_CPROP
        scalars.append(adam_kernels.adam_scalars(group, t, decoupled) + row)
        flags.append(
            [decoupled, group["weight_decay"] != 0.0, group["amsgrad"], cprop, private_m, private_v, cdf_code, False]
        )
        variants.append(
            adam_kernels.one_loop_variant(cprop, group["amsgrad"], dtype == np.float32, cdf_code, private_m, private_v)
        )
        new_states.append(new)
    extra = _launch_variant(variants, flags, adam_kernels.ONE_LOOP, adam_kernels.NO_ONE_LOOP)
    launch = _Launch(flat, ks, adam_kernels.CHUNK)
    kernels = (adam_kernels.adam_one, adam_kernels.adam_serial, adam_kernels.adam_parallel)
    flag_table = np.array(flags, dtype=np.int64)
    if not launch.run(kernels, grads, ks, _table(scalars, dtype), flag_table, check_finite, extra):
        return False
    for k, new in zip(ks, new_states):
        opt.state[k] = new
    opt.__dict__["_kernel_last"] = (flat, flag_table[0], extra)
    return True


def _sgd_family(opt: Any, pairs: list, grads: list, dtype: np.dtype, ks: list[int], check_finite: bool) -> bool:
    cprop = "cprop_beta" in opt.hyperparams
    flat = _arena(opt, sgd_kernels.FIELDS, dtype, [p for p, _ in pairs])
    largest = float(np.finfo(dtype).max)
    scalars, flags, variants, new_states = [], [], [], []
    for k in ks:
        group = pairs[k][1]
        state = opt.state[k]
        new: dict[str, Any] = {}
        cdf_code = 0
        if cprop:
            fresh = not state
            t = 1 if fresh else state["step"] + 1
            new["step"] = t
            new["cprop_m"] = flat.adopt(k, "cprop_m", None if fresh else state["cprop_m"])
            new["cprop_v"] = flat.adopt(k, "cprop_v", None if fresh else state["cprop_v"])
            cdf_code = CDF_CODES[group["cprop_cdf"]]
            row = cprop_scalars(group["cprop_beta"], group["cprop_c"], group["cprop_eps"], t, largest)
        else:
            row = _NO_CPROP
        has_momentum = group["momentum"] != 0.0
        old_buffer = state.get("momentum_buffer")
        first = old_buffer is None
        if has_momentum:
            # The first step writes the buffer whole; later ones continue from the saved one.
            new["momentum_buffer"] = (
                flat.view(k, "momentum_buffer") if first else flat.adopt(k, "momentum_buffer", old_buffer)
            )
        else:
            new["momentum_buffer"] = None
        scalars.append(sgd_kernels.sgd_scalars(group) + row)
        flags.append([group["weight_decay"] != 0.0, has_momentum, first, group["nesterov"], cprop, cdf_code, False])
        variants.append(sgd_kernels.one_loop_variant(cprop, dtype == np.float32, cdf_code, has_momentum))
        new_states.append(new)
    extra = _launch_variant(variants, flags, sgd_kernels.ONE_LOOP, sgd_kernels.NO_ONE_LOOP)
    launch = _Launch(flat, ks, sgd_kernels.CHUNK)
    kernels = (sgd_kernels.sgd_one, sgd_kernels.sgd_serial, sgd_kernels.sgd_parallel)
    if not launch.run(kernels, grads, ks, _table(scalars, dtype), np.array(flags, dtype=np.int64), check_finite, extra):
        return False
    for k, new in zip(ks, new_states):
        opt.state[k] = new
    return True


_WRAPPER_ROWS = (*wrapper_kernels.FIELDS, "before")


class WrapperStep:
    """The CProp wrapper's fused step, in two halves around the base optimizer's step:
    the constructor saves the parameters it handles, :meth:`finish` scales the base
    optimizer's update and commits CProp's state. ``handled`` lists those parameters."""

    def __init__(self, wrapper: Any, hp: dict[str, Any], grads: list[np.ndarray | None]) -> None:
        self.wrapper, self.hp, self.grads = wrapper, hp, grads
        params = wrapper.params
        self.batches: list[tuple[FlatState, list[int], _Launch]] = []
        self.handled: set[int] = set()
        for dtype, ks in _by_dtype(params, grads).items():
            flat = _arena(wrapper, _WRAPPER_ROWS, dtype, params)
            launch = _Launch(flat, ks, wrapper_kernels.CHUNK)
            args = (launch.p_addr, launch.sizes, launch.offsets, flat.arena, launch.tensor, launch.lo, launch.hi)
            workers = min(numba.get_num_threads(), launch.tensor.size)
            if launch.total < PARALLEL_THRESHOLD or workers < 2:
                wrapper_kernels.save_serial(*args)
            else:
                wrapper_kernels.save_parallel(*args, workers)
            self.batches.append((flat, ks, launch))
            self.handled.update(ks)

    def finish(self) -> None:
        """After the base optimizer's step: CProp's moments, scale and the scaled update."""
        hp, state = self.hp, self.wrapper.state
        for flat, ks, launch in self.batches:
            scalars, new_states = [], []
            largest = float(np.finfo(flat.arena.dtype).max)
            for k in ks:
                old = state[k]
                fresh = not old
                t = 1 if fresh else old["step"] + 1
                new_states.append(
                    {
                        "step": t,
                        "cprop_m": flat.adopt(k, "cprop_m", None if fresh else old["cprop_m"]),
                        "cprop_v": flat.adopt(k, "cprop_v", None if fresh else old["cprop_v"]),
                    }
                )
                scalars.append(cprop_scalars(hp["beta"], hp["c"], hp["eps"], t, largest))
            flags = np.full((len(ks), wrapper_kernels.FLAG_COUNT), CDF_CODES[hp["cdf"]], dtype=np.int64)
            kernels = (None, wrapper_kernels.apply_serial, wrapper_kernels.apply_parallel)
            launch.run(kernels, self.grads, ks, _table(scalars, flat.arena.dtype), flags, None)
            for k, new in zip(ks, new_states):
                state[k] = new
