"""The port adapter for cprop-ref itself: the reference side of every check."""

from __future__ import annotations

import inspect
import io
from collections.abc import Sequence
from typing import Any

import numpy as np

from .. import SGD, Adam, AdamW, CProp, CPropAdam, CPropSGD, checkpoint
from .config import PortConfig
from .dtypes import round_to_bfloat16

_BASES = {"SGD": SGD, "Adam": Adam, "AdamW": AdamW}
_SPECIALISED = {"CPropSGD": CPropSGD, "CPropAdam": CPropAdam}


def _backend_kwargs(cls: type, backend: str) -> dict[str, Any]:
    """``backend=...`` where the optimizer offers a choice. The plain NumPy path is the
    reference (the fused kernels are themselves checked against it)."""
    return {"backend": backend} if "backend" in inspect.signature(cls.__init__).parameters else {}


def build_reference(config: PortConfig, params: list[np.ndarray], backend: str = "numpy") -> Any:
    """The cprop-ref optimizer for ``config`` over ``params`` (updated in place)."""
    if config.optimizer == "CProp":
        base_cls = _BASES[config.base or ""]
        base = base_cls(params, **config.base_hyperparams, **_backend_kwargs(base_cls, backend))
        return CProp(base, **config.hyperparams, **_backend_kwargs(CProp, backend))
    cls = _SPECIALISED[config.optimizer]
    return cls(params, **config.hyperparams, **_backend_kwargs(cls, backend))


def build_reference_groups(
    configs: Sequence[PortConfig], params: Sequence[list[np.ndarray]], backend: str = "numpy"
) -> Any:
    """The cprop-ref optimizer over parameter groups: ``configs[g]``'s hyperparameters for
    ``params[g]`` (for ``CProp``: its base optimizer's groups; the wrapper's own are ``configs[0]``'s)."""
    config = configs[0]
    if config.optimizer == "CProp":
        base_cls = _BASES[config.base or ""]
        groups = [{"params": ps, **c.base_hyperparams} for ps, c in zip(params, configs)]
        base = base_cls(groups, **config.base_hyperparams, **_backend_kwargs(base_cls, backend))
        return CProp(base, **config.hyperparams, **_backend_kwargs(CProp, backend))
    cls = _SPECIALISED[config.optimizer]
    groups = [{"params": ps, **c.hyperparams} for ps, c in zip(params, configs)]
    return cls(groups, **config.hyperparams, **_backend_kwargs(cls, backend))


class ReferenceRun:
    """cprop-ref's optimizer behind the port protocol, with read-outs of its whole state."""

    backend = "numpy"

    def __init__(self, config: PortConfig, params: Sequence[np.ndarray]) -> None:
        self.config = config
        self._params = [np.array(p, dtype=config.np_dtype, copy=True) for p in params]
        self.optimizer = build_reference(config, self._params, backend=self.backend)

    @classmethod
    def grouped(cls, configs: Sequence[PortConfig], params: Sequence[Sequence[np.ndarray]]) -> ReferenceRun:
        """One run over parameter groups (the protocol's ``groups`` hook, :mod:`.usage`): the
        tensors of every group, group after group."""
        run = cls.__new__(cls)
        run.config = configs[0]
        grouped = [[np.array(p, dtype=run.config.np_dtype, copy=True) for p in ps] for ps in params]
        run._params = [p for ps in grouped for p in ps]
        run.optimizer = build_reference_groups(configs, grouped, backend=cls.backend)
        return run

    def step(self, grads: Sequence[np.ndarray | None]) -> None:
        self.optimizer.step(list(grads))
        if self.config.dtype == "bfloat16":
            # NumPy has no bfloat16: the reference steps float32 parameters (its statistics are
            # float32, as for float16) and rounds each once to bfloat16 after the step.
            for p in self._params:
                p[...] = round_to_bfloat16(p)

    def params(self) -> list[np.ndarray]:
        return [p.copy() for p in self._params]

    def save(self) -> bytes:
        """The optimizer's ``state_dict()`` as cprop-ref's checkpoint entries in an ``.npz`` (bytes)."""
        buffer = io.BytesIO()
        np.savez(buffer, **checkpoint.encode(self.optimizer.state_dict()))
        return buffer.getvalue()

    def restore(self, data: bytes) -> None:
        """``load_state_dict`` of what :meth:`save` wrote."""
        with np.load(io.BytesIO(data), allow_pickle=False) as npz:
            entries = {key: npz[key] for key in npz.files}
        self.optimizer.load_state_dict(checkpoint.decode(entries, "the saved state"))

    def scales(self) -> list[np.ndarray | None]:
        return [None if s is None else np.array(s, copy=True) for s in self.optimizer.scales()]

    def states(self) -> list[dict[str, Any]]:
        """Every tensor's state in the protocol's names (``{}`` before its first gradient)."""
        sd = self.optimizer.state_dict()
        if self.config.optimizer != "CProp":
            return [self._canonical(entries) for entries in sd["state"]]
        return [self._canonical({**base, **own}) for own, base in zip(sd["state"], sd["base"]["state"])]

    @staticmethod
    def _canonical(entries: dict[str, Any]) -> dict[str, Any]:
        if "step" not in entries:
            return {}
        out = dict(entries)
        out.setdefault("cprop_m", entries.get("exp_avg"))  # CPropAdam sharing Adam's moments
        out.setdefault("cprop_v", entries.get("exp_avg_sq"))
        return out

    def cprop_state(self) -> list[tuple[np.ndarray, np.ndarray, int] | None]:
        return [(st["cprop_m"], st["cprop_v"], st["step"]) if "cprop_m" in st else None for st in self.states()]

    def load_state(self, states: Sequence[dict[str, Any]]) -> None:
        """Inject per-tensor states in the protocol's names (see :mod:`.protocol`)."""
        sd = self.optimizer.state_dict()
        cfg = self.config
        if cfg.optimizer == "CPropSGD":
            sd["state"] = [_pick(st, ("step", "cprop_m", "cprop_v", "momentum_buffer")) for st in states]
        elif cfg.optimizer == "CPropAdam":
            group = self.optimizer.param_groups[0]
            share_m, share_v = CPropAdam.sharing_allowed(group)
            entries = []
            for st in states:
                keep = ["step", "exp_avg", "exp_avg_sq", "max_exp_avg_sq"]
                keep += [] if share_m and np.array_equal(st["cprop_m"], st["exp_avg"]) else ["cprop_m"]
                keep += [] if share_v and np.array_equal(st["cprop_v"], st["exp_avg_sq"]) else ["cprop_v"]
                entries.append(_pick(st, tuple(keep)))
            sd["state"] = entries
        else:
            sd["state"] = [_pick(st, ("step", "cprop_m", "cprop_v")) for st in states]
            base_keys = (
                ("momentum_buffer",) if cfg.base == "SGD" else ("step", "exp_avg", "exp_avg_sq", "max_exp_avg_sq")
            )
            sd["base"]["state"] = [_pick(st, base_keys) for st in states]
        self.optimizer.load_state_dict(sd)


def _pick(state: dict[str, Any], keys: tuple[str, ...]) -> dict[str, Any]:
    return {k: state[k] for k in keys if state.get(k) is not None}


def reference_port(config: PortConfig, params: Sequence[np.ndarray]) -> ReferenceRun:
    """The port factory of cprop-ref itself (``cprop_ref.conformance:reference_port``)."""
    return ReferenceRun(config, params)


class _BackendRun(ReferenceRun):
    """cprop-ref's optimizers on another backend (the fused Numba kernels), checked like a port."""

    backend = "numba"


def numba_port(config: PortConfig, params: Sequence[np.ndarray]) -> ReferenceRun:
    """cprop-ref's default (Numba) backend as a port: ``cprop-ref verify cprop_ref.conformance.reference:numba_port``."""
    return _BackendRun(config, params)


# The protocol's optional parameter-groups hook (:mod:`.usage`): the optimizers' own param groups.
reference_port.groups = ReferenceRun.grouped  # type: ignore[attr-defined]
numba_port.groups = _BackendRun.grouped  # type: ignore[attr-defined]
