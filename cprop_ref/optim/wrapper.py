"""``CProp``: apply CProp's scale to the update of any optimizer that follows the protocol."""

from __future__ import annotations

import os
from collections.abc import Sequence
from typing import Any, Protocol, runtime_checkable

import numpy as np

from .. import checkpoint
from ..gradients import check_gradients, check_nonfinite_policy, compute_dtype, unaliased
from ..hyperparams import cdf_name, check_broadcasts, check_fits_dtypes, decay_rate, non_negative, run_arrays
from ..kernels import DEFAULT_BACKEND, check_backend, check_kernel_cdf, state_buffers
from ..kernels.plan import LaunchPlan
from ..scale import CPropStats, cprop_scale, cprop_step, init_stats, update_stats
from .base import (
    check_params_of,
    check_state_values,
    flat_params,
    import_state,
    parameter_names,
    refuse_unknown_keys,
    state_size,
)
from .rows import hyperparameter_classes, scale_by_class

_CPROP_STATE_SCHEMA = {"step": "count", "cprop_m": "array", "cprop_v": "array"}


@runtime_checkable
class OptimizerProtocol(Protocol):
    """What :class:`CProp` needs of the optimizer it wraps (every cprop-ref optimizer has it).

    - ``param_groups``: a list of dicts, each with a ``"params"`` list of NumPy arrays;
      the parameters, group after group, are the order of ``step``'s gradients.
    - ``step(grads)``: updates the arrays in place; ``grads[k]`` is the gradient of the
      k-th parameter or ``None``. It must either complete or raise without changing
      anything, and must leave a parameter whose gradient is ``None`` untouched.
    - ``state_dict()`` and ``load_state_dict(state_dict)``, for checkpoints: a tree of
      dicts, lists, JSON scalars and NumPy arrays.
    """

    param_groups: list[dict[str, Any]]

    def step(self, grads: Sequence[np.ndarray | None]) -> None: ...

    def state_dict(self) -> dict[str, Any]: ...

    def load_state_dict(self, state_dict: dict[str, Any]) -> None: ...


class CProp:
    """Wrap ``base_optimizer`` so that each of its updates is scaled by CProp:

    ``before = param``; the base optimizer steps; ``param <- before + (param - before) * s``,
    where ``s`` comes from the raw gradients (``docs/algorithm.md``, "How the scale is applied"). ``beta``, ``c``,
    ``eps`` and ``cdf`` are CProp's hyperparameters; they are attributes and may be changed
    between steps. For plain SGD and Adam this equals :class:`CPropSGD` and
    :class:`CPropAdam` up to rounding. ``backend`` is the wrapper's own (``"numba"``: the
    save and the scale-and-apply are fused kernels; ``"numpy"``: the reference), independent
    of the base optimizer's. ``beta``, ``c`` and ``eps`` may be arrays that broadcast against
    every parameter (one value per run): each run is then scaled exactly as by the wrapper
    built with its scalars.
    """

    def __init__(
        self,
        base_optimizer: OptimizerProtocol,
        beta: float = 0.999,
        c: float = 1.0,
        eps: float = 1e-8,
        cdf: str = "bft",
        *,
        nonfinite: str = "raise",
        backend: str = DEFAULT_BACKEND,
    ) -> None:
        if not isinstance(base_optimizer, OptimizerProtocol):
            raise ValueError(
                "CProp: base_optimizer must follow the optimizer protocol (param_groups, step, "
                f"state_dict, load_state_dict); got {type(base_optimizer).__name__}"
            )
        self.base_optimizer = base_optimizer
        self.beta = beta
        self.c = c
        self.eps = eps
        self.cdf = cdf
        self.nonfinite = check_nonfinite_policy(nonfinite)
        self.backend = check_backend(backend)
        #: What the fused steps keep between steps (:class:`cprop_ref.kernels.plan.LaunchPlan`).
        self.kernel_plan = LaunchPlan()
        self._per_run_scratch: dict[tuple, tuple[_Replay, CProp]] = {}
        self.state: list[dict[str, Any]] = [{} for _ in self.params]
        check_params_of(self, self.state, "CProp")
        checked = self._check_hyperparams()
        if self.backend == "numba":
            try:
                check_kernel_cdf("cdf", checked["cdf"])
            except ValueError as err:
                raise ValueError(f"CProp: {err}") from None

    def _check_hyperparams(self, values: dict[str, Any] | None = None, where: str = "CProp") -> dict[str, Any]:
        """The wrapper's hyperparameters (its attributes, or ``values``) validated as the
        optimizers validate theirs, each finite in the compute dtype of every parameter."""
        raw = dict(beta=self.beta, c=self.c, eps=self.eps, cdf=self.cdf) if values is None else values
        try:
            checked = dict(
                beta=decay_rate("beta", raw.get("beta"), per_run=True),
                c=non_negative("c", raw.get("c"), per_run=True),
                eps=non_negative("eps", raw.get("eps"), per_run=True),
                cdf=cdf_name("cdf", raw.get("cdf")),
            )
        except ValueError as err:
            raise ValueError(f"{where}: {err}") from None
        check_broadcasts(checked, self.params, where)
        check_fits_dtypes(checked, {compute_dtype(p.dtype) for p in self.params}, where)
        return checked

    @property
    def param_groups(self) -> list[dict[str, Any]]:
        """The base optimizer's parameter groups (so wrappers can be nested)."""
        return self.base_optimizer.param_groups

    @property
    def params(self) -> list[np.ndarray]:
        """All parameters, group after group: the order ``step(grads)`` expects."""
        return flat_params(self.param_groups)

    def param_names(self) -> list[str]:
        return parameter_names(self.param_groups)

    def step(self, grads: Sequence[np.ndarray | None]) -> None:
        params = self.params
        if len(self.state) < len(params):  # the base optimizer gained a parameter group
            self.state.extend({} for _ in range(len(params) - len(self.state)))
        check_params_of(self, self.state, "CProp")
        hp = self._check_hyperparams()
        checked = check_gradients(params, self.param_names(), grads, self.nonfinite)
        fused = None
        per_run = bool(run_arrays(hp))  # per-run arrays: class by class of runs, below
        if check_backend(self.backend) == "numba" and not per_run:
            from ..kernels.dispatch import WrapperStep  # imports Numba on the first fused step only

            # The fused half reads the gradients after the base optimizer's step: one sharing
            # memory with a parameter or a state buffer (the wrapper's or the base optimizer's)
            # would have changed by then, so it is copied (the NumPy half reads them before).
            buffers = self.kernel_plan.buffers() + state_buffers(self.base_optimizer)
            checked = unaliased(checked, params, buffers, self.kernel_plan.memory)
            fused = WrapperStep(self, hp, checked)  # saves the parameters it will update
        new_stats: list[tuple[int, CPropStats, np.ndarray, np.ndarray]] = []
        by_kernels: list[tuple[int, list, np.ndarray]] = []
        # As in Optimizer.step: IEEE results (inf on overflow) are the defined ones, and a
        # user's np.seterr(all="raise") must not abort the step half-way.
        with np.errstate(all="ignore"):
            for k, (p, g) in enumerate(zip(params, checked)):
                if g is None or (fused is not None and k in fused.handled):
                    continue
                dtype = compute_dtype(p.dtype)
                if per_run and check_backend(self.backend) == "numba" and p.dtype in _KERNEL_DTYPES:
                    # Each class of runs by a scratch scalar wrapper's kernels (below), with the
                    # gradient read now, before the base optimizer's step.
                    classes = [
                        (indices, scalar, np.ascontiguousarray(g.reshape(-1)[indices]))
                        for indices, scalar in hyperparameter_classes(hp, _WRAPPER_HYPERPARAMS, p.shape)
                    ]
                    by_kernels.append((k, classes, p.astype(dtype, copy=True)))
                    continue
                if per_run:
                    stats = _per_run_update(self._stats(k, p), g.astype(dtype, copy=False), hp)
                    s = scale_by_class(_hp_scale, stats, hp, _WRAPPER_HYPERPARAMS, p.shape)
                else:
                    stats, s = cprop_step(
                        self._stats(k, p), g.astype(dtype, copy=False), hp["beta"], hp["c"], hp["eps"], hp["cdf"]
                    )
                new_stats.append((k, stats, s, p.astype(dtype, copy=True)))
        # The base optimizer either steps or raises having changed nothing; only then is
        # CProp's own state committed.
        self.base_optimizer.step(checked)
        if fused is not None:
            fused.finish()
        for k, classes, before in by_kernels:
            self.state[k] = self._kernel_classes(params[k], before, classes, self.state[k])
        for k, stats, s, before in new_stats:
            with np.errstate(all="ignore"):
                after = params[k].astype(before.dtype, copy=False)
                scaled = before + (after - before) * s
                # No update (after == before, also +-inf) or an update scaled by s = 0 leaves the
                # parameter as it was, where IEEE would give inf - inf or 0 * inf = NaN (a float16
                # parameter that the base optimizer took past 65504, or c = 0).
                params[k][...] = np.where((s == 0.0) | (after == before), before, scaled)
            self.state[k] = {"step": stats.t, "cprop_m": np.asarray(stats.m), "cprop_v": np.asarray(stats.v)}

    def _kernel_classes(
        self, param: np.ndarray, before: np.ndarray, classes: list, state: dict[str, Any]
    ) -> dict[str, Any]:
        """Scale the base optimizer's update of ``param`` (from ``before``) class by class of
        runs sharing their hyperparameter values, each by a scratch :class:`CProp` with the
        class's scalars and ``backend="numba"``: exactly the bits of the scalar Numba wrapper.
        Returns the parameter's new state."""
        after = param.reshape(-1)
        result = np.array(after, copy=True)
        m, v = np.empty_like(result), np.empty_like(result)
        cache = self._per_run_scratch
        for indices, scalar, grad in classes:
            values = {name: scalar[name] for name in _WRAPPER_HYPERPARAMS}
            # Kept between steps, one per dtype, size and setting (their kernels' tables reused);
            # parameter and state are overwritten below, so they hold nothing of their own.
            key = (before.dtype.str, len(indices), repr(tuple(values.values())))  # repr: -0.0 is not 0.0
            if key not in cache:
                if len(cache) >= 4096:
                    cache.clear()
                replay = _Replay(before.reshape(-1)[indices], after[indices])
                cache[key] = (replay, CProp(replay, **values, nonfinite="propagate", backend="numba"))
            replay, scratch = cache[key]
            replay.param_groups[0]["params"][0][...] = before.reshape(-1)[indices]
            replay.after = after[indices]
            target = scratch.state[0]
            if not state:
                scratch.state = [{}]
            elif target:
                target["step"] = state["step"]
                for name in ("cprop_m", "cprop_v"):
                    target[name][...] = state[name].reshape(-1)[indices]
            else:
                sub = {"step": state["step"]}
                sub.update({name: state[name].reshape(-1)[indices] for name in ("cprop_m", "cprop_v")})
                scratch.state = [sub]
            scratch.step([grad])
            result[indices] = replay.param_groups[0]["params"][0]
            m[indices], v[indices] = scratch.state[0]["cprop_m"], scratch.state[0]["cprop_v"]
            step = scratch.state[0]["step"]
        param[...] = result.reshape(param.shape)
        return {"step": step, "cprop_m": m.reshape(param.shape), "cprop_v": v.reshape(param.shape)}

    def _stats(self, k: int, p: np.ndarray) -> CPropStats:
        state = self.state[k]
        if not state:
            return init_stats(p.shape, compute_dtype(p.dtype))
        return CPropStats(state["cprop_m"], state["cprop_v"], state["step"])

    def scales(self) -> list[np.ndarray | None]:
        """The per-element CProp scale of every parameter (``None`` before its first gradient);
        see :meth:`CPropStatsMixin.scales`."""
        hp = self._check_hyperparams()
        out: list[np.ndarray | None] = []
        for k, p in enumerate(self.params):
            if k >= len(self.state) or not self.state[k]:
                out.append(None)
            elif run_arrays(hp):
                out.append(scale_by_class(_hp_scale, self._stats(k, p), hp, _WRAPPER_HYPERPARAMS, p.shape))
            else:
                out.append(np.asarray(_hp_scale(self._stats(k, p), hp)))
        return out

    # -- state --------------------------------------------------------------------------

    def state_dict(self) -> dict[str, Any]:
        return {
            "optimizer": "CProp",
            "nonfinite": self.nonfinite,
            "hyperparams": self._check_hyperparams(),
            "state": [
                {k: (np.array(v, copy=True) if isinstance(v, np.ndarray) else v) for k, v in st.items()}
                for st in self.state
            ],
            "base": self.base_optimizer.state_dict(),
        }

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        """Restore CProp's and the base optimizer's state; on error nothing changes."""
        if not isinstance(state_dict, dict) or state_dict.get("optimizer") != "CProp":
            found = state_dict.get("optimizer") if isinstance(state_dict, dict) else type(state_dict).__name__
            raise ValueError(f"CProp.load_state_dict: the state dict is for {found!r}, not CProp")
        refuse_unknown_keys(
            state_dict, ("optimizer", "nonfinite", "hyperparams", "state", "base"), "CProp.load_state_dict"
        )
        hp = state_dict.get("hyperparams")
        if not isinstance(hp, dict):
            raise ValueError("CProp.load_state_dict: 'hyperparams' missing")
        refuse_unknown_keys(hp, ("beta", "c", "eps", "cdf"), "CProp.load_state_dict hyperparams")
        checked_hp = self._check_hyperparams(hp, "CProp.load_state_dict")
        nonfinite = check_nonfinite_policy(state_dict.get("nonfinite", self.nonfinite))
        params = self.params
        saved = state_dict.get("state")
        if not isinstance(saved, list) or len(saved) != len(params):
            count = len(saved) if isinstance(saved, list) else saved
            raise ValueError(f"CProp.load_state_dict: {count} parameter states saved, the optimizer has {len(params)}")
        new_state = []
        for name, entries, p in zip(self.param_names(), saved, params):
            where = f"CProp.load_state_dict {name}"
            if not isinstance(entries, dict):
                raise ValueError(f"{where}: state must be a dict")
            state = import_state(entries, p, _CPROP_STATE_SCHEMA, where)
            check_state_values(state, nonfinite, where)
            new_state.append(state)
        if "base" not in state_dict:
            raise ValueError("CProp.load_state_dict: the base optimizer's state ('base') is missing")
        self.base_optimizer.load_state_dict(state_dict["base"])  # atomic itself; last check that can fail
        self.beta, self.c, self.eps, self.cdf = (
            checked_hp["beta"],
            checked_hp["c"],
            checked_hp["eps"],
            checked_hp["cdf"],
        )
        self.nonfinite = nonfinite
        self.state = new_state
        self.kernel_plan.invalidate()

    def save(self, path: str | os.PathLike[str]) -> None:
        """Write :meth:`state_dict` to an ``.npz`` checkpoint (atomically; no pickle)."""
        checkpoint.save(path, self.state_dict())

    def load(self, path: str | os.PathLike[str], max_bytes: int | None = None) -> None:
        """Load a checkpoint written by :meth:`save`; on any error nothing changes. A file whose entries
        declare more than ``max_bytes`` (default: :meth:`checkpoint_bytes`) is refused unread."""
        limit = self.checkpoint_bytes() if max_bytes is None else max_bytes
        name = "this optimizer's checkpoint can hold" if max_bytes is None and limit is not None else None
        self.load_state_dict(checkpoint.load(path, max_bytes=limit, limit_name=name))

    def checkpoint_bytes(self) -> int | None:
        """The most a checkpoint of this wrapper can declare: CProp's two arrays per parameter
        and the base optimizer's own budget (``None``, the module's default limit, if the base
        optimizer does not say)."""
        base = getattr(self.base_optimizer, "checkpoint_bytes", None)
        base_bytes = base() if callable(base) else None
        if base_bytes is None:
            return None
        return base_bytes + checkpoint.size_budget(*state_size(self.params, _CPROP_STATE_SCHEMA), fixed=0)


_WRAPPER_HYPERPARAMS = ("beta", "c", "eps", "cdf")
_KERNEL_DTYPES = (np.dtype(np.float32), np.dtype(np.float64))


class _Replay:
    """The base optimizer of a scratch wrapper (:meth:`CProp._kernel_classes`): its step moves
    its one parameter to the values the real base optimizer gave those elements."""

    def __init__(self, before: np.ndarray, after: np.ndarray) -> None:
        self.param_groups = [{"params": [np.array(before, copy=True)]}]
        self.after = after

    def step(self, grads: Sequence[np.ndarray | None]) -> None:
        self.param_groups[0]["params"][0][...] = self.after

    def state_dict(self) -> dict[str, Any]:
        return {}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        pass


def _hp_scale(stats: CPropStats, hp: dict[str, Any]) -> np.ndarray:
    return cprop_scale(stats, hp["beta"], hp["c"], hp["eps"], hp["cdf"])


def _per_run_update(stats: CPropStats, g: np.ndarray, hp: dict[str, Any]) -> CPropStats:
    """:func:`~cprop_ref.scale.update_stats` with a per-run ``beta``: the scalar rule per class
    of elements sharing their hyperparameter values (:mod:`.rows`)."""
    shape = g.shape
    m, v = np.empty(g.size, g.dtype), np.empty(g.size, g.dtype)
    flat_m, flat_v, flat_g = stats.m.reshape(-1), stats.v.reshape(-1), g.reshape(-1)
    for indices, scalar in hyperparameter_classes(hp, _WRAPPER_HYPERPARAMS, shape):
        sub = update_stats(CPropStats(flat_m[indices], flat_v[indices], stats.t), flat_g[indices], scalar["beta"])
        m[indices], v[indices] = sub.m, sub.v
    return CPropStats(m.reshape(shape), v.reshape(shape), stats.t + 1)
