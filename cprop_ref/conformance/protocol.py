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


@runtime_checkable
class PortRun(Protocol):
    """A port's optimizer, built for one configuration (see the module docstring)."""

    def step(self, grads: Sequence[np.ndarray | None]) -> None: ...

    def params(self) -> list[np.ndarray]: ...


class Port(Protocol):
    """``port(config, params) -> PortRun``."""

    def __call__(self, config: PortConfig, params: Sequence[np.ndarray]) -> PortRun: ...


def optional(run: Any, name: str) -> Any:
    """The optional method ``name`` of a port's run, or ``None`` if it does not have one."""
    method = getattr(run, name, None)
    return method if callable(method) else None
