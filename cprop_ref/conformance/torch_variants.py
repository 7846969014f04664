"""Port factories for the torch port's multi-tensor and compiled variants, verified like the
default one: ``cprop-ref verify cprop_ref.conformance:torch_port_foreach`` (``foreach=True``)
and ``cprop_ref.conformance:torch_port_fused`` (``fused=True``, ``torch.compile``: the first
use of each kernel compiles, see docs/torch.md). The ``_cuda`` ones run on the first CUDA
device. The wrapped base optimizers stay on torch's per-tensor path, as for ``torch_port``.
"""

from __future__ import annotations

import functools
from collections.abc import Sequence

import numpy as np

from .config import PortConfig
from .torch_adapter import TorchPort, TorchRun, with_groups


def variant_classes(**options: bool) -> dict[str, functools.partial]:
    """cprop-ref's torch optimizers with ``options`` (``foreach=True`` or ``fused=True``) bound."""
    from ..torch import CProp, CPropAdam, CPropSGD

    return {cls.__name__: functools.partial(cls, **options) for cls in (CPropSGD, CPropAdam, CProp)}


def torch_port_foreach(config: PortConfig, params: Sequence[np.ndarray]) -> TorchRun:
    """cprop-ref's torch port with ``foreach=True`` on the CPU."""
    return TorchPort(classes=variant_classes(foreach=True))(config, params)


def torch_port_fused(config: PortConfig, params: Sequence[np.ndarray]) -> TorchRun:
    """cprop-ref's torch port with ``fused=True`` on the CPU."""
    return TorchPort(classes=variant_classes(fused=True))(config, params)


def torch_port_foreach_cuda(config: PortConfig, params: Sequence[np.ndarray]) -> TorchRun:
    """cprop-ref's torch port with ``foreach=True`` on the first CUDA device."""
    return TorchPort(classes=variant_classes(foreach=True), device="cuda")(config, params)


def torch_port_fused_cuda(config: PortConfig, params: Sequence[np.ndarray]) -> TorchRun:
    """cprop-ref's torch port with ``fused=True`` on the first CUDA device."""
    return TorchPort(classes=variant_classes(fused=True), device="cuda")(config, params)


# The protocol's optional hooks (conformance/usage.py), with the same options.
with_groups(torch_port_foreach, TorchPort(classes=variant_classes(foreach=True)))
with_groups(torch_port_fused, TorchPort(classes=variant_classes(fused=True)))
with_groups(torch_port_foreach_cuda, TorchPort(classes=variant_classes(foreach=True), device="cuda"))
with_groups(torch_port_fused_cuda, TorchPort(classes=variant_classes(fused=True), device="cuda"))
