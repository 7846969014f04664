"""The launch plan: what an optimizer keeps between fused steps, typed and in one place.

Every optimizer (and the CProp wrapper) owns one :class:`LaunchPlan`, its ``kernel_plan``
attribute. The dispatcher (:mod:`.dispatch`) fills it and reuses it while it still applies: the
state arenas (one per dtype, rebuilt when the parameters change), the validated groups (reused
while no hyperparameter and no parameter of a group changed), the steady state of one small
tensor, and the memory map that finds gradients sharing memory with the parameters. The owner
calls :meth:`LaunchPlan.invalidate` where what it saw may no longer hold: a parameter group
added, a state dict loaded. No Numba here: optimizers create their plan at construction.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Protocol

import numpy as np

from .flat import FlatState


class SteadyStep(Protocol):
    """A step that needs no tables (``dispatch.TinyPlan``): :meth:`step` returns True if it
    stepped, False if a gradient was not finite (nothing changed), None if it no longer
    applies; ``groups`` are the validated groups it steps with."""

    groups: list[dict[str, Any]]

    def step(self, opt: Any, grads: Any) -> bool | None: ...


@dataclass(eq=False)
class LastLaunch:
    """The last launch's arena, the flag row of its first tensor and its one-loop variant."""

    arena: FlatState
    flags: np.ndarray
    variant: tuple


@dataclass(eq=False)
class LaunchPlan:
    """What the fused steps of one optimizer reuse (see the module docstring)."""

    #: The state arenas by dtype.
    arenas: dict[np.dtype, FlatState] = field(default_factory=dict)
    #: What the validated groups were computed from: per group, its parameters and its
    #: hyperparameter values (``dispatch.frozen``); ``None``: validate again.
    groups_key: list[tuple] | None = None
    #: The validated groups of ``groups_key``.
    groups: list[dict[str, Any]] | None = None
    #: Whether a group holds per-run hyperparameter arrays (then the NumPy path steps by class).
    per_run: bool = False
    #: The steady state of one small tensor, while it applies.
    steady: SteadyStep | None = None
    #: The last launch of the general path (from which a steady state is built).
    last_launch: LastLaunch | None = None
    #: :func:`cprop_ref.gradients.unaliased`'s cache (the memory map of parameters and arenas).
    memory: dict[str, Any] = field(default_factory=dict)

    def __deepcopy__(self, memo: dict[int, Any]) -> LaunchPlan:
        """A copied optimizer starts with an empty plan: the copy's state dicts hold copies of
        the arena's views, not views of a copied arena, so a copied steady state would step
        an arena that no state dict reads (the next step adopts the copies instead)."""
        return LaunchPlan()

    def __reduce__(self) -> tuple[type[LaunchPlan], tuple[()]]:
        """Pickled as an empty plan, for the same reason (and the arenas' memory is not state)."""
        return (LaunchPlan, ())

    def invalidate(self) -> None:
        """Forget everything but the arenas (whose layout is checked at every launch): the next
        step validates the groups again and takes the general path."""
        self.groups_key = None
        self.groups = None
        self.per_run = False
        self.steady = None
        self.last_launch = None
        self.memory.clear()

    def buffers(self) -> list[np.ndarray]:
        """The arenas' buffers, which the kernels update in place."""
        return [flat.arena for flat in self.arenas.values()]
