"""The port protocol: how the harness drives any implementation of CProp.

A *port* is a callable ``port(config, params) -> PortRun``: given a :class:`PortConfig`
and the initial parameters (a list of NumPy arrays of ``config.dtype``, which it must
copy, not keep), it builds its optimizer and returns an object with

- ``step(grads)``: one optimizer step; ``grads[k]`` is a NumPy array (same shape and
  dtype as parameter ``k``) or ``None`` for a tensor that receives no gradient this step;
- ``params()``: the current parameters as NumPy arrays (copies), in the same order;

and, where the port can expose them (each is optional; the harness compares what is there,
and a method that returns ``None`` counts as absent):

- ``scales()``: the CProp scale each tensor's last step applied, ``None`` before its first
  gradient;
- ``cprop_state()``: ``(m, v, t)`` per tensor (CProp's moments and step count), ``None``
  before its first gradient;
- ``load_state(states)``: set the state of every tensor from a list of dicts with ``"step"``
  (int), ``"cprop_m"``, ``"cprop_v"`` and, as the base optimizer needs them,
  ``"momentum_buffer"``, ``"exp_avg"``, ``"exp_avg_sq"``, ``"max_exp_avg_sq"`` (the base
  optimizer's step count is ``"step"`` too). Needed for the injected-state check.

A port that does not implement a configuration raises :class:`Unsupported` from the
factory; the harness counts and reports those instead of failing.

**Layouts.** The parameters (and gradients) may come in any memory layout: transposed,
strided slices of a larger buffer, several parameters that are views of one buffer, a 4-d
channels-last tensor, 0-d, empty. A port whose framework has such layouts should build its
parameters with the same one: :func:`copy_keeping_layout` copies the arrays keeping strides
and shared buffers (``torch.from_numpy`` of its results keeps both). The harness compares
values only, so a port that copies into contiguous storage still passes; one that loses or
misplaces the update of a non-contiguous parameter fails.

**Adding a group** (optional): ``add_group(config, params)`` adds a parameter group with
``config``'s hyperparameters over ``params`` to the built run (torch: ``add_param_group``); the
refusals check adds an invalid one and asks that it be refused and change nothing.

**Resume** (optional): ``save()`` returns the port's own serialised state (bytes, e.g.
``torch.save`` of ``state_dict()``) and ``restore(data)`` loads it into the run, which the
harness builds afresh from the same configuration and the current parameters; see
:func:`cprop_ref.conformance.checks.check_resume`.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Protocol, runtime_checkable

import numpy as np

from .config import PortConfig

#: The entries of an injected state (``load_state``), besides ``step``.
STATE_ARRAYS: tuple[str, ...] = ("cprop_m", "cprop_v", "momentum_buffer", "exp_avg", "exp_avg_sq", "max_exp_avg_sq")


class Unsupported(NotImplementedError):
    """Raised by a port for a configuration it does not implement (the reason as message)."""


class MissingMethod(Unsupported):
    """Raised by the harness for a check that needs an optional method or hook the port does not
    have (``load_state``, ``save`` / ``restore``, ``groups``): a feature left out, not a
    configuration declined, so the minimum-coverage rule (:mod:`.report`) does not count it."""


@runtime_checkable
class PortRun(Protocol):
    """A port's optimizer, built for one configuration (see the module docstring)."""

    def step(self, grads: Sequence[np.ndarray | None]) -> None: ...

    def params(self) -> list[np.ndarray]: ...


class Port(Protocol):
    """``port(config, params) -> PortRun``."""

    def __call__(self, config: PortConfig, params: Sequence[np.ndarray]) -> PortRun: ...


def copy_keeping_layout(arrays: Sequence[np.ndarray]) -> list[np.ndarray]:
    """Copies of ``arrays`` with their strides, offsets and shared buffers: arrays that are views
    of one buffer are views of one new copy of it."""
    copies: dict[int, tuple[np.ndarray, np.ndarray]] = {}
    out = []
    for a in arrays:
        base = a
        while isinstance(base.base, np.ndarray):
            base = base.base
        if id(base) not in copies:
            copies[id(base)] = (base, np.array(base, copy=True, order="K"))
        original, copy = copies[id(base)]
        if original.size == 0 or a.size == 0:
            out.append(np.array(a, copy=True))
            continue
        flat = copy.reshape(-1) if copy.flags.c_contiguous else np.ascontiguousarray(copy).reshape(-1)
        offset = (a.__array_interface__["data"][0] - original.__array_interface__["data"][0]) // a.itemsize
        if not copy.flags.c_contiguous or not original.flags.c_contiguous:
            out.append(np.array(a, copy=True))  # an unusual base: a plain copy
            continue
        out.append(np.lib.stride_tricks.as_strided(flat[offset:], shape=a.shape, strides=a.strides))
    return out


def optional(run: Any, name: str) -> Any:
    """The optional method ``name`` of a port's run, or ``None`` if it does not have one."""
    method = getattr(run, name, None)
    return method if callable(method) else None
