"""The port conformance harness: does an implementation of CProp compute the reference's
numbers, and if not, where does it first differ? (``docs/conformance.md``)

- :mod:`.protocol`: the adapter interface every port implements;
- :mod:`.config`: the optimizer configurations the harness builds;
- :mod:`.checks`: open loop, injected state, closed loop, resume; :mod:`.usage`: refusals of
  invalid hyperparameters, parameter groups;
- :mod:`.edges`: the edge cases every run includes; :mod:`.dtypes`, :mod:`.layouts`: 16-bit
  dtypes and memory layouts;
- :mod:`.report`: the mismatch report and the coverage summary;
- :mod:`.strategies`: hypothesis strategies (needs the ``test`` extra);
- :mod:`.suite`: all checks over generated cases (``cprop-ref verify``);
- :mod:`.golden`: fixture files for ports in any language (``cprop-ref golden``).
"""

from __future__ import annotations

import importlib
from typing import Any

from .checks import check_closed_loop, check_injected_step, check_open_loop, check_resume
from .config import PortConfig
from .protocol import Port, PortRun, Unsupported, copy_keeping_layout
from .reference import ReferenceRun, reference_port
from .report import ConformanceMismatch, Coverage, Mismatch, SuiteReport
from .usage import check_group_refusal, check_groups, check_option_refusals, check_refusal


def load_port(spec: str) -> Any:
    """The port factory named by ``"package.module:factory"`` (``factory`` may be a dotted
    attribute path). Raises ``ValueError`` naming the spec if it cannot be found."""
    module_name, sep, attr = spec.partition(":")
    if not sep or not module_name or not attr:
        raise ValueError(f"port {spec!r}: expected MODULE:FACTORY, e.g. cprop_ref.conformance:reference_port")
    try:
        obj: Any = importlib.import_module(module_name)
    except ImportError as err:
        raise ValueError(f"port {spec!r}: cannot import {module_name}: {err}") from None
    for part in attr.split("."):
        if not hasattr(obj, part):
            raise ValueError(f"port {spec!r}: {module_name} has no attribute {attr!r}")
        obj = getattr(obj, part)
    if not callable(obj):
        raise ValueError(f"port {spec!r}: {attr} is not callable (a port is a factory: port(config, params))")
    return obj


def __getattr__(name: str) -> Any:
    # The torch adapter needs torch; import it only when asked for.
    if name in ("torch_port", "torch_port_cuda", "TorchPort"):
        return getattr(importlib.import_module(f"{__name__}.torch_adapter"), name)
    if name == "jax_port":  # likewise JAX and optax
        return importlib.import_module(f"{__name__}.jax_adapter").jax_port
    if name.startswith("torch_port_f"):  # torch_port_foreach, torch_port_fused (and their _cuda)
        return getattr(importlib.import_module(f"{__name__}.torch_variants"), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


__all__ = [
    "PortConfig",
    "Port",
    "PortRun",
    "Unsupported",
    "ReferenceRun",
    "reference_port",
    "check_open_loop",
    "check_injected_step",
    "check_closed_loop",
    "check_resume",
    "check_group_refusal",
    "check_option_refusals",
    "check_refusal",
    "check_groups",
    "copy_keeping_layout",
    "ConformanceMismatch",
    "Coverage",
    "Mismatch",
    "SuiteReport",
    "load_port",
]
