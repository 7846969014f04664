"""The JAX port of CProp as optax transformations (``docs/jax.md``): :func:`cprop` wraps any
``optax.GradientTransformation``; :func:`cprop_sgd` and :func:`cprop_adam` are the specialised
optimizers with the names of ``cprop_ref.CPropSGD`` / ``CPropAdam``; :func:`sgd`, :func:`adam`,
:func:`adamw` are the base optimizers with torch semantics.

Needs the ``jax`` extra (``pip install 'cprop-ref[jax]'``: jax and optax). jit- and vmap-safe;
float32, float64 (with ``jax_enable_x64``), float16 and bfloat16 parameters, 16-bit ones with
float32 statistics.
"""

from __future__ import annotations

try:
    import jax  # noqa: F401
    import optax  # noqa: F401
except ImportError as err:  # pragma: no cover - exercised only without the extra
    raise ImportError(
        "cprop_ref.jax needs JAX and optax, the optional 'jax' extra of cprop-ref: "
        "pip install 'cprop-ref[jax]' (or pip install jax optax)"
    ) from err

from .functional import cprop_scale, enable_x64, statistics_dtype
from .transforms import (
    AdamState,
    CPropAdamState,
    CPropSGDState,
    CPropState,
    SGDState,
    adam,
    adamw,
    cprop,
    cprop_adam,
    cprop_sgd,
    cprop_statistics,
    sgd,
)

__all__ = [
    "cprop",
    "cprop_sgd",
    "cprop_adam",
    "sgd",
    "adam",
    "adamw",
    "cprop_statistics",
    "cprop_scale",
    "statistics_dtype",
    "enable_x64",
    "CPropState",
    "CPropSGDState",
    "CPropAdamState",
    "SGDState",
    "AdamState",
]
