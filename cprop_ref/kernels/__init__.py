"""The Numba fast path: fused one-pass kernels for the optimizer families.

``backend="numba"`` (the default of every optimizer) runs a step through the kernels
of :mod:`.adam` (Adam, AdamW, CProp-Adam), :mod:`.sgd` (SGD, CProp-SGD) and
:mod:`.wrapper` (the CProp wrapper), with the state of every parameter kept in one
flat buffer per dtype (:mod:`.flat`); ``backend="numpy"`` runs the readable reference
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


def state_buffers(owner: Any) -> list[Any]:
    """The flat state buffers (arenas, :mod:`.flat`) that the kernels update in place for
    ``owner``, an optimizer; none before its first fused step. A gradient sharing memory
    with one of them is copied before a step (:func:`cprop_ref.gradients.unaliased`)."""
    return [flat.arena for flat in owner.__dict__.get("_kernel_arenas", {}).values()]
