"""What a family of fused kernels declares, and the registry of the families.

A *kernel family* is the fast path of one optimizer rule: SGD, CProp-SGD, Adam, AdamW and
CProp-Adam. Each is declared once, in the module of its kernels (:mod:`.sgd`, :mod:`.adam`),
as a :class:`KernelFamily`: the rows of its state arena (the state entries the kernels keep),
its scalar and flag columns as NamedTuples (:mod:`.columns`), the row builder
:meth:`KernelFamily.tensor_step`, which fills them for one tensor from its state and its group,
and its three kernels. The optimizer class that the family speeds up names it in
``kernel_family`` and holds the NumPy rule (``_compute``), which the kernels reproduce
within the tolerance policy. The dispatcher (:mod:`.dispatch`) is generic over the
declaration. The CProp wrapper's kernels (:mod:`.wrapper`) are declared the same way but
driven by the wrapper's two halves (``dispatch.WrapperStep``).

This module does not import Numba: the optimizers' constructors check a family's name here
(:func:`check_kernel_family`); :func:`kernel_family` imports the kernels on the first step.
"""

from __future__ import annotations

import importlib
from abc import ABC, abstractmethod
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, ClassVar, NamedTuple

if TYPE_CHECKING:
    from .flat import FlatState

#: The kernel families by name: the module that declares each (relative to this package) and
#: the declaration's name there. An optimizer's ``kernel_family`` must be one of these names.
KERNEL_FAMILIES: dict[str, tuple[str, str]] = {
    "sgd": (".sgd", "SGD"),
    "cprop_sgd": (".sgd", "CPROP_SGD"),
    "adam": (".adam", "ADAM"),
    "adamw": (".adam", "ADAMW"),
    "cprop_adam": (".adam", "CPROP_ADAM"),
}


def check_kernel_family(owner: str, family: Any) -> str | None:
    """``family`` (an optimizer class's ``kernel_family``) if the kernels have it, ``None`` for
    ``None`` (an optimizer without kernels: it steps on the NumPy path); anything else is a
    ``ValueError`` naming ``owner`` and the families there are."""
    if family is None:
        return None
    if not isinstance(family, str) or family not in KERNEL_FAMILIES:
        raise ValueError(
            f"{owner}: unknown kernel_family={family!r}: the kernels know {', '.join(KERNEL_FAMILIES)} "
            '(or None for the NumPy path only; adding one: docs/design/kernels.md, "Adding a family")'
        )
    return family


_LOADED: dict[str, KernelFamily] = {}


def kernel_family(name: str) -> KernelFamily:
    """The declaration of the family ``name`` (imports its kernels, and Numba, the first time)."""
    family = _LOADED.get(name)
    if family is None:
        module, attribute = KERNEL_FAMILIES[check_kernel_family("kernel_family", name)]  # type: ignore[index]
        family = getattr(importlib.import_module(module, __package__), attribute)
        if not isinstance(family, KernelFamily):
            raise TypeError(f"{module}.{attribute} is a {type(family).__name__}, not a KernelFamily")
        _LOADED[name] = family
    return family


class Kernels(NamedTuple):
    """A family's three kernels: ``one`` steps one small tensor from its arrays (``None``: the
    family has none), ``serial`` and ``parallel`` step the tensors of an address table on the
    calling thread or on ``workers`` threads."""

    one: Callable[..., Any] | None
    serial: Callable[..., Any]
    parallel: Callable[..., Any]


class SteadyKernels(NamedTuple):
    """What the steady state of one small tensor (``dispatch.SteadyStep``) needs of a family: the
    hyperparameter row of a group, the powers of a step, and the kernel that computes the scalar
    row from them inside Numba."""

    hyperparameter_row: Callable[[dict[str, Any], float], tuple]
    powers: Callable[[dict[str, Any], int], tuple]
    one_from_hyperparameters: Callable[..., Any]


class TensorStep(NamedTuple):
    """One tensor's part of a launch, as :meth:`KernelFamily.tensor_step` builds it."""

    #: The tensor's state after the step (arena views for the arrays the kernels write).
    state: dict[str, Any]
    #: The scalar row (a NamedTuple of the family's columns, double precision).
    scalars: tuple
    #: The flag row (the family's flag NamedTuple). It has a ``one_loop`` field, False here: the
    #: dispatcher sets it for the tensors of the launch's one-loop variant.
    flags: Any
    #: The tensor's one-loop variant (marker arguments), or ``None``: the chunked stages.
    variant: tuple | None


class KernelFamily(ABC):
    """The declaration of one family of fused kernels (see the module docstring)."""

    #: The family's name (a key of :data:`KERNEL_FAMILIES`).
    name: str
    #: The rows of the state arena, in order: the state entries the kernels keep (and scratch rows).
    state_rows: ClassVar[tuple[str, ...]]
    #: The elements per chunk of the chunked stages (a launch's chunk table).
    chunk: ClassVar[int]
    #: The variant arguments of a launch in which no tensor runs a one loop.
    no_one_loop: ClassVar[tuple]
    #: Whether the family has CProp (its scalar rows then end with CProp's columns).
    cprop: bool

    @property
    @abstractmethod
    def kernels(self) -> Kernels:
        """The family's kernels."""

    @property
    def steady(self) -> SteadyKernels | None:
        """The steady-state kernels of one small tensor, or ``None`` (the general path always)."""
        return None

    @abstractmethod
    def tensor_step(
        self, arena: FlatState, k: int, state: dict[str, Any], group: dict[str, Any], rows: dict
    ) -> TensorStep:
        """Tensor ``k``'s new state (arena views, the old state's values adopted into them), scalar
        row, flag row and one-loop variant for this step, from its ``state`` and validated
        ``group``; changes only the arena (the dispatcher commits the state after the launch).
        ``rows`` is a dict the dispatcher gives each launch: the rows of the tensors that share
        them (one group, one step) are built once and kept there, by what they depend on."""

    def __repr__(self) -> str:
        return f"<kernel family {self.name!r}>"
