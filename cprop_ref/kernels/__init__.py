"""The Numba fast path: fused one-pass kernels for the optimizer families.

``backend="numba"`` (the default of every optimizer) runs a step through the kernels
of :mod:`.adam` (Adam, AdamW, CProp-Adam), :mod:`.sgd` (SGD, CProp-SGD) and
:mod:`.wrapper` (the CProp wrapper), with the state of every parameter kept in one
flat buffer per dtype (:mod:`.flat`). Each family of kernels is declared once, in its module
(:mod:`.family`: arena rows, named scalar and flag columns, row builder, kernels); the
dispatcher (:mod:`.dispatch`) is generic over the declarations and keeps what it reuses in the
optimizer's launch plan (:mod:`.plan`); the CProp code the families share is in :mod:`.cprop`
and :mod:`.scale`. ``backend="numpy"`` runs the readable reference
in :mod:`cprop_ref.optim`. Both give the same numbers within the tolerance policy
(``docs/algorithm.md``, "Tolerance policy"; the design: ``docs/design/kernels.md``). float16
parameters and parameters that are not C-contiguous take the NumPy path on either backend.

Importing this package does not import Numba; :mod:`.dispatch` does, on the first step.
"""

from __future__ import annotations

from typing import Any

BACKENDS: tuple[str, ...] = ("numba", "numpy")
DEFAULT_BACKEND = "numba"


def check_backend(value: Any) -> str:
    """``"numba"`` or ``"numpy"``; anything else is a ``ValueError`` naming the choices."""
    if value not in BACKENDS:
        raise ValueError(f"invalid backend={value!r}: must be one of {', '.join(BACKENDS)}")
    return str(value)


#: The CDFs the kernels evaluate (:mod:`.scale` has their code), in the order of their integer
#: codes. Written out, not taken from :data:`cprop_ref.cdf.CDF_NAMES`: a CDF registered in the
#: reference without kernel code is refused, never evaluated as another CDF. Here, so that a
#: check needs no Numba import.
KERNEL_CDF_NAMES: tuple[str, ...] = ("normal", "bft", "bfo", "logistic")


def check_kernel_cdf(name: str, cdf: Any) -> str:
    """``cdf`` if the kernels evaluate it, else a ``ValueError`` naming ``name`` and the CDFs
    they know (a CDF registered in the reference only runs on ``backend="numpy"``)."""
    if cdf not in KERNEL_CDF_NAMES:
        raise ValueError(
            f"invalid {name}={cdf!r} for backend='numba': the kernels know {', '.join(KERNEL_CDF_NAMES)} "
            "(use backend='numpy', or add its kernel code: docs/algorithm.md, \"Adding a CDF\")"
        )
    return str(cdf)


def state_buffers(owner: Any) -> list[Any]:
    """The flat state buffers (arenas, :mod:`.flat`) that the kernels update in place for
    ``owner``, an optimizer (its ``kernel_plan``, :class:`.plan.LaunchPlan`); none before its
    first fused step, or for an object without a plan. A gradient sharing memory with one of
    them is copied before a step (:func:`cprop_ref.gradients.unaliased`)."""
    from .plan import LaunchPlan

    plan = getattr(owner, "kernel_plan", None)
    return plan.buffers() if isinstance(plan, LaunchPlan) else []
